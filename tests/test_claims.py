"""Verdict rules of the claims table, on hand-made results rows."""
from __future__ import annotations

import pandas as pd
import pytest

from prunelib import claims, handoff, readings


def _row(wer: float, lo: float, hi: float, delta: float | None = None) -> pd.Series:
    return pd.Series({"wer": wer, "delta_wer": delta if delta is not None else (lo + hi) / 2,
                      "delta_lo": lo, "delta_hi": hi})


@pytest.mark.parametrize("lo, hi, expected", [
    (-3.0, -0.5, "replicated"),          # a clear gain
    (0.2, 2.0, "not replicated"),        # a clear loss
    (-0.8, 0.6, "not replicated"),       # no gain, and the paper's -2.0 point gain is ruled out
    (-2.6, 0.4, "inconclusive at this n"),  # could be the paper's gain, could be nothing
])
def test_improves(lo, hi, expected):
    # dense 10 here: the paper's 11.64 -> 9.26 scales to a 2.04 point gain
    assert claims.judge_improves(_row(10.0, lo, hi), dense_wer=10.0, paper_after=9.26) == expected


def test_worse_collapse_near():
    assert claims.judge_worse(_row(15, 1.0, 9.0)) == "replicated"
    assert claims.judge_worse(_row(10, -1.0, 1.0)) == "inconclusive at this n"
    assert claims.judge_collapse(_row(61.0, 40.0, 60.0), dense_wer=11.6) == "replicated"
    assert claims.judge_collapse(_row(12.0, -0.5, 0.8), dense_wer=11.6) == "not replicated"
    # A clear loss that the interval keeps below a doubling is no collapse; one that may double is open.
    assert claims.judge_collapse(_row(15.0, 4.5, 5.5), dense_wer=10.0) == "not replicated"
    assert claims.judge_collapse(_row(15.0, 1.0, 12.0), dense_wer=10.0) == "inconclusive at this n"
    assert claims.judge_near(_row(11.8, -0.4, 0.7)) == "replicated"
    assert claims.judge_near(_row(14.0, 1.5, 4.0)) == "not replicated"
    assert claims.judge_near(_row(12.5, -0.2, 2.0)) == "inconclusive at this n"


def test_claims_table_reads_ablation_and_reports_missing(tmp_path):
    rows = [
        {"component": "dense", "spec": "dense", "requested_sparsity": 0.0, "language": "en", "n": 50, "wer": 10.0,
         "delta_wer": 0.0, "delta_lo": 0.0, "delta_hi": 0.0},
        {"component": "decoder FFN", "spec": "decoder.ffn=0.5", "requested_sparsity": 0.5, "language": "en", "n": 50,
         "wer": 30.0, "delta_wer": 20.0, "delta_lo": 12.0, "delta_hi": 28.0},
        {"component": "decoder self-attn", "spec": "decoder.self_attn=0.5", "requested_sparsity": 0.5, "language": "en",
         "n": 50, "wer": 9.0, "delta_wer": -1.0, "delta_lo": -1.8, "delta_hi": -0.2},
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "03_ablation.csv", index=False)
    table = claims.claims_table(tmp_path, "tiny")
    verdicts = dict(zip(table["claim"], table["verdict"], strict=True))
    assert verdicts == {"decoder FFN fragile": "replicated", "decoder self-attn 50% improves": "replicated"}
    # "fragile" is put beside the rest of the sweep: of the two pruned groups (itself included) none hurts more
    assert (
        table.set_index("claim").loc["decoder FFN fragile", "ours"]
        == "10.00 -> 30.00 at 50% (0 of 2 swept groups hurt more)"
    )
    assert table.attrs["missing"] == ["04_results.csv", "05_cross_dataset.csv"]


def test_each_verdict_names_the_run_of_its_table(tmp_path, monkeypatch, stamp_executed):
    monkeypatch.setattr(handoff, "project_root", lambda: tmp_path)
    summaries = tmp_path / "results" / "p" / "summary"
    summaries.mkdir(parents=True)
    pd.DataFrame([{"component": "dense", "spec": "dense", "requested_sparsity": 0.0, "language": "en", "n": 50,
                   "wer": 10.0, "delta_wer": 0.0, "delta_lo": 0.0, "delta_hi": 0.0},
                  {"component": "decoder FFN", "spec": "decoder.ffn=0.5", "requested_sparsity": 0.5, "language": "en",
                   "n": 50, "wer": 30.0, "delta_wer": 20.0, "delta_lo": 12.0, "delta_hi": 28.0}]
                 ).to_csv(summaries / handoff.ABLATION, index=False)
    table = claims.claims_table(summaries, "tiny")
    assert table[["notebook", "run"]].drop_duplicates().values.tolist() == [["03", handoff.NOT_RECORDED]]
    assert any("one run (notebook 03: not recorded)" in line for line in readings.verdicts(table, "tiny"))
    stamp_executed(tmp_path, "p", handoff.SOURCE_NOTEBOOKS[handoff.ABLATION], "e" * 40)
    table = claims.claims_table(summaries, "tiny")
    assert set(table["run"]) == {"e" * 12}
    assert not any("The rows come from" in line for line in readings.verdicts(table, "tiny"))


