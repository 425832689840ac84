"""The README's results tables, rendered from a profile's committed summary tables and kept in step with them."""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from prunelib import claims, handoff, readings, sizes, sweep
from prunelib.book import PARTS
from prunelib.notebooks import format_duration
from prunelib.paths import project_root
from prunelib.publish import read_provenance
from prunelib.results import write_text_atomic

# <!-- report:NAME --> ... <!-- /report -->: the generated part of the README; the prose around it is written.
_BLOCK = re.compile(r"(<!-- report:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /report -->)", re.DOTALL)


def _markdown(table: pd.DataFrame, align_right: tuple[str, ...] = ()) -> str:
    """A pipe table; cells are written as they are."""
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---:" if column in align_right else "---" for column in table.columns) + "|"
    rows = ["| " + " | ".join(str(value) for value in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def _change(row: pd.Series | dict) -> str:
    """A WER change with its paired interval: ``+1.00 [+0.60, +1.70]``."""
    return f"{row['delta_wer']:+.2f} {claims.interval_text(row['delta_lo'], row['delta_hi'])}"


def claims_table(verdicts: pd.DataFrame) -> str:
    """Notebook 06's verdict table."""
    # a table from before notebook 06 named its runs cannot vouch for any of them
    verdicts = verdicts if "run" in verdicts else verdicts.assign(run=handoff.NOT_RECORDED)
    table = verdicts[["claim", "setting", "paper", "ours", "interval", "verdict", "run"]].rename(
        columns={"paper": "paper (whisper-small)", "ours": "here"})
    return _markdown(table)


def allocations_table(at_target: pd.DataFrame, crossings: pd.DataFrame, results: pd.DataFrame) -> str:
    """Notebook 04: every allocator at the target, with where its WER change first reaches +1 and +5 points."""
    first_point = claims.matched_rows(results)["sparsity_linear"].min()
    crossing = crossings.set_index("allocator")
    best = sweep.best_allocator(at_target)
    rows = []
    for row in at_target.to_dict("records"):
        name = row["allocator"]
        wer = f"{row['wer']:.2f}"
        rows.append({
            "allocator": name,
            "sparsity (linear)": f"{row['sparsity_linear']:.1f}%",
            "WER": f"**{wer}**" if name == best else wer,
            "change vs dense [95%]": f"{row['vs dense']:+.2f} {row['vs dense 95%']}",
            "+1 point at": readings.crossing_text(crossing.loc[name, "+1 point at"], first_point)
            if name in crossing.index else "-",
            "+5 points at": readings.crossing_text(crossing.loc[name, "+5 points at"], first_point)
            if name in crossing.index else "-",
        })
    return _markdown(pd.DataFrame(rows), align_right=("sparsity (linear)", "WER"))


def components_table(ablation: pd.DataFrame, sparsity: float = sizes.PAPER_SPARSITY) -> str:
    """Notebook 03: every component group at `sparsity`, from most robust to most fragile."""
    rows = ablation[(ablation["requested_sparsity"] - sparsity).abs() < 1e-9].sort_values("delta_wer")
    table = pd.DataFrame({
        "rank": range(1, len(rows) + 1),
        f"group at {sparsity:.0%}": rows["component"].to_list(),
        "WER": [f"{wer:.2f}" for wer in rows["wer"]],
        "change vs dense [95%]": [_change(row) for row in rows.to_dict("records")],
    })
    return _markdown(table, align_right=("rank", "WER"))


def cross_dataset_table(cross: pd.DataFrame, language: str = "en") -> str:
    """Notebook 05: each system's change on every corpus under one pipeline, dense WER in the header."""
    rows = cross[cross["language"] == language]
    dense = rows[rows["system"] == "dense"].set_index("dataset")
    datasets = list(dict.fromkeys(rows["dataset"]))
    columns = {dataset: f"{dataset} (dense {dense.loc[dataset, 'wer']:.2f}, n = {int(dense.loc[dataset, 'n'])})"
               for dataset in datasets}
    table = []
    for system, part in rows[rows["system"] != "dense"].groupby("system", sort=False):
        by_dataset = part.set_index("dataset")
        table.append({f"change vs dense, pipeline `{language}`": system,
                      **{columns[d]: _change(by_dataset.loc[d]) if d in by_dataset.index else "-" for d in datasets}})
    return _markdown(pd.DataFrame(table))


def sizes_table(sizes: pd.DataFrame) -> str:
    """Notebook 07: the headline effects, one row per model size, the paper's whisper-small change beside."""
    rows = []
    for row in sizes.to_dict("records"):
        measured = pd.notna(row.get("delta_wer"))
        rows.append({
            "effect": row["effect"],
            "model": row["model"],
            "method": row["method"] if pd.notna(row.get("method")) else "-",
            "n": int(row["n"]) if measured else "-",
            "dense -> pruned": f"{row['dense_wer']:.2f} -> {row['wer']:.2f}" if measured else "-",
            "change vs dense [95%]": _change(row) if measured else row["status"],
            "paper (whisper-small)": f"{row['paper_change']:+.2f}" if pd.notna(row.get("paper_change")) else "-",
            # which run wrote the row: rows of an earlier, unstamped run must not pass for this code's
            "run": row["run"] if measured and pd.notna(row.get("run")) else "-",
        })
    return _markdown(pd.DataFrame(rows), align_right=("n",))


def runs_table(root: Path | None = None) -> str:
    """Which commit produced each committed executed notebook (executed/<profile>/), and how long it ran."""
    root = Path(root) if root is not None else project_root()
    rows = []
    for profile, _ in PARTS:
        for path in sorted((root / "executed" / profile).glob("[0-9][0-9]_*.ipynb")):
            record = read_provenance(json.loads(path.read_text(encoding="utf-8"))["metadata"])
            commit = f"`{record['commit']}`" if record["commit"] else "not recorded"
            if record["modified"]:
                commit += " with uncommitted changes"
            rows.append({"notebook": f"`{profile}/{path.name}`", "commit": commit,
                         "ran for": format_duration(record["seconds"]) if record["seconds"] else "-"})
    if not rows:
        return "*Not run yet: no executed notebooks under executed/.*\n"
    return _markdown(pd.DataFrame(rows), align_right=("ran for",))


# Block name -> (summary tables it reads, how it renders them).
TABLES: dict[str, tuple[tuple[str, ...], Callable[..., str]]] = {
    "claims": ((handoff.CLAIMS,), claims_table),
    "allocations": ((handoff.AT_TARGET, handoff.CROSSINGS, handoff.ALLOCATION_RESULTS), allocations_table),
    "components": ((handoff.ablation_file("en"),), components_table),
    "cross-dataset": ((handoff.CROSS_DATASET,), cross_dataset_table),
    "sizes": ((handoff.SIZES,), sizes_table),
    "runs": ((), runs_table),  # reads the executed notebooks, no summary table
}


def render(name: str, profile: str = "default") -> str:
    """One README block from the profile's summary tables, or a line saying which table is missing."""
    if name not in TABLES:
        raise ValueError(f"unknown README table {name!r} (known: {', '.join(TABLES)})")
    files, renderer = TABLES[name]
    folder = handoff.summary_folder(profile)
    missing = [file for file in files if not (folder / file).exists()]
    if missing:
        return f"*Not run yet: no {', '.join(str((folder / file).relative_to(project_root())) for file in missing)}.*\n"
    return renderer(*(pd.read_csv(folder / file) for file in files))


def update_readme(readme: str | Path, profile: str = "default", write: bool = True) -> list[str]:
    """Re-render every marked block of `readme`; returns the names of the blocks that changed."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    changed = []

    def block(match: re.Match) -> str:
        body = render(match["name"], profile)
        if body != match["body"]:
            changed.append(match["name"])
        return match.group(1) + body + match.group(4)

    updated = _BLOCK.sub(block, text)
    if write and changed:
        write_text_atomic(readme, updated)
    return changed
