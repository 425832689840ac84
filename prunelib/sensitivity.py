"""Sensitivity scores per component and per coarse group, from calibration runs that are cached."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from prunelib import results
from prunelib.calibration import calibration_examples, label_texts, seeded_order
from prunelib.components import LINEAR_KINDS, THIRDS, component_table, num_layers, third_of
from prunelib.corpora import Corpus
from prunelib.gradients import METHODS, Measurement, measure_gradients, tensor_scores
from prunelib.models import LoadedModel


def component_scores(model: nn.Module, scores: pd.DataFrame) -> pd.DataFrame:
    """Per-tensor mean scores -> per component (stack x layer x kind), weighted by numel.

    A component's score is then its mean over all its weights. Components are named as the
    prune-spec selectors (``decoder.layers[3].cross_attn``), in model order.
    """
    table = component_table(model).set_index("name")
    methods = [m for m in METHODS if m in scores.columns]
    joined = table[["component", "stack", "layer", "kind", "prunable"]].join(scores[methods], how="inner")
    joined["numel"] = table["numel"]
    weighted = joined[methods].mul(joined["numel"], axis=0)
    weighted[["component", "numel"]] = joined[["component", "numel"]]
    sums = weighted.groupby("component", sort=False).sum()
    out = joined.groupby("component", sort=False)[["stack", "layer", "kind"]].first()
    out["numel"] = sums["numel"]
    out["prunable"] = joined.groupby("component", sort=False)["prunable"].all()
    for method in methods:
        out[method] = sums[method] / sums["numel"]
    return out.reset_index()


def group_scores(model: nn.Module, components: pd.DataFrame) -> pd.DataFrame:
    """The paper's coarse groups: stack x linear kind, over all layers and per third of the layers."""
    layers = num_layers(model)
    linear = components[components["kind"].isin(LINEAR_KINDS) & components["layer"].notna()].copy()
    linear["third"] = [
        third_of(int(layer), layers[stack]) for stack, layer in zip(linear["stack"], linear["layer"], strict=True)
    ]
    methods = [m for m in METHODS if m in components.columns]
    rows = []
    for part in ("all", *THIRDS):
        chosen = linear if part == "all" else linear[linear["third"] == part]
        for (stack, kind), block in chosen.groupby(["stack", "kind"], sort=False):
            row = {"group": f"{stack}.{kind}" + ("" if part == "all" else f" ({part})"),
                   "stack": stack, "kind": kind, "third": part, "numel": int(block["numel"].sum())}
            for method in methods:
                row[method] = float((block[method] * block["numel"]).sum() / block["numel"].sum())
            rows.append(row)
    return pd.DataFrame(rows)


# ---- calibration runs, as notebooks and the CLI use them --------------------------------


def calibrate(loaded: LoadedModel, corpus: Corpus, labels: str = "reference", seed: int = 0,
              sizes: list[int] | None = None, n: int | None = None, batch_size: int = 16,
              progress: bool = True, chunk_size: int = 1) -> tuple[pd.DataFrame, Measurement]:
    """Score components on the first `n` (default all) utterances of a seeded order of `corpus`.

    Returns a long table (one row per calibration size and component, with every score) and
    the Measurement (for linear_scores on other subsets, or weight_importance). `chunk_size`
    picks how per-sample gradients are computed (see per_sample_gradients); scores agree to
    float rounding whichever is used.
    """
    order = seeded_order(corpus, seed)
    # Label the whole corpus, whatever the seed: pseudo labels are then decoded (and cached) once.
    texts = label_texts(loaded, corpus, labels, batch_size=batch_size)
    examples, skipped = calibration_examples(loaded, corpus, texts)
    by_id = {example.id: example for example in examples}
    examples = [by_id[i] for i in order if i in by_id][:n]
    sizes = [size for size in (sizes or []) if size < len(examples)] + [len(examples)]
    measurement = measure_gradients(loaded.model, examples, sizes=sizes, progress=progress, chunk_size=chunk_size)
    frames = []
    for size in sorted(measurement.snapshots):
        table = component_scores(loaded.model, tensor_scores(measurement, size))
        table.insert(0, "size", size)
        table.insert(0, "seed", seed)
        table.insert(0, "labels", labels)
        table["mean_loss"] = float(np.mean(measurement.losses[:size]))
        frames.append(table)
    result = pd.concat(frames, ignore_index=True)
    result.attrs["skipped"] = skipped
    return result, measurement


