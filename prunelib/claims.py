"""Judge each claim of the paper against our results tables, by stated rules, with intervals."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pandas as pd

from prunelib import handoff
from prunelib.allocation import SENSITIVITY_AWARE

# The paper's numbers: whisper-small, LibriSpeech test-other, its own decoding pipeline (DESIGN.md).
PAPER_DENSE = 11.64
PAPER = {
    "decoder FFN fragile": None,  # stated qualitatively
    "decoder self-attn 50% improves": 9.26,
    "last 4 encoder layers 50% improves": 9.92,
    "global 40% collapses": 61.32,
    "sensitivity-aware 40% near baseline": 11.84,
}
NEAR = 1.0  # "near baseline": within one WER point of dense
BEST_ANY = "best one-shot method of any kind 40% near baseline"  # judged beside the paper's claims, not one of them

RULES = {
    "worse": "replicated when the paired 95% interval of the WER change lies above 0",
    "improves": (
        "replicated when the paired interval lies below 0; not replicated when it lies above 0 or "
        "excludes the paper's relative gain; else inconclusive at this n"
    ),
    "collapses": ("replicated when WER at least doubles and the paired interval lies above 0; "
                  "not replicated when the interval rules out a doubling"),
    "near": (f"replicated when the paired interval's upper end is below +{NEAR:g} point; "
             "not when its lower end is above"),
    "persists": "replicated when every other corpus shows a gain (interval below 0); not when any shows a loss",
}


@dataclass(frozen=True)
class Verdict:
    """One claim's row: what the paper says, what we measured, and the verdict by its rule."""

    claim: str
    model: str  # the model the verdict is about: notebook 07 judges each claim per model size
    paper: str
    ours: str
    interval: str
    setting: str
    verdict: str
    rule: str


def interval_text(low: float, high: float) -> str:
    """A paired interval of a WER change as text: ``[-1.20, +0.35]`` (none from a single utterance)."""
    if pd.isna(low) or pd.isna(high):
        return "[no interval]"
    return f"[{low:+.2f}, {high:+.2f}]"


def _interval(row: pd.Series) -> str:
    """The paired interval of a results row as text."""
    return interval_text(row["delta_lo"], row["delta_hi"])


def nearest_row(table: pd.DataFrame, component: str, sparsity: float = 0.5) -> pd.Series | None:
    """The row of `component` whose sparsity is closest to `sparsity`, or None.

    Notebook 06 judges each claim at the grid's level nearest the paper's and names that level;
    comparisons across sizes use `row_at`, which takes only the level asked for.
    """
    rows = table[table["component"] == component]
    if rows.empty:
        return None
    return rows.iloc[(rows["requested_sparsity"] - sparsity).abs().argmin()]


def row_at(table: pd.DataFrame, component: str, sparsity: float) -> pd.Series | None:
    """The row of `component` at exactly `sparsity`, or None: nothing is borrowed from another level."""
    rows = table[(table["component"] == component) & ((table["requested_sparsity"] - sparsity).abs() < 1e-9)]
    return None if rows.empty else rows.iloc[0]


def interval_side(row: pd.Series) -> str:
    """Where a row's paired interval of the WER change lies, in words: below 0, above 0, or across it."""
    if pd.isna(row["delta_lo"]) or pd.isna(row["delta_hi"]):
        return "no interval (a single utterance)"
    if row["delta_hi"] < 0:
        return "lower WER (interval below 0)"
    if row["delta_lo"] > 0:
        return "higher WER (interval above 0)"
    return "no detectable change (interval spans 0)"


def judge_worse(row: pd.Series) -> str:
    """Verdict for "pruning this hurts"."""
    if row["delta_lo"] > 0:
        return "replicated"
    if row["delta_hi"] < 0:
        return "not replicated"
    return "inconclusive at this n"


def judge_improves(row: pd.Series, dense_wer: float, paper_after: float) -> str:
    """Verdict for "pruning this lowers WER", with the paper's gain scaled to our dense WER."""
    paper_gain = dense_wer * (paper_after / PAPER_DENSE - 1.0)  # negative
    if row["delta_hi"] < 0:
        return "replicated"
    if row["delta_lo"] > paper_gain:  # the paper's gain (and any gain at all, if lo > 0) is ruled out
        return "not replicated"
    return "inconclusive at this n"


def judge_collapse(row: pd.Series, dense_wer: float) -> str:
    """Verdict for "this allocation collapses"."""
    if row["wer"] >= 2 * dense_wer and row["delta_lo"] > 0:
        return "replicated"
    if row["delta_hi"] < dense_wer:  # even the interval's upper end stays below twice the dense WER
        return "not replicated"
    return "inconclusive at this n"


def judge_near(row: pd.Series) -> str:
    """Verdict for "this allocation stays near the dense WER"."""
    if row["delta_hi"] < NEAR:
        return "replicated"
    if row["delta_lo"] > NEAR:
        return "not replicated"
    return "inconclusive at this n"


