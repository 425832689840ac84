"""What moved between two versions of a profile's summary tables: the committed ones and a rerun's."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from prunelib import handoff
from prunelib.paths import project_root, run_git

TOLERANCE = 1e-9
SPEED_COLUMNS = ("rtfx", "seconds", "wall_seconds")  # timings: they differ between any two runs
# The columns that name a row of each summary table (text and levels, never a measured number).
KEYS = {
    handoff.BASELINE: ["model", "dataset", "language"],
    handoff.CALIBRATION: ["id"],
    handoff.COMPONENT_SCORES: ["model", "labels", "seed", "size", "component", "calibration"],
    handoff.STABILITY: ["labels", "method", "seed", "size", "reference_size", "comparison"],
    handoff.ABLATION: ["component", "spec", "language"],
    handoff.ablation_file("en"): ["component", "spec", "language"],
    handoff.ablation_file("auto"): ["component", "spec", "language"],
    handoff.ABLATION_CLAIMS: ["component", "pipeline", "sparsity"],
    handoff.DAMAGE_CURVES: ["component", "spec", "language"],
    handoff.ALLOCATION_RESULTS: ["allocator", "target"],
    handoff.AT_TARGET: ["allocator"],
    handoff.ALLOCATIONS: ["component", "target"],
    handoff.CROSSINGS: ["allocator"],
    handoff.CROSS_DATASET: ["system", "dataset", "language"],
    handoff.CLAIMS: ["claim", "setting"],
    handoff.SIZES: ["profile", "effect"],
    handoff.SIZE_CLAIMS: ["claim", "model", "setting"],
}


def committed_table(revision: str, path: Path, root: Path | None = None) -> pd.DataFrame | None:
    """The CSV at `path` as committed in `revision`, or None where that revision has no such file."""
    root = root or project_root()
    relative = Path(path).resolve().relative_to(root.resolve()).as_posix()
    done = run_git(root, "show", f"{revision}:{relative}")
    if done.returncode != 0:
        if "does not exist" in done.stderr or "exists on disk, but not in" in done.stderr:
            return None
        raise ValueError(f"git show {revision}:{relative} failed: {done.stderr.strip()}")
    return pd.read_csv(io.StringIO(done.stdout))


def key_columns(name: str, table: pd.DataFrame) -> list[str]:
    """The columns naming a row of the summary table `name`; its text columns for a table not listed."""
    keys = KEYS.get(name) or [c for c in table.columns if table[c].dtype == object]
    return [c for c in keys if c in table.columns]


def _same(before: object, after: object) -> bool:
    """Equal, as numbers within TOLERANCE or as text; two missing values are equal."""
    if pd.isna(before) and pd.isna(after):
        return True
    if isinstance(before, (int, float, np.number)) and isinstance(after, (int, float, np.number)):
        return bool(abs(float(before) - float(after)) <= TOLERANCE)
    return str(before) == str(after)


def changes(name: str, before: pd.DataFrame | None, after: pd.DataFrame) -> pd.DataFrame:
    """One row per changed cell of table `name`: row (its key), column, before, after; added and removed rows too."""
    columns = ["row", "column", "before", "after", "change"]
    if before is None:
        return pd.DataFrame([{"row": "(whole table)", "column": "", "before": "absent", "after": f"{len(after)} rows",
                              "change": np.nan}], columns=columns)
    keys = [c for c in key_columns(name, after) if c in before.columns]

    def label(row: pd.Series) -> str:
        return ", ".join(str(row[k]) for k in keys) if keys else str(row.name)

    def rows(table: pd.DataFrame) -> dict[str, pd.Series]:
        # Rows whose keys repeat are told apart by their order, so that none is silently dropped.
        labelled, seen = {}, {}
        for _, row in table.iterrows():
            name = label(row)
            seen[name] = seen.get(name, 0) + 1
            labelled[name if seen[name] == 1 else f"{name} (#{seen[name]})"] = row
        return labelled

    old, new = rows(before), rows(after)
    found = []
    for name in old.keys() - new.keys():
        found.append({"row": name, "column": "", "before": "present", "after": "removed", "change": np.nan})
    for name in new.keys() - old.keys():
        found.append({"row": name, "column": "", "before": "absent", "after": "added", "change": np.nan})
    for name in [n for n in new if n in old]:
        for column in after.columns:
            if column in keys:
                continue
            was = old[name][column] if column in before.columns else "absent"
            now = new[name][column]
            if not _same(was, now):
                numeric = all(isinstance(v, (int, float, np.number)) and not pd.isna(v) for v in (was, now))
                found.append({"row": name, "column": column, "before": was, "after": now,
                              "change": float(now) - float(was) if numeric else np.nan})
    return pd.DataFrame(found, columns=columns)


def committed_names(revision: str, folder: Path, root: Path | None = None) -> list[str]:
    """The CSV files `revision` has in `folder`."""
    root = root or project_root()
    relative = Path(folder).resolve().relative_to(root.resolve()).as_posix()
    done = run_git(root, "ls-tree", "--name-only", f"{revision}:{relative}")
    return sorted(name for name in done.stdout.split() if name.endswith(".csv")) if done.returncode == 0 else []


def compare_profile(profile: str, revision: str) -> dict[str, pd.DataFrame]:
    """Every summary table of `profile` on disk against `revision`'s: {file name: its changes}.

    A table `revision` has and the disk lacks is reported as gone, not passed over.
    """
    folder = handoff.summary_folder(profile)
    tables = sorted(folder.glob("*.csv"))
    if not tables:
        raise ValueError(f"no summary tables in {folder}")
    compared = {path.name: changes(path.name, committed_table(revision, path), pd.read_csv(path)) for path in tables}
    for name in set(committed_names(revision, folder)) - set(compared):
        compared[name] = pd.DataFrame([{"row": "(whole table)", "column": "", "before": "present",
                                        "after": "absent", "change": np.nan}])
    return dict(sorted(compared.items()))


def describe(compared: dict[str, pd.DataFrame], wer_columns: tuple[str, ...] = ("wer", "delta_wer")) -> list[str]:
    """One line per table: how many results moved (speeds apart), and the largest move of a WER column."""
    lines = []
    for name, found in compared.items():
        speed = found["column"].isin(SPEED_COLUMNS)
        results = found[~speed]
        note = f" ({int(speed.sum())} speed cells differ too: run-to-run timing, not results)" if speed.any() else ""
        if results.empty:
            lines.append(f"{name}: results unchanged{note}")
            continue
        moved = results[results["column"].isin(wer_columns)].dropna(subset=["change"])
        largest = ""
        if not moved.empty:
            top = moved.loc[moved["change"].abs().idxmax()]
            largest = (f"; largest WER move {top['change']:+.2f} points ({top['row']}: {top['column']} "
                       f"{float(top['before']):.2f} -> {float(top['after']):.2f})")
        lines.append(f"{name}: {len(results)} cells or rows differ{largest}{note}")
    return lines
