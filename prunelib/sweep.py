"""The study's evaluation loops: pipelines, component sweeps, allocations, corpora, each row against dense."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from prunelib import handoff, results
from prunelib.allocation import Allocation, component_sparsity, reached_sparsity
from prunelib.analysis import single_utterance_share
from prunelib.claims import interval_text, matched_rows
from prunelib.components import layer_thirds, layers_selector, num_layers
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
                groups[f"{stack} {third} layers"] = layers_selector(stack, layers)
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
        **{key: summary[key] for key in ("language", "n", "wer")},
        "wer_lo": summary["wer_ci95"][0],
        "wer_hi": summary["wer_ci95"][1],
        **{key: summary[key] for key in ("cer", "sub_rate", "ins_rate", "del_rate")},
        "delta_wer": difference["diff"],
        "delta_lo": difference["ci95"][0],
        "delta_hi": difference["ci95"][1],
        "p_value": difference["p_value"],
        "sparsity_weights": summary["sparsity"],
        **{key: summary[key] for key in ("sparsity_linear", "rtfx")},
    }


def _row(
    label: str, spec: str, sparsity: float, evaluation: Evaluation, dense: Evaluation, n_boot: int, seed: int
) -> dict:
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


# ---- notebook 01: the dense model under each pipeline -----------------------------------------


def evaluate_pipelines(loaded: LoadedModel, corpus: Corpus, languages: Sequence[str], batch_size: int = 16,
                       n_boot: int = 1000, progress: bool = True) -> dict[str, Evaluation]:
    """The dense model on `corpus` under each decoding pipeline ("en": standard, "auto": the paper's)."""
    return {language: evaluate(loaded, corpus, Decoding(language=language, batch_size=batch_size),
                               progress=progress, n_boot=n_boot)
            for language in languages}


def truncation_cost(loaded: LoadedModel, corpus: Corpus, standard: Evaluation, batch_size: int = 16,
                    n_boot: int = 1000, seed: int = 0) -> dict | None:
    """What cutting utterances over 30 s to one window (as the paper's pipeline does) costs, paired; None if none is."""
    long_ids = [r["id"] for r in standard.records if r.get("long_form")]
    if not long_ids:
        return None
    decoding = Decoding(language=standard.summary["language"], batch_size=batch_size, long_form=False)
    truncated = {r["id"]: r for r in evaluate(loaded, corpus.subset(long_ids), decoding, n_boot=n_boot).records}
    as_paper = [truncated.get(r["id"], r) for r in standard.records]
    return {"n_long": len(long_ids), **paired_difference(standard.records, as_paper, n_boot=n_boot, seed=seed)}


# ---- notebook 03: one component at a time -----------------------------------------------------


def select_groups(groups: Mapping[str, str], labels: Sequence[str] | None) -> dict[str, str]:
    """The groups named by `labels` (None: all), refusing an unknown label."""
    if labels is None:
        return dict(groups)
    unknown = set(labels) - set(groups)
    if unknown:
        raise ValueError(f"unknown component labels {sorted(unknown)}; known: {list(groups)}")
    return {label: groups[label] for label in labels}


def run_ablations(loaded: LoadedModel, corpus: Corpus, groups: Mapping[str, str], sparsities: Sequence[float],
                  languages: Sequence[str], headline: Sequence[str], headline_sparsities: Sequence[float] | None,
                  summaries: Path, batch_size: int = 16, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Every group at every sparsity under the first pipeline; the `headline` groups under the others.

    Each pipeline's table is rewritten under its handoff name as rows finish.
    """
    unswept = [label for label in headline if label not in groups]
    if unswept:  # a dropped label would silently drop its claim from notebook 06's table
        raise ValueError(f"headline components {unswept} are not among the swept components {list(groups)}")
    tables = []
    for index, language in enumerate(languages):
        if index == 0:
            grid = ablation_specs(groups, sparsities)
        else:
            grid = ablation_specs({label: groups[label] for label in headline}, headline_sparsities or sparsities)
        decoding = Decoding(language=language, batch_size=batch_size)
        tables.append(
            run_sweep(
                loaded,
                corpus,
                grid,
                decoding,
                table_path=Path(summaries) / handoff.ablation_file(language),
                n_boot=n_boot,
                seed=seed,
            )
        )
    return pd.concat(tables, ignore_index=True)


# ---- notebook 04: allocators at matched sparsity ----------------------------------------------


def damage_curves(loaded: LoadedModel, calibration: Corpus, groups: Mapping[str, str], sparsities: Sequence[float],
                  decoding: Decoding, n_boot: int = 1000, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Each group pruned alone (by magnitude, per matrix) at each sparsity, on calibration utterances only.

    One row per (group, sparsity): `selector`, `sparsity` and `damage`, the WER change against
    dense, as `allocation.empirical` reads them, with the rest of the sweep's columns. Every
    evaluation goes through the per-utterance cache.
    """
    grid = [(label, str(parse_prune_spec(f"{selector}:local={float(s)}")), float(s))
            for label, selector in groups.items() for s in sparsities]
    table = run_sweep(loaded, calibration, grid, decoding, n_boot=n_boot, seed=seed, progress=progress)
    table = table[table["spec"] != "dense"].copy()
    table.insert(1, "selector", table["component"].map(groups))
    return table.rename(columns={"requested_sparsity": "sparsity"}).assign(damage=table["delta_wer"])


@dataclass
class AllocationRun:
    """Dense and every allocation on the same utterances: evaluations, results table, sparsity per component."""

    dense: Evaluation
    evaluations: dict[tuple[str, float | None], Evaluation]  # (allocator, target) -> evaluation, in plan order
    sparsity: dict[tuple[str, float | None], pd.Series]  # (allocator, target) -> sparsity per component
    rows: dict[tuple[str, float | None], dict]  # (allocator, target) -> results row; ("dense", 0.0) first

    @property
    def table(self) -> pd.DataFrame:
        """The results table: one row per allocation, dense first."""
        return pd.DataFrame(list(self.rows.values()))


def _allocation_row(name: str, target: float | None, evaluation: Evaluation, dense: Evaluation, n_boot: int,
                    seed: int) -> dict:
    """One results row: allocator and target, then score and paired difference to dense."""
    summary = evaluation.summary
    return {"allocator": name, "target": target, "spec": summary["prune"], "importance": summary["importance"],
            **compare_to_dense(evaluation, dense, n_boot=n_boot, seed=seed)}


def run_allocations(loaded: LoadedModel, corpus: Corpus, plan: Sequence[Allocation], decoding: Decoding,
                    n_boot: int = 1000, seed: int = 0, progress: bool = True) -> AllocationRun:
    """Evaluate dense and every allocation of `plan` on `corpus` (each through the per-utterance cache)."""
    dense = evaluate(loaded, corpus, decoding, progress=False, n_boot=n_boot)
    rows = {("dense", 0.0): _allocation_row("dense", 0.0, dense, dense, n_boot, seed)}
    evaluations, sparsity = {}, {}
    for allocation in tqdm(plan, desc="allocations", unit="allocation", disable=not progress):
        evaluation = evaluate(loaded, corpus, decoding, prune=allocation.spec, importance=allocation.importance,
                              importance_name=allocation.importance_name, weights=allocation.weights,
                              progress=False, n_boot=n_boot)
        key = (allocation.name, allocation.target)
        evaluations[key] = evaluation
        # A cache hit prunes nothing, so it has no report: the sparsity is then measured on its own.
        sparsity[key] = component_sparsity(evaluation.report or reached_sparsity(loaded.model, allocation))
        rows[key] = _allocation_row(allocation.name, allocation.target, evaluation, dense, n_boot, seed)
    return AllocationRun(dense, evaluations, sparsity, rows)


def target_miss(table: pd.DataFrame) -> float:
    """The largest distance (percentage points of linear weights) of a matched allocation from its target."""
    matched = matched_rows(table)
    return float((matched["sparsity_linear"] - 100 * matched["target"]).abs().max())


def nearest_target(targets: Sequence[float], wanted: float = 0.4) -> float:
    """The target of the grid closest to `wanted` (the paper's tables are at 40%)."""
    return min(targets, key=lambda target: abs(target - wanted))


def best_allocator(at_target_table: pd.DataFrame) -> str:
    """The matched allocator with the lowest WER in an `at_target` table (the paper's own table is not matched)."""
    matched = at_target_table[at_target_table["allocator"] != "paper"]
    return str(matched.loc[matched["wer"].idxmin(), "allocator"])


def at_target(run: AllocationRun, target: float, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Every allocation at `target` (and the paper's table), against dense and, paired, against global magnitude."""
    reference = next((name for name in ("global+embed", "global") if (name, target) in run.evaluations), None)
    lines = []
    for (name, at), evaluation in run.evaluations.items():
        if at not in (target, None):
            continue
        entry = run.rows[(name, at)]
        line = {"allocator": name, "sparsity_linear": entry["sparsity_linear"],
                "sparsity_weights": entry["sparsity_weights"], "wer": entry["wer"], "vs dense": entry["delta_wer"],
                "vs dense 95%": interval_text(entry["delta_lo"], entry["delta_hi"])}
        if reference is not None:
            versus = paired_difference(run.evaluations[(reference, target)].records, evaluation.records,
                                       n_boot=n_boot, seed=seed)
            line |= {f"vs {reference}": versus["diff"], f"vs {reference} 95%": interval_text(*versus["ci95"])}
        lines.append(line)
    return pd.DataFrame(lines)


def allocation_table(run: AllocationRun, target: float, order: Sequence[str] = ()) -> pd.DataFrame:
    """Sparsity per component (rows) of every allocation at `target` (columns); `order` first, the rest after."""
    table = pd.DataFrame({name: sparsity for (name, at), sparsity in run.sparsity.items() if at in (target, None)})
    rows = [c for c in order if c in table.index] + [c for c in table.index if c not in set(order)]
    return table.reindex(rows)


# ---- notebook 05: the same systems on other corpora ---------------------------------------------


def run_cross_dataset(loaded: LoadedModel, corpora: Mapping[str, Corpus], systems: Mapping[str, str],
                      exported: Mapping[str, LoadedModel], languages: Sequence[str], batch_size: int = 16,
                      n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Every system on every corpus under every pipeline, against dense, with the one-utterance share.

    `systems` maps labels to prune specs ("" is dense); a label in `exported` is evaluated as that
    saved model instead. Rows are ordered by pipeline, then corpus, then system.
    """
    rows = []
    decodings = {language: Decoding(language=language, batch_size=batch_size) for language in languages}
    for name, corpus in corpora.items():
        dense = {language: evaluate(loaded, corpus, decoding, progress=False, n_boot=n_boot)
                 for language, decoding in decodings.items()}
        for label, spec in systems.items():
            # Pipelines innermost: a pruned encoder's outputs are computed once and reused by the next pipeline.
            for language, decoding in decodings.items():
                if label in exported:
                    evaluation = evaluate(exported[label], corpus, decoding, progress=False, n_boot=n_boot)
                elif spec:
                    evaluation = evaluate(loaded, corpus, decoding, prune=spec, progress=False, n_boot=n_boot)
                else:
                    evaluation = dense[language]
                rows.append({"system": label, "dataset": name, "spec": spec or "dense",
                             **compare_to_dense(evaluation, dense[language], n_boot=n_boot, seed=seed),
                             **single_utterance_share(dense[language].records, evaluation.records)})
    order = {language: index for index, language in enumerate(languages)}
    table = pd.DataFrame(rows)
    return table.sort_values("language", key=lambda column: column.map(order), kind="stable").reset_index(drop=True)
