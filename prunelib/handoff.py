"""The files one notebook writes and a later one reads: their names, and how each is written and read.

Every summary table lives in results/<profile>/summary/ under one of the names below, and every
export of notebook 04 under exports/<profile>/; no notebook spells a file name of its own.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from prunelib.allocation import SENSITIVITY_AWARE
from prunelib.calibration import split_calibration, too_long
from prunelib.corpora import Corpus, load_corpus
from prunelib.models import LoadedModel
from prunelib.paths import project_root
from prunelib.pruning import export_marker
from prunelib.results import write_csv_atomic
from prunelib.sensitivity import calibrate, prunable_rows

log = logging.getLogger(__name__)

BASELINE = "01_baseline.csv"  # notebook 01: dense WER per pipeline
CALIBRATION = "02_calibration.csv"  # notebook 02: which utterances calibrate, which are held out
COMPONENT_SCORES = "02_sensitivity_components.csv"  # notebook 02: every score of every component and run
STABILITY = "02_sensitivity_stability.csv"  # notebook 02: rank agreements
ABLATION = "03_ablation.csv"  # notebook 03: every component sweep, all pipelines
ABLATION_CLAIMS = "03_claims.csv"  # notebook 03: the component claims' intervals
DAMAGE_CURVES = "04_damage_curves.csv"  # notebook 04: each group's WER change on calibration speakers
ALLOCATION_RESULTS = "04_results.csv"  # notebook 04: every allocator at every target
AT_TARGET = "04_at_40.csv"  # notebook 04: the allocators at the target nearest 40%
ALLOCATIONS = "04_allocations.csv"  # notebook 04: sparsity per component at that target
CROSSINGS = "04_crossings.csv"  # notebook 04: where each allocator's WER change reaches +1 and +5
CROSS_DATASET = "05_cross_dataset.csv"  # notebook 05: the systems on every corpus
CLAIMS = "06_claims.csv"  # notebook 06: the verdict table
SIZES = "07_model_sizes.csv"  # notebook 07: the headline effects per model size
SIZE_CLAIMS = "07_claims_by_size.csv"  # notebook 07: notebook 06's verdicts for every size


# The notebook whose stamped copy in executed/<profile>/ vouches for each table a later notebook judges.
SOURCE_NOTEBOOKS = {ABLATION: "03_component_ablations.ipynb",
                    ALLOCATION_RESULTS: "04_global_vs_sensitivity_aware.ipynb",
                    CROSS_DATASET: "05_cross_dataset.ipynb"}
NOT_RECORDED = "not recorded"
# A table written this long after its notebook was published was rewritten since, by another run.
REWRITTEN_AFTER_S = 60


def ablation_file(language: str) -> str:
    """Notebook 03's table of one pipeline, rewritten after every row so that a long sweep shows progress."""
    return f"03_ablation_{language}.csv"


def summary_folder(profile: str) -> Path:
    """Where a profile's summary tables live (`notebooks.output_dirs` creates it; readers never do)."""
    return project_root() / "results" / profile / "summary"


def source_run(summaries: Path, name: str) -> str:
    """The commit (12 characters) of the run that wrote summary table `name`, from its notebook's stamp.

    The stamp is that of the notebook's executed copy in executed/<profile>/, beside the profile's
    summary folder. NOT_RECORDED where there is no stamped copy (a run older than the stamps), or
    where the table was written well after it (rewritten since, by a notebook run by hand, say):
    such a table holds that run's numbers, which the present code may no longer give.
    """
    from prunelib.publish import read_provenance  # nbformat takes seconds to import

    table = Path(summaries) / name
    executed = project_root() / "executed" / Path(summaries).parent.name / SOURCE_NOTEBOOKS[name]
    if not executed.exists():
        return NOT_RECORDED
    if table.exists() and table.stat().st_mtime > executed.stat().st_mtime + REWRITTEN_AFTER_S:
        return NOT_RECORDED
    record = read_provenance(json.loads(executed.read_text(encoding="utf-8"))["metadata"])
    if not record["commit"]:
        return NOT_RECORDED
    return record["commit"] + (" with uncommitted changes" if record["modified"] else "")


def write_summary(summaries: Path, name: str, table: pd.DataFrame) -> Path:
    """Write one summary table atomically under its name; returns the path."""
    return write_csv_atomic(Path(summaries) / name, table)


BASELINE_COLUMNS = ["model", "dataset", "language", "n", "wer", "wer_ci95", "cer", "cer_ci95", "substitutions",
                    "insertions", "deletions", "sub_rate", "ins_rate", "del_rate", "n_long_form", "n_failed", "rtfx"]


def write_baseline(summaries: Path, baseline: pd.DataFrame) -> Path:
    """Notebook 01's table: one row per pipeline, the columns notebook 06 and the README read."""
    return write_summary(summaries, BASELINE, baseline[BASELINE_COLUMNS])


# ---- the calibration split (02 writes, 04, 05 and the CLI read) -----------------------------


