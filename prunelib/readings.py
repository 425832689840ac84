"""The sentences each notebook ends with, written from its tables by the rules in `claims`."""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from prunelib import claims
from prunelib.allocation import SENSITIVITY_AWARE
from prunelib.corpora import Corpus
from prunelib.handoff import NOT_RECORDED
from prunelib.models import LoadedModel
from prunelib.sweep import best_allocator, target_miss


def model_line(loaded: LoadedModel) -> str:
    """Size, language coverage and source of a loaded model."""
    size = sum(p.numel() for p in loaded.model.parameters()) / 1e6
    line = f"{loaded.name}: {size:.1f} M parameters, multilingual={loaded.is_multilingual}, loaded from {loaded.source}"
    if not loaded.is_multilingual:
        line += ("\nEnglish-only: it has no language or task tokens, so the paper's 'auto' pipeline decodes exactly "
                 "as 'en' does ('en' alone is enough for it)")
    return line


# ---- 01 ------------------------------------------------------------------------------------


def baseline(table: pd.DataFrame, difference: dict | None) -> list[str]:
    """Notebook 01: dense WER per pipeline, its errors, and whether the pipelines differ."""
    lines = [f"- {row.model}, pipeline '{row.language}': WER {row.wer:.2f} % (95% interval {row.wer_ci95[0]:.2f} to "
             f"{row.wer_ci95[1]:.2f}, resampling {row.ci_unit}s, n = {row.n}); CER {row.cer:.2f} %; errors are "
             f"{row.sub_rate:.1f} substitutions, {row.del_rate:.1f} deletions and {row.ins_rate:.1f} insertions "
             "per 100 words." for row in table.itertuples()]
    if difference is not None:
        low, high = difference["ci95"]
        verdict = "excludes" if low > 0 or high < 0 else "includes"
        lines.append(f"- The paper's pipeline differs from the standard one by {difference['diff']:+.2f} points; "
                     f"the paired interval {verdict} zero.")
    return lines


# ---- 02 ------------------------------------------------------------------------------------


def split_summary(corpus: Corpus, pool: Corpus, held_out: Corpus, long_ids: Sequence[str]) -> list[str]:
    """Notebook 02: how the corpus was split, and which pool utterances cannot calibrate."""
    by_speaker = all(u.speaker is not None for u in corpus.utterances)
    lines = [f"{corpus.name}: {len(corpus)} utterances; split by "
             + ("speaker" if by_speaker else "utterance (no speakers known)")]
    if by_speaker:
        lines.append(
            f"calibration pool: {len(pool)} utterances from speakers {sorted({u.speaker for u in pool.utterances})}"
        )
        lines.append(f"held out for evaluation: {len(held_out)} utterances from "
                     f"{len({u.speaker for u in held_out.utterances})} other speakers")
    else:
        lines += [f"calibration pool: {len(pool)} utterances", f"held out for evaluation: {len(held_out)} utterances"]
    lines.append("calibration utterances: " + ", ".join(u.id for u in pool.utterances))
    lines.append("over 30 s, held out but not used: " + (", ".join(long_ids) or "none"))
    return lines


def sensitivity(main: pd.DataFrame, dataset: str, n_held_out: int, n_passes: int, groups: pd.DataFrame,
                ranked: dict[str, list[str]], paper: pd.DataFrame, method_agreement: pd.DataFrame,
                agreements: Sequence[dict], stable: pd.DataFrame, threshold: float, by_size: pd.DataFrame) -> list[str]:
    """Notebook 02: group order, extreme components, the paper's readings, and how stable the rankings are.

    `main` is the run the readings are about (one labels choice and seed, the whole pool).
    """
    pool_size = int(main["size"].max())
    lines = [f"- Calibration: {pool_size} utterances of {dataset} ({main['labels'].iloc[0]} labels), disjoint from the "
             f"{n_held_out} evaluation utterances; {n_passes} per-sample backward passes in all."]
    overall = groups[groups["third"] == "all"]
    for method in ("fisher", "gradient"):
        order = " > ".join(overall.sort_values(method, ascending=False)["group"])
        lines += [f"- By {method}, groups from most to least sensitive: {order}.",
                  f"  Most sensitive components: {', '.join(ranked[method][:5])}.",
                  f"  Least sensitive components: {', '.join(ranked[method][::-1][:5])}."]
    for _, row in paper[paper["method"].isin(["fisher", "gradient", "obd"])].iterrows():
        lines.append(
            f"- Paper: {row['paper']}. {row['method']}: {row['group']} scores {row['score / linear mean']:.2f}x "
            f"the mean prunable weight -> {'agrees' if row['agrees'] else 'disagrees'}."
        )
    lines.append(f"- Agreement between scores over components (Spearman): gradient vs fisher = "
                 f"{method_agreement.loc['gradient', 'fisher']:.2f}, fisher vs obd = "
                 f"{method_agreement.loc['fisher', 'obd']:.2f}, gradient vs taylor = "
                 f"{method_agreement.loc['gradient', 'taylor']:.2f}.")
    lines += [f"- {row['comparison']} ({row['method']}): Spearman {row['spearman']:.2f}." for row in agreements]
    column = next(c for c in stable.columns if c.startswith("stable from"))
    for _, row in stable.iterrows():
        where = f"from n = {row[column]}" if pd.notna(row[column]) else f"at no size below the pool of {pool_size}"
        lines.append(f"- {row['labels']} labels, {row['method']}: ranking within rho >= {threshold} of the whole pool "
                     f"{where}.")
    lines.append(
        "- Mean over prunable components as the calibration set grows (gradient shrinks with n, Fisher should not):"
    )
    lines.append(by_size.to_string(float_format=lambda v: f"{v:.3g}"))
    return lines


