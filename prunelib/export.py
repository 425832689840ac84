"""Build one allocation from calibration utterances and save the pruned model with save_pretrained."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from prunelib import allocation as alloc
from prunelib import sensitivity as sens
from prunelib.corpora import Corpus
from prunelib.models import LoadedModel
from prunelib.pruning import SparsityReport, export_pruned, pruned


def calibration_pool(corpus: Corpus, split_file: str | Path | None = None, n_speakers: int = 4,
                     seed: int = 0) -> Corpus:
    """The calibration utterances: those notebook 02's split file marks, else `n_speakers` drawn by seed.

    Reading 02's file keeps the export's statistics off the utterances later notebooks report on.
    """
    if split_file is None:
        return sens.split_calibration(corpus, n_speakers, seed)[0]
    split = pd.read_csv(split_file)
    missing = {"id", "role", "dataset"} - set(split.columns)
    if missing:
        raise ValueError(f"{split_file} is not a calibration split (no column {', '.join(sorted(missing))})")
    if not (split["dataset"] == corpus.name).all():
        raise ValueError(f"{split_file} splits {', '.join(sorted(set(split['dataset'])))}, not {corpus.name}")
    ids = split.loc[split["role"] == "calibration", "id"].astype(str).tolist()
    return corpus.subset(ids)


def component_scores(scores_file: str | Path, model_name: str | None = None) -> pd.DataFrame:
    """Per-component sensitivity scores (notebook 02's or `prunelib sensitivity`'s CSV), indexed by component.

    Notebook 02's file holds several label choices, seeds and sizes: one model's rows with reference
    labels, the smallest seed and the largest calibration size are kept (notebook 04's choice at seed 0).
    """
    table = pd.read_csv(scores_file)
    if model_name is not None and "model" in table:
        table = table[table["model"] == model_name]
    if "labels" in table:
        table = table[table["labels"] == "reference"]
    if "seed" in table and len(table):
        table = table[table["seed"] == table["seed"].min()]
    if "size" in table and len(table):
        table = table[table["size"] == table["size"].max()]
    table = sens.linear_components(table)
    if table.empty:
        raise ValueError(f"{scores_file} has no per-layer component scores"
                         + (f" for {model_name}" if model_name else ""))
    return table.set_index("component")


def export_allocation(loaded: LoadedModel, allocator: str, target: float, out_dir: str | Path,
                      calibration: Corpus | None = None, scores: pd.DataFrame | None = None, seed: int = 0,
                      cap: float = 0.7, owl_lambda: float = 0.08, owl_outlier: float = 5.0
                      ) -> tuple[alloc.Allocation, SparsityReport]:
    """Allocate `target` sparsity with `allocator`, prune a copy of the weights, save it to `out_dir`.

    The loaded model is restored bit-exactly afterwards. Wanda and OWL need `calibration` audio,
    the sensitivity allocators a `scores` table; the others need neither.
    """
    if allocator not in alloc.ALLOCATORS:
        raise ValueError(f"unknown allocator {allocator!r}; known: {', '.join(alloc.ALLOCATORS)}")
    norms = wanda_scores = None
    if allocator in alloc.NEEDS_NORMS:
        if calibration is None or len(calibration) == 0:
            raise ValueError(f"{allocator} needs calibration utterances for its activation norms")
        norms, _ = alloc.calibration_norms(loaded, calibration)
        wanda_scores = alloc.wanda_importance(loaded.model, norms)
    allocation = alloc.allocate(allocator, loaded.model, target, scores=scores, norms=norms, seed=seed, cap=cap,
                                owl_lambda=owl_lambda, owl_outlier=owl_outlier, wanda_scores=wanda_scores)
    with pruned(loaded.model, allocation.spec, importance=allocation.importance) as report:
        export_pruned(loaded.model, loaded.processor, out_dir, report)
    return allocation, report
