"""Notebook 07: the paper's headline effects per model size, read from each size's summary tables."""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from prunelib import claims, handoff
from prunelib.components import layer_thirds
from prunelib.notebooks import load_profile
from prunelib.paths import project_root

# Every size decodes under the standard pipeline; English-only models (tiny.en) have no other.
COMPARISON_PIPELINE = "en"
PAPER_MODEL = "openai/whisper-small"

PAPER_SPARSITY = 0.5  # the paper's component claims are at 50%
PAPER_TARGET = 0.4  # and its allocation claim at 40% overall

# (effect, notebook 03 group or None for notebook 04's best matched allocation, the paper's claim).
# The paper's "last four encoder layers" of its 12-layer whisper-small are also its late third; in a
# smaller model the two differ (whisper-base: layers 2-5 against 4-5; tiny.en: its whole encoder
# against layer 3), so both are shown: the literal group and the size-relative one.
EFFECTS = (
    ("decoder self-attn", "decoder self-attn", "decoder self-attn 50% improves"),
    ("decoder FFN", "decoder FFN", None),  # the paper calls it fragile without a number
    ("encoder last 4 layers (literal)", "encoder last 4 layers", "last 4 encoder layers 50% improves"),
    ("encoder late third (size-relative)", "encoder late layers", "last 4 encoder layers 50% improves"),
    # The paper's number here is its sensitivity-aware allocation; ours is the best method of the table.
    ("best matched allocation", None, "sensitivity-aware 40% near baseline"),
)


WHISPER_ENCODER_LAYERS = {"tiny": 4, "base": 6, "small": 12, "medium": 24, "large": 32}  # Radford et al. 2022


def late_groups(encoder_layers: dict[str, int] | None = None) -> pd.DataFrame:
    """Which encoder layers the literal "last 4 layers" and the size-relative late third are, per size."""
    def span(first: int, last: int) -> str:
        return f"{first}-{last}" if last > first else str(first)

    rows = []
    for size, n in (encoder_layers or WHISPER_ENCODER_LAYERS).items():
        late = layer_thirds(n)["late"]
        rows.append({"size": size, "encoder layers": n, "last 4 layers": span(max(0, n - 4), n - 1),
                     "late third": span(late.start, late.stop - 1), "same layers": max(0, n - 4) == late.start})
    return pd.DataFrame(rows)


def profile_model(profile: str) -> str:
    """The model a profile's results were made with: notebook 01's table when it ran, else its params file."""
    baseline = handoff.summary_folder(profile) / handoff.BASELINE
    if baseline.exists():
        return str(pd.read_csv(baseline)["model"].iloc[0])
    return str((load_profile(profile).get("shared") or {}).get("model", "?"))


def size_rank(model: str) -> int | None:
    """Where a Whisper model's size stands among tiny .. large (by its name), or None when the name says nothing."""
    name = model.rstrip("/").rsplit("/", 1)[-1].lower()
    return next((rank for rank, size in enumerate(WHISPER_ENCODER_LAYERS) if size in name), None)


def check_order(models: Sequence[str]) -> None:
    """Refuse sizes given out of order: a trend read from the largest to the smallest would be backwards."""
    ranks = [rank for rank in map(size_rank, models) if rank is not None]
    if ranks != sorted(ranks):
        raise ValueError(f"list the profiles smallest model first; got {', '.join(models)}")


def paper_relative(change: float | None) -> float | None:
    """The paper's change as a percentage of its dense WER: the scale on which sizes are compared with it."""
    return None if change is None else round(100 * change / claims.PAPER_DENSE, 1)


def paper_change(claim: str | None, at_papers_level: bool = True) -> float | None:
    """The paper's WER change for a claim on whisper-small, in points (None: no number, or another sparsity)."""
    after = claims.PAPER.get(claim) if claim and at_papers_level else None
    return None if after is None else round(after - claims.PAPER_DENSE, 2)


def _measured(row: pd.Series, dense_wer: float) -> dict:
    return {"sparsity": row.get("requested_sparsity", row.get("target")), "spec": row["spec"], "n": int(row["n"]),
            "dense_wer": dense_wer, "wer": row["wer"], "delta_wer": row["delta_wer"], "delta_lo": row["delta_lo"],
            "delta_hi": row["delta_hi"],
            "relative_change": round(100 * row["delta_wer"] / dense_wer, 1) if dense_wer > 0 else None,
            "here": claims.interval_side(row)}