# ---- 03 ------------------------------------------------------------------------------------


def ablation(table: pd.DataFrame) -> list[str]:
    """Notebook 03, one pipeline: dense WER, the groups from robust to fragile nearest 50%, the real gains."""
    dense = table[table["spec"] == "dense"].iloc[0]
    pruned = table[table["spec"] != "dense"]
    distance = (pruned["requested_sparsity"] - 0.5).abs()
    at_half = pruned[distance == distance.min()]
    lines = [f"Dense WER under '{dense['language']}': {dense['wer']:.2f} (95% interval {dense['wer_lo']:.2f} to "
             f"{dense['wer_hi']:.2f}, n = {int(dense['n'])}).",
             f"At sparsity {at_half['requested_sparsity'].iloc[0]:.0%}, from most robust to most fragile:"]
    lines += [f"  {row.component:26s} {row.delta_wer:+7.2f} points  {claims.interval_text(row.delta_lo, row.delta_hi)}"
              for row in at_half.sort_values("delta_wer").itertuples()]
    gains = claims.gains(table)
    lines.append(f"Settings whose paired interval lies below zero (a real gain at this n): {len(gains)}"
                 + ("" if gains.empty else ": " + ", ".join(gains["spec"])))
    return lines


# ---- 04 ------------------------------------------------------------------------------------


def crossing_text(value: float | None, first_point: float) -> str:
    """A crossing point as text; between 0 and the first grid point the interpolation says nothing measured."""
    if value is None or pd.isna(value):
        return "beyond the grid"
    return f"below {first_point:.0f}% (first grid point)" if value < first_point else f"{value:.1f}%"


def allocations(table: pd.DataFrame, at_target: pd.DataFrame, crossings: pd.DataFrame, target: float,
                dataset: str) -> list[str]:
    """Notebook 04: collapse and "near baseline" by the claims' rules, the best allocator, the crossing points."""
    dense = table[table["allocator"] == "dense"].iloc[0]
    rows = table[(table["target"] - target).abs() < 1e-9].set_index("allocator")
    paper = table[table["allocator"] == "paper"].set_index("allocator")
    lines = [
        f"Evaluation: {int(dense['n'])} held-out utterances of {dataset}; dense WER {dense['wer']:.2f} "
        f"[{dense['wer_lo']:.2f}, {dense['wer_hi']:.2f}].",
        f"All matched allocators within {target_miss(table):.3f} percentage points of their target "
        "over the linear weights.",
        f"Collapse: {claims.RULES['collapses']}. Near: {claims.RULES['near']}.",
    ]
    for name in [n for n in ("global+embed", "global") if n in rows.index]:
        row = rows.loc[name]
        lines.append(f"- {name} at {target:.0%}: WER {row['wer']:.2f} ({row['delta_wer']:+.2f} points "
                     f"{claims.interval_text(row['delta_lo'], row['delta_hi'])}) -> collapse "
                     f"{claims.judge_collapse(row, dense['wer'])}; {row['sparsity_weights']:.1f}% of all weights zero.")
    aware = pd.concat([rows[rows.index.isin(SENSITIVITY_AWARE)], paper])
    for name, row in aware.iterrows():
        lines.append(f"- {name} at {row['sparsity_linear']:.1f}% of linear weights: WER {row['wer']:.2f} "
                     f"({row['delta_wer']:+.2f} points {claims.interval_text(row['delta_lo'], row['delta_hi'])}) "
                     f"-> near baseline {claims.judge_near(row)}")
    best = best_allocator(at_target)
    lines.append(f"- Lowest WER at the {target:.0%} target among matched allocators: {best} "
                 f"({rows.loc[best, 'wer']:.2f}).")
    first_point = claims.matched_rows(table)["sparsity_linear"].min()
    lines.append("- Sparsity (over linear weights) where the WER change first reaches +1 / +5 points "
                 "(linear interpolation):")
    lines += [f"    {entry['allocator']:22s} +1: {crossing_text(entry['+1 point at'], first_point)}   "
              f"+5: {crossing_text(entry['+5 points at'], first_point)}" for entry in crossings.to_dict("records")]
    return lines


# ---- 05 and 06 -----------------------------------------------------------------------------


