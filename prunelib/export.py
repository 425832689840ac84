"""Save one allocation as a pruned model with save_pretrained, and check that it reloads to the same WER."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from prunelib import allocation as alloc
from prunelib.corpora import Corpus
from prunelib.evaluate import evaluate
from prunelib.models import LoadedModel, load_model
from prunelib.pruning import SparsityReport, export_pruned, pruned, sparsity_report
from prunelib.transcribe import Decoding


def save_allocation(loaded: LoadedModel, allocation: alloc.Allocation, out_dir: str | Path) -> SparsityReport:
    """Prune a copy of the weights by `allocation` and save it to `out_dir`; the loaded model is restored bit-exactly.

    The export's marker names the allocator and its target, for whoever reads the folder later.
    """
    about = {"allocator": allocation.name, "target": allocation.target, "model": loaded.name}
    with pruned(loaded.model, allocation.spec, importance=allocation.importance, weights=allocation.weights) as report:
        export_pruned(loaded.model, loaded.processor, out_dir, report, about=about)
    return report


def export_allocation(loaded: LoadedModel, allocator: str, target: float, out_dir: str | Path,
                      calibration: Corpus | None = None, scores: pd.DataFrame | None = None, seed: int = 0,
                      cap: float = 0.7, owl_lambda: float = 0.08, owl_outlier: float = 5.0
                      ) -> tuple[alloc.Allocation, SparsityReport]:
    """Allocate `target` sparsity with `allocator`, prune a copy of the weights, save it to `out_dir`.

    Wanda, OWL and SparseGPT need `calibration` audio, the sensitivity allocators a `scores`
    table; the others need neither.
    """
    if allocator not in alloc.ALLOCATORS:
        raise ValueError(f"unknown allocator {allocator!r}; known: {', '.join(alloc.ALLOCATORS)}")
    if allocator in alloc.NEEDS_CURVES:
        raise ValueError(f"{allocator} allocates from damage curves that notebook 04 measures; run notebook 04, "
                         "which exports its best allocation")
    norms = wanda_scores = examples = None
    if allocator in alloc.NEEDS_CALIBRATION:
        if calibration is None or len(calibration) == 0:
            raise ValueError(f"{allocator} needs calibration utterances")
        examples, _ = alloc.reference_examples(loaded, calibration)
    if allocator in alloc.NEEDS_NORMS:
        norms = alloc.example_norms(loaded.model, examples)
        wanda_scores = alloc.wanda_importance(loaded.model, norms)
    allocation = alloc.allocate(allocator, loaded.model, target, scores=scores, norms=norms, seed=seed, cap=cap,
                                owl_lambda=owl_lambda, owl_outlier=owl_outlier, wanda_scores=wanda_scores,
                                examples=examples)
    return allocation, save_allocation(loaded, allocation, out_dir)


def check_reload(out_dir: str | Path, corpus: Corpus, decoding: Decoding, n_boot: int = 1000) -> dict:
    """Load an export as a user would and score it with an empty cache: its WER and linear sparsity as saved."""
    reloaded = load_model(str(out_dir))
    with tempfile.TemporaryDirectory() as fresh:  # nothing from the in-place run may be reused
        again = evaluate(reloaded, corpus, decoding, cache_dir=fresh, progress=False, n_boot=n_boot)
    folder = Path(out_dir)
    return {"wer": again.summary["wer"], "sparsity_linear": sparsity_report(reloaded.model).overall_linear,
            "megabytes": sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 1e6}