def test_hurt_more_counts_only_groups_at_the_same_sparsity():
    table = pd.DataFrame([
        {"component": "dense", "spec": "dense", "requested_sparsity": 0.0, "delta_wer": 0.0},
        {"component": "decoder FFN", "spec": "decoder.ffn=0.5", "requested_sparsity": 0.5, "delta_wer": 4.0},
        {"component": "encoder FFN", "spec": "encoder.ffn=0.5", "requested_sparsity": 0.5, "delta_wer": 30.0},
        {"component": "conv", "spec": "encoder.conv=0.5", "requested_sparsity": 0.5, "delta_wer": -0.1},
        {"component": "encoder FFN", "spec": "encoder.ffn=0.7", "requested_sparsity": 0.7, "delta_wer": 90.0},
    ])
    assert claims.hurt_more(table, table.iloc[1]) == "1 of 3 swept groups hurt more"
    assert claims.hurt_more(table, table.iloc[2]) == "0 of 3 swept groups hurt more"


@pytest.mark.parametrize("others, expected", [
    ([(-3.0, -0.5), (-2.0, -0.1)], "replicated"),              # a gain on every other corpus
    ([(-3.0, -0.5), (0.4, 2.0)], "not replicated"),             # a loss on one of them
    ([(-3.0, -0.5), (-1.0, 1.0)], "inconclusive at this n"),    # one interval spans zero
])
def test_gains_persist_across_corpora(others, expected):
    system = "decoder self-attn 50%"
    rows = [{"system": system, "dataset": "librispeech", "language": "en", "n": 125,
             "delta_wer": -1.0, "delta_lo": -2.0, "delta_hi": -0.1}]
    rows += [{"system": system, "dataset": f"corpus{i}", "language": "en", "n": 100,
              "delta_wer": (lo + hi) / 2, "delta_lo": lo, "delta_hi": hi} for i, (lo, hi) in enumerate(others)]
    rows.append({**rows[1], "system": "other system", "delta_lo": 5.0, "delta_hi": 9.0})  # judged apart
    verdicts = claims.cross_dataset_claim(pd.DataFrame(rows), "tiny", system)
    assert [v.verdict for v in verdicts] == [expected]
    assert verdicts[0].ours.endswith("(on librispeech: -1.00)")  # the source corpus is shown, not judged
    assert (verdicts[0].model, verdicts[0].setting) == ("tiny", "pipeline 'en', n = 100; 100")


def _allocation_rows(points: list[tuple[float, float]], name: str = "global") -> list[dict]:
    return [{"allocator": name, "target": s / 100, "sparsity_linear": s, "delta_wer": d} for s, d in points]


def test_crossing_interpolates_from_dense_and_reports_beyond_the_grid():
    block = pd.DataFrame(_allocation_rows([(10, 0.5), (20, 1.5), (30, 6.0)]))
    assert claims.crossing(block, 1.0) == pytest.approx(15.0)  # halfway from +0.5 at 10% to +1.5 at 20%
    assert claims.crossing(block, 5.0) == pytest.approx(20 + 10 * 3.5 / 4.5)
    assert claims.crossing(block, 0.25) == pytest.approx(5.0)  # from dense (0%, +0) to the first grid point
    assert claims.crossing(block, 10.0) is None


def test_crossings_skip_dense_and_the_paper_table_and_name_both_levels():
    table = pd.DataFrame([{"allocator": "dense", "target": 0.0, "sparsity_linear": 0.0, "delta_wer": 0.0},
                          *_allocation_rows([(20, 2.0), (10, 0.0)], "uniform"),  # unsorted on purpose
                          {"allocator": "paper", "target": None, "sparsity_linear": 44.0, "delta_wer": 9.0}])
    crossings = claims.crossings(table)
    assert list(crossings.columns) == ["allocator", "+1 point at", "+5 points at"]
    assert crossings["allocator"].tolist() == ["uniform"]
    assert crossings.iloc[0]["+1 point at"] == pytest.approx(15.0)
    assert crossings.iloc[0]["+5 points at"] is None


@pytest.mark.parametrize("lo, hi, side", [(-2, -0.1, "lower WER"), (0.1, 2, "higher WER"), (-1, 1, "no detectable")])
def test_interval_side(lo, hi, side):
    assert claims.interval_side(_row(10, lo, hi)).startswith(side)