def cross_dataset(table: pd.DataFrame) -> list[str]:
    """Notebook 05: each system's change per corpus, and where one utterance alone flips its sign."""
    lines = []
    for (language, system), part in table[table["system"] != "dense"].groupby(["language", "system"], sort=False):
        changes = ", ".join(f"{r.dataset} {r.delta_wer:+.2f} {claims.interval_text(r.delta_lo, r.delta_hi)}"
                            for r in part.itertuples())
        lines.append(f"- '{language}', {system}: {changes}")
        for r in part[part["delta_wer"] * part["delta_without_top"] < 0].itertuples():
            lines.append(f"    {r.dataset}: utterance {r.top_utterance} alone carries {r.top_points:+.2f} points; "
                         f"without it the change is {r.delta_without_top:+.2f}")
    return lines


def runs(table: pd.DataFrame) -> list[str]:
    """Notebooks 06, 07: a line naming the runs behind a table's rows, unless all are one recorded run.

    `table` has `notebook` and `run` columns (`handoff.source_run`), and `profile` where it spans profiles.
    """
    if "run" not in table or not len(table):
        return []
    keys = [key for key in ("profile", "notebook") if key in table]
    found = table.dropna(subset=["run"]).groupby(keys, sort=False)["run"].first()
    if found.nunique() <= 1 and NOT_RECORDED not in set(found):
        return []
    # keys are (profile, notebook) or notebook alone
    named = "; ".join(f"{key[0]}'s {key[1]}: {run}" if isinstance(key, tuple) else f"notebook {key}: {run}"
                      for key, run in found.items())
    line = f"- The rows come from {'more than one run' if found.nunique() > 1 else 'one run'} ({named})."
    if NOT_RECORDED in set(found):
        line += (f" No stamped notebook in executed/ vouches for a '{NOT_RECORDED}' table (an earlier run's, or one "
                 "rewritten since by hand): its rows are that run's numbers, which this code may no longer give.")
    return [line]


def verdicts(table: pd.DataFrame, model: str) -> list[str]:
    """Notebook 06: the count of each verdict, the runs behind them where they differ, then one line per claim."""
    counts = table["verdict"].value_counts().to_dict() if len(table) else {}
    lines = [f"{len(table)} verdicts on {model}: " + ", ".join(f"{n} {v}" for v, n in counts.items())]
    lines += runs(table)
    lines += [f"- {row.claim} ({row.setting}): paper {row.paper}; here {row.ours}, interval {row.interval} "
              f"-> {row.verdict}" for row in table.itertuples()]
    return lines


# ---- 07 ------------------------------------------------------------------------------------


def sizes(table: pd.DataFrame) -> list[str]:
    """Notebook 07: per effect, its change from the smallest to the largest size measured, against the paper's.

    "Towards the paper" compares changes relative to each model's own dense WER (as notebook 06's
    rule does), since the sizes start from different dense WERs; the paper decoded with language
    detection, these sizes with English forced.
    """
    lines = []
    datasets = sorted(set(table["dataset"].dropna()))
    if len(datasets) > 1:
        lines.append(f"- The sizes were measured on different data ({', '.join(datasets)}): their intervals "
                     "do not come from the same utterances.")
    lines += runs(table[table["status"] == "measured"])
    for effect, rows in table.groupby("effect", sort=False):
        measured = rows[rows["status"] == "measured"]
        paper = rows["paper_relative"].dropna()
        paper_text = (f"the paper's whisper-small: {rows['paper_change'].dropna().iloc[0]:+.2f}, "
                      f"{paper.iloc[0]:+.1f}% of its dense WER" if len(paper)
                      else "the paper gives no number at this level")
        points = "; ".join(f"{r.model} {r.delta_wer:+.2f} {claims.interval_text(r.delta_lo, r.delta_hi)}"
                           + (f", {r.relative_change:+.1f}%" if pd.notna(r.relative_change) else ", dense WER 0")
                           + (f" ({r.method})" if r.kind == "allocation" else "") for r in measured.itertuples())
        if len(measured) < 2:
            lines.append(f"- {effect}: {points or 'not measured yet'} ({paper_text}); a trend needs two sizes.")
            continue
        first, last = measured.iloc[0], measured.iloc[-1]
        trend = (f"from {first['model']} to {last['model']} it goes from {first['delta_wer']:+.2f} "
                 f"to {last['delta_wer']:+.2f}")
        if len(paper) and pd.isna([first["relative_change"], last["relative_change"]]).any():
            trend += "; a dense WER of 0 has no relative change to set beside the paper's"
        elif len(paper):
            closer = abs(last["relative_change"] - paper.iloc[0]) < abs(first["relative_change"] - paper.iloc[0])
            trend += ", towards the paper's relative change" if closer else ", not towards the paper's relative change"
        elif first["delta_wer"] * last["delta_wer"] < 0:
            trend += ": the sign flips"
        if pd.isna([first["delta_lo"], first["delta_hi"], last["delta_lo"], last["delta_hi"]]).any():
            trend += "; one of them has no interval, so at this n the sizes cannot be told apart"
        elif first["delta_lo"] <= last["delta_hi"] and last["delta_lo"] <= first["delta_hi"]:
            trend += "; the two intervals overlap, so at this n the sizes do not differ measurably"
        else:
            trend += "; the two intervals do not overlap"
        lines.append(f"- {effect}: {points} ({paper_text}); {trend}.")
    return lines
