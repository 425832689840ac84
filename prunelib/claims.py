"""Judge each claim of the paper against our results tables, by stated rules, with intervals."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

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

RULES = {
    "worse": "replicated when the paired 95% interval of the WER change lies above 0",
    "improves": ("replicated when the paired interval lies below 0; not replicated when it lies above 0 or "
                 "excludes the paper's relative gain; else inconclusive at this n"),
    "collapses": "replicated when WER at least doubles and the paired interval lies above 0",
    "near": f"replicated when the paired interval's upper end is below +{NEAR:g} point; not when its lower end is above",
    "persists": "replicated when every other corpus shows a gain (interval below 0); not when any shows a loss",
}


@dataclass(frozen=True)
class Verdict:
    """One claim's row: what the paper says, what we measured, and the verdict by its rule."""

    claim: str
    paper: str
    ours: str
    interval: str
    setting: str
    verdict: str
    rule: str


def _interval(row: pd.Series) -> str:
    """The paired interval of a results row as text."""
    return f"[{row['delta_lo']:+.2f}, {row['delta_hi']:+.2f}]"


def _nearest(table: pd.DataFrame, component: str, sparsity: float) -> pd.Series | None:
    """The row of `component` whose sparsity is closest to `sparsity`, or None."""
    rows = table[table["component"] == component]
    if rows.empty:
        return None
    return rows.iloc[(rows["requested_sparsity"] - sparsity).abs().argmin()]


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
    if row["delta_hi"] < NEAR:
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
        setting = f"{model}, pipeline '{language}', n = {int(dense['n'])}"
        checks = [("decoder FFN fragile", "decoder FFN", "worse"),
                  ("decoder self-attn 50% improves", "decoder self-attn", "improves"),
                  ("last 4 encoder layers 50% improves", "encoder last 4 layers", "improves")]
        for claim, component, kind in checks:
            row = _nearest(table, component, 0.5)
            if row is None:
                continue
            ours = f"{dense['wer']:.2f} -> {row['wer']:.2f} at {row['requested_sparsity']:.0%}"
            if kind == "worse":
                verdict, paper = judge_worse(row), "fragile"
                ours += f" ({hurt_more(table, row)})"
            else:
                verdict = judge_improves(row, dense["wer"], PAPER[claim])
                paper = f"{PAPER_DENSE:.2f} -> {PAPER[claim]:.2f}"
            verdicts.append(Verdict(claim, paper, ours, _interval(row), setting, verdict, RULES[kind]))
    return verdicts


def allocation_claims(results_04: pd.DataFrame, model: str, target: float = 0.4) -> list[Verdict]:
    """Global magnitude at 40% collapses; the best sensitivity-aware allocation stays near dense."""
    at = results_04[(results_04["target"] - target).abs() < 1e-9]
    dense = results_04[results_04["allocator"] == "dense"].iloc[0]
    setting = f"{model}, pipeline 'en', n = {int(dense['n'])} held-out utterances"
    verdicts = []
    global_rows = at[at["allocator"] == "global+embed"]
    if not global_rows.empty:
        row = global_rows.iloc[0]
        verdicts.append(Verdict("global 40% collapses", f"{PAPER_DENSE:.2f} -> {PAPER['global 40% collapses']:.2f}",
                                f"{dense['wer']:.2f} -> {row['wer']:.2f}", _interval(row), setting,
                                judge_collapse(row, dense["wer"]), RULES["collapses"]))
    aware = at[at["allocator"].str.startswith("sensitivity")]
    if not aware.empty:
        row = aware.loc[aware["wer"].idxmin()]
        claim = "sensitivity-aware 40% near baseline"
        verdicts.append(Verdict(claim, f"{PAPER_DENSE:.2f} -> {PAPER[claim]:.2f}",
                                f"{dense['wer']:.2f} -> {row['wer']:.2f} ({row['allocator']})", _interval(row),
                                setting, judge_near(row), RULES["near"]))
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
        intervals = "; ".join(f"[{r.delta_lo:+.2f}, {r.delta_hi:+.2f}]" for r in others.itertuples())
        sizes = "; ".join(str(int(n)) for n in others["n"])
        verdicts.append(Verdict(f"gains persist across corpora ({system})", "TED-LIUM -0.64, Common Voice -2.54",
                                ours, intervals, f"{model}, pipeline '{language}', n = {sizes}", verdict,
                                RULES["persists"]))
    return verdicts


def claims_table(summaries: Path, model: str) -> pd.DataFrame:
    """Every claim we have results for, read from a profile's summary folder."""
    verdicts: list[Verdict] = []
    sources = {"03_ablation.csv": lambda t: ablation_claims(t, model),
               "04_results.csv": lambda t: allocation_claims(t, model),
               "05_cross_dataset.csv": lambda t: cross_dataset_claim(t, model)}
    missing = []
    for name, judge in sources.items():
        path = Path(summaries) / name
        if path.exists():
            verdicts += judge(pd.read_csv(path))
        else:
            missing.append(name)
    table = pd.DataFrame([vars(v) for v in verdicts])
    table.attrs["missing"] = missing
    return table
