"""Run a grid of prune specs on one model and corpus, and tabulate each against dense."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import pandas as pd
from tqdm import tqdm

from prunelib import results
from prunelib.components import layer_thirds, num_layers
from prunelib.corpora import Corpus
from prunelib.evaluate import Evaluation, evaluate
from prunelib.models import LoadedModel
from prunelib.pruning import parse_prune_spec
from prunelib.scoring import paired_difference
from prunelib.transcribe import Decoding

log = logging.getLogger(__name__)


def paper_component_groups(model, include_embeddings: bool = True) -> dict[str, str]:
    """The component groups the paper ablates, as {label: prune selector}, for this model's depth."""
    groups = {
        "encoder self-attn": "encoder.self_attn",
        "encoder FFN": "encoder.ffn",
        "decoder self-attn": "decoder.self_attn",
        "decoder cross-attn": "decoder.cross_attn",
        "decoder FFN": "decoder.ffn",
        "encoder last 4 layers": "encoder.layers[-4:]",
    }
    for stack in ("encoder", "decoder"):
        for third, layers in layer_thirds(num_layers(model)[stack]).items():
            if layers:  # a stack of fewer than 3 layers has empty thirds
                groups[f"{stack} {third} layers"] = f"{stack}.layers[{layers.start}:{layers.stop}]"
    groups["encoder conv front-end"] = "encoder.conv"
    if include_embeddings:
        groups["decoder token embedding"] = "decoder.embed"
    return groups


def ablation_specs(groups: dict[str, str], sparsities: Sequence[float]) -> list[tuple[str, str, float]]:
    """(label, spec text, sparsity) for every group at every sparsity, validated up front."""
    grid = []
    for label, selector in groups.items():
        for sparsity in sparsities:
            spec = str(parse_prune_spec(f"{selector}={float(sparsity)}"))
            grid.append((label, spec, float(sparsity)))
    return grid


def compare_to_dense(evaluation: Evaluation, dense: Evaluation, n_boot: int = 1000, seed: int = 0) -> dict:
    """An evaluation's score and its paired difference to dense on the same utterances, as table columns."""
    summary = evaluation.summary
    difference = paired_difference(dense.records, evaluation.records, n_boot=n_boot, seed=seed)
    return {
        "language": summary["language"],
        "n": summary["n"],
        "wer": summary["wer"],
        "wer_lo": summary["wer_ci95"][0],
        "wer_hi": summary["wer_ci95"][1],
        "cer": summary["cer"],
        "sub_rate": summary["sub_rate"],
        "ins_rate": summary["ins_rate"],
        "del_rate": summary["del_rate"],
        "delta_wer": difference["diff"],
        "delta_lo": difference["ci95"][0],
        "delta_hi": difference["ci95"][1],
        "p_value": difference["p_value"],
        "sparsity_weights": summary["sparsity"],
        "sparsity_linear": summary["sparsity_linear"],
        "rtfx": summary["rtfx"],
    }


def _row(label: str, spec: str, sparsity: float, evaluation: Evaluation, dense: Evaluation, n_boot: int, seed: int) -> dict:
    """One ablation-table row: component, spec and sparsity, then the comparison to dense."""
    return {"component": label, "spec": spec, "requested_sparsity": sparsity,
            **compare_to_dense(evaluation, dense, n_boot, seed)}


def run_sweep(
    loaded: LoadedModel,
    corpus: Corpus,
    grid: Sequence[tuple[str, str, float]],
    decoding: Decoding = Decoding(),
    table_path: Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Evaluate dense plus every (label, spec, sparsity) of `grid`; one row each, dense first.

    Every evaluation goes through the per-utterance cache, so an interrupted sweep resumes
    where it stopped; the table is rewritten atomically at `table_path` after each row.
    """
    dense = evaluate(loaded, corpus, decoding, progress=progress, n_boot=n_boot)
    rows = [_row("dense", "dense", 0.0, dense, dense, n_boot, seed)]
    bar = tqdm(grid, desc=f"sweep ({decoding.language})", unit="spec", disable=not progress)
    for label, spec, sparsity in bar:
        bar.set_postfix_str(spec)
        evaluation = evaluate(loaded, corpus, decoding, prune=spec, progress=False, n_boot=n_boot)
        rows.append(_row(label, spec, sparsity, evaluation, dense, n_boot, seed))
        log.info("%s: WER %.2f (dense %.2f)", spec, evaluation.summary["wer"], dense.summary["wer"])
        if table_path is not None:
            results.write_csv_atomic(table_path, pd.DataFrame(rows))
    table = pd.DataFrame(rows)
    if table_path is not None:
        results.write_csv_atomic(table_path, table)
    return table