def split_table(corpus: Corpus, pool: Corpus, long_ids: list[str] | None = None) -> pd.DataFrame:
    """One row per utterance: its role, and whether it calibrates (pool utterances over 30 s, `long_ids`, do not)."""
    pool_ids = {u.id for u in pool.utterances}
    long_ids = set(too_long(pool) if long_ids is None else long_ids)
    return pd.DataFrame([{"id": u.id, "speaker": u.speaker,
                          "role": "calibration" if u.id in pool_ids else "evaluation",
                          "used_for_calibration": u.id in pool_ids and u.id not in long_ids}
                         for u in corpus.utterances])


def read_split(split_file: str | Path, corpus: Corpus) -> tuple[Corpus, Corpus, int | None]:
    """(calibration, evaluation, seed) of `corpus` as a split file marks them; a file of another corpus is refused."""
    split = pd.read_csv(split_file, dtype={"id": str})
    missing = {"id", "role", "dataset"} - set(split.columns)
    if missing:
        raise ValueError(f"{split_file} is not a calibration split (no column {', '.join(sorted(missing))})")
    if not (split["dataset"] == corpus.name).all():
        raise ValueError(f"{split_file} splits {', '.join(sorted(set(split['dataset'])))}, not {corpus.name}")
    if set(split["id"]) != {u.id for u in corpus.utterances}:
        raise ValueError(f"{split_file} splits other utterances than the {len(corpus)} of {corpus.name}")
    seed = int(split["seed"].iloc[0]) if "seed" in split and len(split) else None
    return (corpus.subset(split.loc[split["role"] == "calibration", "id"].tolist()),
            corpus.subset(split.loc[split["role"] == "evaluation", "id"].tolist()), seed)


@dataclass(frozen=True)
class CalibrationSplit:
    """Calibration pool and held-out utterances, with the seed that drew them and where they came from."""

    pool: Corpus
    held_out: Corpus
    seed: int
    from_file: bool  # read from notebook 02's file (else computed here)
    source: str  # says which, for the reader


def calibration_split(summaries: Path, corpus: Corpus, n_speakers: int, seed: int) -> CalibrationSplit:
    """Notebook 02's split of `corpus` when its file splits exactly this corpus, else a new one drawn by `seed`."""
    path = Path(summaries) / CALIBRATION
    if path.exists():
        try:
            pool, held_out, file_seed = read_split(path, corpus)
            return CalibrationSplit(pool, held_out, seed if file_seed is None else file_seed, True,
                                    f"read from {_shown(path)}")
        except ValueError as exc:
            log.info("not using %s: %s", path, exc)
    pool, held_out = split_calibration(corpus, n_speakers, seed)
    return CalibrationSplit(pool, held_out, seed, False,
                            "computed here (notebook 02's split is missing or belongs to another corpus)")


def calibration_ids(summaries: Path) -> set[str]:
    """Ids of notebook 02's calibration pool (none if it has not run), to keep them out of evaluations.

    The whole pool: utterances over 30 s give no gradients, but notebook 04's damage curves decode them.
    """
    path = Path(summaries) / CALIBRATION
    if not path.exists():
        return set()
    split = pd.read_csv(path, dtype={"id": str})
    return set(split.loc[split["role"] == "calibration", "id"])


def evaluation_corpora(names: list[str], data_root: Path | None, summaries: Path,
                       limit: int | None = None) -> dict[str, Corpus]:
    """Each corpus without the utterances notebook 02 calibrated on, cut to its first `limit` utterances."""
    left_out = calibration_ids(summaries)
    corpora = {}
    for name in names:
        corpus = load_corpus(name, data_root=data_root)
        corpora[name] = corpus.subset([u.id for u in corpus.utterances if u.id not in left_out][:limit])
    return corpora


def calibration_pool(corpus: Corpus, split_file: str | Path | None = None, n_speakers: int = 4,
                     seed: int = 0) -> Corpus:
    """The calibration utterances: those a split file marks, else `n_speakers` drawn by seed.

    Reading notebook 02's file keeps an export's statistics off the utterances later notebooks report on.
    """
    if split_file is None:
        return split_calibration(corpus, n_speakers, seed)[0]
    return read_split(split_file, corpus)[0]


# ---- component scores (02 writes, 04 and the CLI read) --------------------------------------


def write_sensitivity(summaries: Path, model_name: str, scores: dict[str, pd.DataFrame], stability: pd.DataFrame,
                      agreements: list[dict], split: pd.DataFrame, seed: int) -> dict[str, int]:
    """Notebook 02's three files: scores per calibration corpus, rank agreements, the split; returns rows per file.

    `scores` maps each calibration corpus (the main one first) to its sweep table.
    """
    saved_scores = pd.concat([table.assign(calibration=corpus) for corpus, table in scores.items()], ignore_index=True)
    saved_scores.insert(0, "model", model_name)
    saved_stability = pd.concat([stability.assign(comparison="size and seed vs whole pool"), pd.DataFrame(agreements)],
                                ignore_index=True)
    main_corpus = next(iter(scores))
    tables = {COMPONENT_SCORES: saved_scores, STABILITY: saved_stability,
              CALIBRATION: split.assign(dataset=main_corpus, seed=seed)}
    for name, table in tables.items():
        write_summary(summaries, name, table)
    return {name: len(table) for name, table in tables.items()}