def hurt_more(table: pd.DataFrame, row: pd.Series) -> str:
    """How many of the swept groups lose more WER than `row`'s at its sparsity, as text.

    "Fragile" is relative: an interval above zero says pruning hurts, not that this group
    hurts more than the others. The count puts the verdict beside the rest of the sweep.
    """
    same = table[(table["spec"] != "dense") & ((table["requested_sparsity"] - row["requested_sparsity"]).abs() < 1e-9)]
    worse = int((same["delta_wer"] > row["delta_wer"]).sum())
    return f"{worse} of {len(same)} swept groups hurt more"


def ablation_claims(ablation: pd.DataFrame, model: str) -> list[Verdict]:
    """The three component claims, under every pipeline in the 03 ablation table."""
    verdicts = []
    for language, table in ablation.groupby("language", sort=False):
        dense = table[table["spec"] == "dense"].iloc[0]
        setting = f"pipeline '{language}', n = {int(dense['n'])}"
        checks = [("decoder FFN fragile", "decoder FFN", "worse"),
                  ("decoder self-attn 50% improves", "decoder self-attn", "improves"),
                  ("last 4 encoder layers 50% improves", "encoder last 4 layers", "improves")]
        for claim, component, kind in checks:
            row = nearest_row(table, component, 0.5)
            if row is None:
                continue
            ours = f"{dense['wer']:.2f} -> {row['wer']:.2f} at {row['requested_sparsity']:.0%}"
            if kind == "worse":
                verdict, paper = judge_worse(row), "fragile"
                ours += f" ({hurt_more(table, row)})"
            else:
                verdict = judge_improves(row, dense["wer"], PAPER[claim])
                paper = f"{PAPER_DENSE:.2f} -> {PAPER[claim]:.2f}"
            verdicts.append(Verdict(claim, model, paper, ours, _interval(row), setting, verdict, RULES[kind]))
    return verdicts


COMPONENT_CLAIMS = (  # (component label of notebook 03, what the paper says of it at 50%)
    ("decoder FFN", "fragile (large WER increase)"),
    ("decoder self-attn", "improves WER at 50%"),
    ("encoder last 4 layers", "improves WER at 50%"),
)


def ablation_findings(ablation: pd.DataFrame) -> pd.DataFrame:
    """Notebook 03's claims table: each claimed component nearest 50%, per pipeline, and its interval's side."""
    rows = []
    for component, claim in COMPONENT_CLAIMS:
        for language, table in ablation.groupby("language", sort=False):
            row = nearest_row(table, component)
            if row is None:
                continue
            rows.append({"component": component, "paper says": claim, "pipeline": language,
                         "sparsity": row["requested_sparsity"], "WER": round(row["wer"], 2),
                         "change": round(row["delta_wer"], 2), "95% interval": _interval(row),
                         "here": interval_side(row)})
    return pd.DataFrame(rows)


def gains(ablation: pd.DataFrame) -> pd.DataFrame:
    """The pruned settings whose paired interval lies below zero: a real gain at this n."""
    return ablation[(ablation["spec"] != "dense") & (ablation["delta_hi"] < 0)]


def crossing(block: pd.DataFrame, level: float) -> float | None:
    """Linear-weight sparsity (%) where an allocator's WER change first reaches `level`, or None.

    Interpolated linearly between grid points, starting from dense (0%, change 0); `block` holds
    one allocator's rows sorted by sparsity.
    """
    points = [(0.0, 0.0), *zip(block["sparsity_linear"], block["delta_wer"], strict=True)]
    for (x0, y0), (x1, y1) in pairwise(points):
        if y1 >= level:
            return x0 + (x1 - x0) * (level - y0) / (y1 - y0) if y1 > y0 else x1
    return None


CROSSING_LEVELS = (1.0, 5.0)  # WER points above dense


def matched_rows(results_04: pd.DataFrame) -> pd.DataFrame:
    """Notebook 04's rows of allocators that hit a target: neither dense nor the paper's fixed table."""
    return results_04[results_04["target"].notna() & (results_04["allocator"] != "dense")]


def crossings(results_04: pd.DataFrame) -> pd.DataFrame:
    """Per matched allocator: the sparsity where its WER change first reaches +1 and +5 points."""
    matched = matched_rows(results_04)
    rows = []
    for name, block in matched.groupby("allocator", sort=False):
        block = block.sort_values("sparsity_linear")
        rows.append({"allocator": name, **{f"+{level:g} point{'s' if level != 1 else ''} at": crossing(block, level)
                                          for level in CROSSING_LEVELS}})
    return pd.DataFrame(rows)


def best_matched(results_04: pd.DataFrame, target: float) -> pd.Series | None:
    """Notebook 04's matched allocation with the lowest WER at `target` (any method), or None."""
    at = matched_rows(results_04)
    at = at[(at["target"] - target).abs() < 1e-9]
    return None if at.empty else at.loc[at["wer"].idxmin()]