def test_headline_components_must_be_swept():
    from prunelib import sweep

    with pytest.raises(ValueError, match=r"headline components \['decoder FFN'\] are not among the swept"):
        sweep.run_ablations(None, None, {"decoder self-attn": "decoder.self_attn"}, [0.5], ["en", "auto"],
                            ["decoder self-attn", "decoder FFN"], None, summaries=None)


def test_notebook_04_reading_and_the_verdict_table_use_one_collapse_rule():
    # 3 -> 7 WER with an interval above 0: "doubles and above 0" holds, though it is not +10 points.
    rows = [{"allocator": "dense", "target": 0.0, "spec": "dense", "importance": "magnitude", "n": 40, "wer": 3.0,
             "wer_lo": 2.0, "wer_hi": 4.0, "delta_wer": 0.0, "delta_lo": 0.0, "delta_hi": 0.0,
             "sparsity_linear": 0.0, "sparsity_weights": 0.0},
            {"allocator": "global+embed", "target": 0.4, "spec": "global+embed=0.5", "importance": "magnitude", "n": 40,
             "wer": 7.0, "wer_lo": 5.0, "wer_hi": 9.0, "delta_wer": 4.0, "delta_lo": 2.5, "delta_hi": 5.5,
             "sparsity_linear": 40.0, "sparsity_weights": 50.0},
            {"allocator": "sensitivity-fisher", "target": 0.4, "spec": "x", "importance": "magnitude", "n": 40,
             "wer": 3.5, "wer_lo": 2.5, "wer_hi": 4.5, "delta_wer": 0.5, "delta_lo": -0.2, "delta_hi": 0.9,
             "sparsity_linear": 40.0, "sparsity_weights": 20.0}]
    table = pd.DataFrame(rows)
    verdicts = {v.claim: v.verdict for v in claims.allocation_claims(table, "tiny")}
    assert verdicts == {"global 40% collapses": "replicated", "sensitivity-aware 40% near baseline": "replicated",
                        claims.BEST_ANY: "replicated"}
    at_target = pd.DataFrame([{"allocator": r["allocator"], "wer": r["wer"]} for r in rows[1:]])
    text = "\n".join(readings.allocations(table, at_target, claims.crossings(table), 0.4, "toy:test"))
    assert "global+embed at 40%: WER 7.00" in text and "-> collapse replicated" in text
    assert "sensitivity-fisher at 40.0% of linear weights" in text and "-> near baseline replicated" in text
    assert "Lowest WER at the 40% target among matched allocators: sensitivity-fisher (3.50)" in text


def test_the_best_method_of_any_kind_is_judged_beside_the_sensitivity_aware_claim():
    base = {"importance": "magnitude", "n": 40, "wer_lo": 0.0, "wer_hi": 0.0, "spec": "x"}
    table = pd.DataFrame([{**base, "allocator": "dense", "target": 0.0, "wer": 10.0, "delta_wer": 0.0, "delta_lo": 0.0,
                           "delta_hi": 0.0},
                          {**base, "allocator": "sensitivity-fisher", "target": 0.4, "wer": 30.0, "delta_wer": 20.0,
                           "delta_lo": 15.0, "delta_hi": 25.0},
                          {**base, "allocator": "sparsegpt", "target": 0.4, "wer": 10.5, "delta_wer": 0.5,
                           "delta_lo": -0.3, "delta_hi": 0.8},
                          {**base, "allocator": "paper", "target": None, "wer": 9.0, "delta_wer": -1.0,
                           "delta_lo": -2.0, "delta_hi": -0.1}])
    verdicts = {v.claim: v for v in claims.allocation_claims(table, "tiny")}
    assert verdicts["sensitivity-aware 40% near baseline"].verdict == "not replicated"
    # the allocation from measured damage is sensitivity-aware too, and here the better one
    empirical = {**base, "allocator": "empirical", "target": 0.4, "wer": 12.0, "delta_wer": 2.0, "delta_lo": 1.2,
                 "delta_hi": 2.8}
    aware = {v.claim: v for v in claims.allocation_claims(pd.concat([table, pd.DataFrame([empirical])]), "tiny")}
    assert "(empirical)" in aware["sensitivity-aware 40% near baseline"].ours
    best = verdicts[claims.BEST_ANY]
    assert best.verdict == "replicated" and "(sparsegpt)" in best.ours and best.paper == "not claimed"


def test_row_at_takes_only_the_level_asked_for():
    import pandas as pd

    from prunelib.claims import nearest_row, row_at

    table = pd.DataFrame({"component": ["decoder FFN", "decoder FFN"], "requested_sparsity": [0.3, 0.7],
                          "wer": [12.0, 40.0]})
    assert row_at(table, "decoder FFN", 0.5) is None
    assert row_at(table, "decoder FFN", 0.7)["wer"] == 40.0
    assert nearest_row(table, "decoder FFN", 0.4)["requested_sparsity"] == 0.3  # 06 names the level it used