def read_component_scores(scores_file: str | Path, model_name: str | None = None, calibration: str | None = None,
                          labels: str = "reference", seed: int | None = None) -> pd.DataFrame:
    """Per-component sensitivity scores (notebook 02's or `prunelib sensitivity`'s CSV), indexed by component.

    Notebook 02's file holds several models, corpora, label choices, seeds and sizes: the rows of
    `model_name` calibrated on `calibration` with `labels`, of `seed` (None: the smallest) and of the
    largest calibration size are kept. Filters on columns the file lacks are skipped.
    """
    table = pd.read_csv(scores_file)
    wanted = {"model": model_name, "calibration": calibration, "labels": labels}
    for column, value in wanted.items():
        if value is not None and column in table:
            table = table[table[column] == value]
    if "seed" in table and len(table):
        table = table[table["seed"] == (table["seed"].min() if seed is None else seed)]
    if "size" in table and len(table):
        table = table[table["size"] == table["size"].max()]
    table = prunable_rows(table)
    if table.empty:
        chosen = ", ".join(f"{k} {v}" for k, v in wanted.items() if v is not None)
        raise ValueError(f"{scores_file} has no per-layer component scores ({chosen}, seed {seed})")
    return table.set_index("component")


def sensitivity_scores(summaries: Path, loaded: LoadedModel, split: CalibrationSplit, labels: str,
                       batch_size: int = 16) -> tuple[pd.DataFrame, str]:
    """Notebook 02's scores for this model, corpus, labels and split, else scores measured here on the pool.

    Scores are read only when the split was read too: scores of another split would have seen
    held-out utterances. Returns the table (indexed by component) and where it came from.
    """
    path = Path(summaries) / COMPONENT_SCORES
    if path.exists() and split.from_file:
        try:
            scores = read_component_scores(path, loaded.name, split.pool.name, labels, split.seed)
            return scores, f"read from {_shown(path)}"
        except ValueError as exc:
            log.info("not using %s: %s", path, exc)
    table, _ = calibrate(loaded, split.pool, labels, split.seed, batch_size=batch_size, progress=False)
    scores = prunable_rows(table[table["size"] == table["size"].max()]).set_index("component")
    return scores, "computed here (notebook 02 has not written scores for this model and corpus)"


# ---- notebook 04's exports (04 writes, 05 reads) ----------------------------------------------


def exports_dir(profile: str) -> Path:
    """Where notebook 04 saves pruned models of a profile."""
    return project_root() / "exports" / profile


def export_folder(profile: str, allocator: str, target: float) -> Path:
    """The folder notebook 04 saves `allocator`'s model at `target` into."""
    # "random (seed 1)" -> random_seed_1; "sparsegpt+owl" -> sparsegpt_owl (a "+" makes transformers warn on save)
    slug = allocator.replace(" ", "_").replace("+", "_").replace("(", "").replace(")", "")
    return exports_dir(profile) / f"04_{slug}_{round(100 * target)}"


def find_export(profile: str, target: float, model: str | None = None) -> tuple[str, Path] | None:
    """(allocator, folder) of notebook 04's newest export at `target` (of `model`, if given), from its marker."""
    found = []
    for folder in exports_dir(profile).glob("04_*"):
        marker = export_marker(folder) or {}
        at = marker.get("target")
        if "allocator" not in marker or at is None or abs(float(at) - target) > 1e-9:
            continue
        if model is None or marker.get("model") == model:
            found.append((folder.stat().st_mtime, marker["allocator"], folder))
    if not found:
        return None
    _, allocator, folder = max(found)  # the newest, should older exports of other allocators remain
    return allocator, folder


def allocation_systems(summaries: Path, target: float) -> dict[str, str]:
    """From notebook 04's table at `target`: global+embed's spec and the best sensitivity-aware one's, by label.

    Only magnitude allocations: their spec text alone reproduces them (importance tensors are not stored).
    """
    path = Path(summaries) / ALLOCATION_RESULTS
    if not path.exists():
        return {}
    table = pd.read_csv(path)
    table = table[((table["target"] - target).abs() < 1e-9) & (table["importance"] == "magnitude")]
    systems = {}
    baseline = table[table["allocator"] == "global+embed"]
    if not baseline.empty:
        systems[f"global+embed {target:.0%}"] = baseline["spec"].iloc[0]
    aware = table[table["allocator"].isin(SENSITIVITY_AWARE)]
    if not aware.empty:
        best = aware.loc[aware["wer"].idxmin()]
        systems[f"{best['allocator']} {target:.0%}"] = best["spec"]
    return systems


def _shown(path: Path) -> str:
    """A path as the reader knows it: relative to the repository when it lies inside."""
    try:
        return str(Path(path).resolve().relative_to(project_root().resolve()))
    except ValueError:
        return str(path)