def cached_calibrate(loaded: LoadedModel, corpus: Corpus, labels: str = "reference", seed: int = 0,
                     sizes: list[int] | None = None, n: int | None = None, batch_size: int = 16,
                     cache_dir: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """calibrate()'s table, read from `cache_dir` (<key>.csv) when an identical run was done before.

    The key names each utterance by id, audio fingerprint and reference, so an edited file or
    transcript is scored again; and the batch size, which moves the summed gradients by float noise.
    """
    utterances = [(u.id, u.audio_fingerprint(), u.reference) for u in corpus.utterances]
    key = results.cache_key(kind="sensitivity", version=2, model=loaded.name, weights=loaded.fingerprint,
                            corpus=corpus.name, utterances=results.cache_key(utterances=utterances),
                            labels=labels, seed=seed, sizes=sorted(sizes or []), n=n, batch_size=batch_size)
    path = Path(cache_dir) / f"{key}.csv" if cache_dir is not None else None
    if path is not None and path.exists():
        table = pd.read_csv(path)
        table["layer"] = table["layer"].astype("Int64")
        return table
    table, _ = calibrate(loaded, corpus, labels, seed, sizes=sizes, n=n, batch_size=batch_size, progress=progress)
    if path is not None:
        results.write_csv_atomic(path, table)
    return table


def calibration_sweep(loaded: LoadedModel, pool: Corpus, label_choices: list[str], sizes: list[int], seeds: list[int],
          batch_size: int = 16, cache_dir: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Scores for every label choice x seed x nested size; the whole pool is measured once per label.

    The full pool gives the same scores whatever its order, so the first seed measures all
    of it and the other seeds only the prefix up to the largest size below the pool. Each
    run is cached under `cache_dir`, so an interrupted sweep resumes with the next run.
    """
    frames = []
    largest = max([s for s in sizes if s < len(pool)], default=None)
    for labels in label_choices:
        for index, seed in enumerate(seeds):
            if index > 0 and largest is None:
                break
            frames.append(cached_calibrate(loaded, pool, labels, seed, sizes=sizes, n=None if index == 0 else largest,
                                           batch_size=batch_size, cache_dir=cache_dir, progress=progress))
    return pd.concat(frames, ignore_index=True)



def prunable_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The prunable layer components (self_attn, cross_attn, ffn per layer): what rankings compare."""
    return table[table["kind"].isin(LINEAR_KINDS) & table["layer"].notna()]


def run_of(scores: pd.DataFrame, labels: str, seed: int, size: int | None = None) -> pd.DataFrame:
    """The rows of one calibration run of a sweep table: its labels and seed, at `size` (None: every size)."""
    chosen = scores[(scores["labels"] == labels) & (scores["seed"] == seed)]
    return chosen if size is None else chosen[chosen["size"] == size]


def mean_by_size(scores: pd.DataFrame, labels: str, seed: int) -> pd.DataFrame:
    """Mean gradient and Fisher score over prunable components at each calibration size of one run.

    The gradient score is a mean of a mean, so it shrinks as n grows; the Fisher score should not.
    """
    return prunable_rows(run_of(scores, labels, seed)).groupby("size")[["gradient", "fisher"]].mean()


def ranked(components: pd.DataFrame) -> dict[str, list[str]]:
    """Per score: the components from most to least sensitive."""
    return {method: components.sort_values(method, ascending=False)["component"].tolist()
            for method in METHODS if method in components}


def extremes(order: dict[str, list[str]], k: int = 5) -> pd.DataFrame:
    """The `k` most and least sensitive components by each score, ranked from 1."""
    table = pd.DataFrame({f"{m} most": names[:k] for m, names in order.items()}
                         | {f"{m} least": names[::-1][:k] for m, names in order.items()})
    table.index = range(1, len(table) + 1)
    return table