def allocation_claims(results_04: pd.DataFrame, model: str, target: float = 0.4) -> list[Verdict]:
    """Global magnitude at 40% collapses; the best sensitivity-aware allocation stays near dense."""
    at = results_04[(results_04["target"] - target).abs() < 1e-9]
    dense = results_04[results_04["allocator"] == "dense"].iloc[0]
    setting = f"pipeline 'en', n = {int(dense['n'])} held-out utterances"
    verdicts = []
    global_rows = at[at["allocator"] == "global+embed"]
    if not global_rows.empty:
        row = global_rows.iloc[0]
        verdicts.append(Verdict("global 40% collapses", model,
                                f"{PAPER_DENSE:.2f} -> {PAPER['global 40% collapses']:.2f}",
                                f"{dense['wer']:.2f} -> {row['wer']:.2f}", _interval(row), setting,
                                judge_collapse(row, dense["wer"]), RULES["collapses"]))
    aware = at[at["allocator"].isin(SENSITIVITY_AWARE)]
    if not aware.empty:
        row = aware.loc[aware["wer"].idxmin()]
        claim = "sensitivity-aware 40% near baseline"
        verdicts.append(Verdict(claim, model, f"{PAPER_DENSE:.2f} -> {PAPER[claim]:.2f}",
                                f"{dense['wer']:.2f} -> {row['wer']:.2f} ({row['allocator']})", _interval(row),
                                setting, judge_near(row), RULES["near"]))
    # Not the paper's claim, stated beside it: how near any one-shot method of the table gets.
    row = best_matched(results_04, target)
    if row is not None:
        verdicts.append(Verdict(BEST_ANY, model, "not claimed",
                                f"{dense['wer']:.2f} -> {row['wer']:.2f} ({row['allocator']})",
                                _interval(row), setting, judge_near(row), RULES["near"]))
    return verdicts


def cross_dataset_claim(cross: pd.DataFrame, model: str, system: str = "decoder self-attn 50%") -> list[Verdict]:
    """Gains of `system` persist on every corpus other than the first (per pipeline)."""
    verdicts = []
    for language, table in cross[cross["system"] == system].groupby("language", sort=False):
        first, others = table.iloc[0], table.iloc[1:]
        if others.empty:
            continue
        if (others["delta_hi"] < 0).all():
            verdict = "replicated"
        elif (others["delta_lo"] > 0).any():
            verdict = "not replicated"
        else:
            verdict = "inconclusive at this n"
        # The corpus the recipe came from is shown beside the others: a "gain" can only persist if it exists.
        ours = ("; ".join(f"{r.dataset}: {r.delta_wer:+.2f}" for r in others.itertuples())
                + f" (on {first['dataset']}: {first['delta_wer']:+.2f})")
        intervals = "; ".join(interval_text(r.delta_lo, r.delta_hi) for r in others.itertuples())
        sizes = "; ".join(str(int(n)) for n in others["n"])
        verdicts.append(Verdict(f"gains persist across corpora ({system})", model, "TED-LIUM -0.64, Common Voice -2.54",
                                ours, intervals, f"pipeline '{language}', n = {sizes}", verdict,
                                RULES["persists"]))
    return verdicts


def claims_table(summaries: Path, model: str) -> pd.DataFrame:
    """Every claim we have results for, read from a profile's summary folder, with the run behind each."""
    rows: list[dict] = []
    sources = {handoff.ABLATION: lambda t: ablation_claims(t, model),
               handoff.ALLOCATION_RESULTS: lambda t: allocation_claims(t, model),
               handoff.CROSS_DATASET: lambda t: cross_dataset_claim(t, model)}
    missing = []
    for name, judge in sources.items():
        path = Path(summaries) / name
        if path.exists():
            # which run wrote the table: a verdict on an earlier run's numbers must say so
            run = {"notebook": handoff.SOURCE_NOTEBOOKS[name][:2], "run": handoff.source_run(summaries, name)}
            rows += [{**vars(verdict), **run} for verdict in judge(pd.read_csv(path))]
        else:
            missing.append(name)
    table = pd.DataFrame(rows)
    table.attrs["missing"] = missing
    return table


PAPER_READING = (  # (what the paper concludes, group, direction): "fragile" means above average
    ("decoder FFN is fragile", "decoder.ffn", "fragile"),
    ("decoder self-attention is redundant", "decoder.self_attn", "redundant"),
    ("late encoder layers are redundant", "encoder (late)", "redundant"),
)


def compare_with_paper(groups: pd.DataFrame, method: str) -> pd.DataFrame:
    """Each of the paper's readings against ours: the group's score over the linear-weight mean."""
    overall = groups[groups["third"] == "all"]
    mean = float((overall[method] * overall["numel"]).sum() / overall["numel"].sum())
    late_encoder = groups[(groups["stack"] == "encoder") & (groups["third"] == "late")]
    scores = {row.group: getattr(row, method) for row in overall.itertuples()}
    scores["encoder (late)"] = float((late_encoder[method] * late_encoder["numel"]).sum() / late_encoder["numel"].sum())
    rows = []
    for claim, group, direction in PAPER_READING:
        ratio = scores[group] / mean
        rows.append({"paper": claim, "group": group, "method": method, "score / linear mean": ratio,
                     "agrees": ratio > 1 if direction == "fragile" else ratio < 1})
    return pd.DataFrame(rows)