def _ablation_effect(table: pd.DataFrame, group: str, sparsity: float) -> dict | None:
    table = table[table["language"] == COMPARISON_PIPELINE]
    row = claims.row_at(table, group, sparsity)
    dense = table[table["spec"] == "dense"]
    if row is None or dense.empty:
        return None
    return {"method": group, **_measured(row, dense.iloc[0]["wer"])}


def _best_allocation(table: pd.DataFrame, target: float) -> dict | None:
    row = claims.best_matched(table, target)
    dense = table[table["allocator"] == "dense"]
    if row is None or dense.empty:
        return None
    return {"method": row["allocator"], **_measured(row, dense.iloc[0]["wer"])}


MEASURED_COLUMNS = ["method", "sparsity", "spec", "n", "dense_wer", "wer", "delta_wer", "delta_lo", "delta_hi",
                    "relative_change", "here", "notebook", "run"]


def size_table(profiles: Sequence[str], sparsity: float = PAPER_SPARSITY, target: float = PAPER_TARGET) -> pd.DataFrame:
    """One row per (profile, effect): the paired WER change against the same size's dense model.

    Component effects are read at `sparsity` from notebook 03, the best matched allocation at
    `target` from notebook 04. A profile not run yet, or one whose tables lack an effect at exactly
    that level, gives a row whose `status` says what is missing; nothing is filled in from another
    level. The paper's change is given only at the paper's own levels. `run` says which commit's
    run wrote each row's table (`handoff.source_run`), so that rows of different runs are told apart.
    """
    if not profiles:
        raise ValueError("notebook 07 needs at least one profile")
    models = {profile: profile_model(profile) for profile in profiles}
    check_order(list(models.values()))
    rows = []
    for profile in profiles:
        folder = handoff.summary_folder(profile)
        tables = {name: pd.read_csv(folder / name) if (folder / name).exists() else None
                  for name in (handoff.BASELINE, handoff.ABLATION, handoff.ALLOCATION_RESULTS)}
        dataset = tables[handoff.BASELINE]["dataset"].iloc[0] if tables[handoff.BASELINE] is not None else None
        for effect, group, claim in EFFECTS:
            level = sparsity if group else target
            source = handoff.ABLATION if group else handoff.ALLOCATION_RESULTS
            paper_level = abs(level - (PAPER_SPARSITY if group else PAPER_TARGET)) < 1e-9
            change = paper_change(claim, paper_level)
            base = {"profile": profile, "model": models[profile], "dataset": dataset, "effect": f"{effect} {level:.0%}",
                    "kind": "component" if group else "allocation", "paper_change": change,
                    "paper_relative": paper_relative(change)}
            table = tables[source]
            if table is None:
                rows.append({**base, "status": f"not run: no {folder.relative_to(project_root()) / source}"})
                continue
            found = _ablation_effect(table, group, level) if group else _best_allocation(table, level)
            status = "measured" if found else f"not in {source} at {level:.0%} (pipeline '{COMPARISON_PIPELINE}')"
            rows.append({**base, **(found or {}), "status": status, "notebook": handoff.SOURCE_NOTEBOOKS[source][:2],
                         "run": handoff.source_run(folder, source)})
    table = pd.DataFrame(rows)
    # Every measurement column exists even when nothing is measured yet: readers and the plot rely on them.
    return table.reindex(columns=[*table.columns, *(c for c in MEASURED_COLUMNS if c not in table.columns)])


def size_claims(profiles: Sequence[str]) -> pd.DataFrame:
    """Notebook 06's verdict table for every profile that has results, one block per model.

    `attrs["missing"]` names each profile's tables that are not there yet (a whole profile not run
    names all three).
    """
    blocks, missing = [], []
    for profile in profiles:
        block = claims.claims_table(handoff.summary_folder(profile), profile_model(profile))
        missing += [f"{profile}: {name}" for name in block.attrs["missing"]]
        if len(block):
            blocks.append(block)
    table = pd.concat(blocks, ignore_index=True) if blocks else pd.DataFrame()
    table.attrs["missing"] = missing
    return table
