"""Notebook 07's cross-size table: exact levels only, missing sizes named, the paper's numbers only at its levels."""
from __future__ import annotations

import os

import pandas as pd
import pytest

from prunelib import handoff, plots, readings, report, sizes


def _ablation(changes: dict[tuple[str, float], tuple[float, float, float]], language: str = "en") -> pd.DataFrame:
    rows = [{"component": "dense", "spec": "dense", "requested_sparsity": 0.0, "language": language, "n": 50,
             "wer": 10.0, "delta_wer": 0.0, "delta_lo": 0.0, "delta_hi": 0.0}]
    rows += [{"component": group, "spec": f"{group}={level}", "requested_sparsity": level, "language": language,
              "n": 50, "wer": 10.0 + d, "delta_wer": d, "delta_lo": lo, "delta_hi": hi}
             for (group, level), (d, lo, hi) in changes.items()]
    return pd.DataFrame(rows)


def _allocations(rows: list[tuple[str, float, float]]) -> pd.DataFrame:
    table = [{"allocator": "dense", "target": 0.0, "spec": "dense", "n": 40, "wer": 10.0, "delta_wer": 0.0,
              "delta_lo": 0.0, "delta_hi": 0.0},
             # the paper's fixed table has no target and is never the best *matched* allocation
             {"allocator": "paper", "target": None, "spec": "p", "n": 40, "wer": 9.0, "delta_wer": -1.0,
              "delta_lo": -2.0, "delta_hi": 0.0}]
    table += [{"allocator": name, "target": target, "spec": name, "n": 40, "wer": 10.0 + d, "delta_wer": d,
               "delta_lo": d - 1, "delta_hi": d + 1} for name, target, d in rows]
    return pd.DataFrame(table)


@pytest.fixture
def two_sizes(tmp_path, monkeypatch):
    monkeypatch.setattr(sizes, "project_root", lambda: tmp_path)
    monkeypatch.setattr(handoff, "project_root", lambda: tmp_path)
    models = {"small": "m/tiny", "big": "m/base"}
    monkeypatch.setattr(sizes, "profile_model", lambda profile: models.get(profile, "m/other"))
    for profile in ("small", "big"):
        (tmp_path / "results" / profile / "summary").mkdir(parents=True)
    small = tmp_path / "results" / "small" / "summary"
    handoff.write_summary(small, handoff.ABLATION, _ablation({
        ("decoder self-attn", 0.5): (4.0, 2.0, 6.0), ("decoder self-attn", 0.3): (1.0, 0.0, 2.0),
        ("decoder FFN", 0.5): (3.0, 1.0, 5.0), ("encoder last 4 layers", 0.3): (9.0, 8.0, 10.0)}))
    handoff.write_summary(small, handoff.ALLOCATION_RESULTS, _allocations([("wanda", 0.4, 5.0), ("owl", 0.4, 3.0),
                                                                          ("owl", 0.5, -9.0)]))
    handoff.write_summary(tmp_path / "results" / "big" / "summary", handoff.ABLATION, _ablation({
        ("decoder self-attn", 0.5): (-1.0, -3.0, 1.0), ("decoder FFN", 0.5): (20.0, 15.0, 25.0)}))
    return ["small", "big"]


def test_effects_are_read_at_their_exact_level_and_gaps_are_named(two_sizes):
    table = sizes.size_table(two_sizes).set_index(["profile", "effect"])
    assert table.loc[("small", "decoder self-attn 50%"), "delta_wer"] == 4.0  # not the 30% row
    # 30% exists for the literal group, 50% does not: nothing is borrowed from another level
    assert table.loc[("small", "encoder last 4 layers (literal) 50%"), "status"].startswith("not in 03_ablation.csv")
    assert table.loc[("small", "best matched allocation 40%"), ["method", "delta_wer"]].tolist() == ["owl", 3.0]
    assert table.loc[("big", "best matched allocation 40%"), "status"].startswith("not run: no results/big/summary")
    assert table.loc[("big", "decoder FFN 50%"), "here"] == "higher WER (interval above 0)"


def test_the_paper_change_is_given_only_at_the_papers_levels(two_sizes):
    at_paper = sizes.size_table(two_sizes).set_index(["profile", "effect"])
    assert at_paper.loc[("small", "decoder self-attn 50%"), "paper_change"] == pytest.approx(9.26 - 11.64)
    assert at_paper.loc[("small", "best matched allocation 40%"), "paper_change"] == pytest.approx(11.84 - 11.64)
    assert pd.isna(at_paper.loc[("small", "decoder FFN 50%"), "paper_change"])  # fragile, without a number
    elsewhere = sizes.size_table(two_sizes, sparsity=0.3, target=0.5).set_index(["profile", "effect"])
    assert elsewhere.loc[("small", "decoder self-attn 30%"), "delta_wer"] == 1.0
    assert elsewhere["paper_change"].isna().all()
    assert elsewhere.loc[("small", "best matched allocation 50%"), "delta_wer"] == -9.0


def test_the_reading_says_which_way_each_effect_moves_and_whether_the_sizes_differ(two_sizes, tmp_path):
    table = sizes.size_table(two_sizes)
    lines = {line.split(":")[0][2:]: line for line in readings.sizes(table)}
    # +40% of dense on tiny to -10% on base: towards the paper's -20.4%, and the intervals are apart
    line = lines["decoder self-attn 50%"]
    assert "goes from +4.00 to -1.00, towards the paper's relative change; the two intervals do not overlap" in line
    assert "-20.4% of its dense WER" in line
    assert "the paper gives no number" in lines["decoder FFN 50%"]
    assert "a trend needs two sizes" in lines["best matched allocation 40%"]
    assert "not measured yet" in lines["encoder late third (size-relative) 50%"]
    figure = plots.plot_size_trend(table, sizes.PAPER_MODEL, tmp_path / "trend.png")
    assert figure.stat().st_size > 0


def test_a_sign_flip_and_a_missing_interval_are_said_as_such(two_sizes):
    table = sizes.size_table(two_sizes, sparsity=0.3).set_index(["profile", "effect"])
    table.loc[("big", "decoder self-attn 30%"), ["status", "delta_wer", "delta_lo", "delta_hi", "relative_change",
                                                 "model"]] = ["measured", -1.0, float("nan"), float("nan"), -10.0,
                                                              "m/base"]
    line = next(x for x in readings.sizes(table.reset_index()) if x.startswith("- decoder self-attn 30%"))
    assert "goes from +1.00 to -1.00: the sign flips" in line
    assert "[no interval]" in line and "cannot be told apart" in line


def test_sizes_out_of_order_are_refused():
    sizes.check_order(["openai/whisper-tiny.en", "./build/whisper-base", "openai/whisper-small", "my/own-model"])
    with pytest.raises(ValueError, match="smallest model first"):
        sizes.check_order(["openai/whisper-base", "openai/whisper-tiny.en"])


def test_the_model_is_read_from_notebook_01_when_it_ran(tmp_path, monkeypatch):
    monkeypatch.setattr(handoff, "project_root", lambda: tmp_path)
    folder = tmp_path / "results" / "smoke" / "summary"
    folder.mkdir(parents=True)
    pd.DataFrame([{"model": "/abs/whisper-base", "dataset": "x:test"}]).to_csv(folder / handoff.BASELINE, index=False)
    assert sizes.profile_model("smoke") == "/abs/whisper-base"
    assert sizes.profile_model("default-tiny") == "openai/whisper-tiny.en"  # not run here: its params file


def test_literal_and_size_relative_late_layers_coincide_only_for_whisper_small():
    groups = sizes.late_groups().set_index("size")
    assert groups.loc["tiny", ["last 4 layers", "late third"]].tolist() == ["0-3", "3"]
    assert groups.loc["base", ["last 4 layers", "late third"]].tolist() == ["2-5", "4-5"]
    assert groups["same layers"].to_dict() == {"tiny": False, "base": False, "small": True, "medium": False,
                                               "large": False}


def test_nothing_measured_still_gives_every_column(tmp_path, monkeypatch):
    monkeypatch.setattr(sizes, "project_root", lambda: tmp_path)
    monkeypatch.setattr(handoff, "project_root", lambda: tmp_path)
    table = sizes.size_table(["default-tiny"])
    assert set(sizes.MEASURED_COLUMNS) <= set(table.columns) and table["delta_wer"].isna().all()
    assert table["status"].str.startswith("not run").all()
    plots.plot_size_trend(table, sizes.PAPER_MODEL, tmp_path / "empty.png")


def test_a_claims_table_per_size_carries_the_model(two_sizes):
    verdicts = sizes.size_claims([*two_sizes, "default-tiny"])
    assert set(verdicts["model"]) == {"m/tiny", "m/base"}
    assert "default-tiny: 03_ablation.csv" in verdicts.attrs["missing"]  # a profile not run is named
    assert (verdicts.groupby("model")["claim"].apply(lambda c: "decoder FFN fragile" in set(c))).all()



def test_each_row_names_the_run_that_wrote_it_and_an_unstamped_one_is_flagged(two_sizes, tmp_path, stamp_executed):
    ablations = handoff.SOURCE_NOTEBOOKS[handoff.ABLATION]
    allocations = handoff.SOURCE_NOTEBOOKS[handoff.ALLOCATION_RESULTS]
    stamp_executed(tmp_path, "small", ablations, "a" * 40)
    stamp_executed(tmp_path, "small", allocations, "b" * 40, modified=["prunelib/sweep.py"])
    stamp_executed(tmp_path, "big", ablations, None)  # an executed notebook from before the stamps
    table = sizes.size_table(two_sizes).set_index(["profile", "effect"])
    assert table.loc[("small", "decoder FFN 50%"), "run"] == "a" * 12
    assert table.loc[("small", "best matched allocation 40%"), "run"] == "b" * 12 + " with uncommitted changes"
    assert table.loc[("big", "decoder FFN 50%"), "run"] == handoff.NOT_RECORDED
    line = next(x for x in readings.sizes(table.reset_index()) if "more than one run" in x)
    assert f"big's 03: {handoff.NOT_RECORDED}" in line and "small's 03: aaaaaaaaaaaa" in line
    assert "an earlier run's" in line
    rendered = report.sizes_table(table.reset_index()).splitlines()
    assert rendered[0].endswith("| run |") and any(f"| {handoff.NOT_RECORDED} |" in row for row in rendered[2:])


def test_rows_of_one_recorded_run_need_no_word_on_runs(two_sizes, tmp_path, stamp_executed):
    for profile in two_sizes:
        for notebook in handoff.SOURCE_NOTEBOOKS.values():
            stamp_executed(tmp_path, profile, notebook, "c" * 40)
    assert not [line for line in readings.sizes(sizes.size_table(two_sizes)) if "more than one run" in line]


def test_a_table_rewritten_after_its_notebook_was_published_is_not_credited_to_that_run(two_sizes, tmp_path,
                                                                                        stamp_executed):
    stamp_executed(tmp_path, "small", handoff.SOURCE_NOTEBOOKS[handoff.ABLATION], "d" * 40)
    small = tmp_path / "results" / "small" / "summary"
    assert handoff.source_run(small, handoff.ABLATION) == "d" * 12
    table = tmp_path / "results" / "small" / "summary" / handoff.ABLATION
    later = table.stat().st_mtime + handoff.REWRITTEN_AFTER_S + 60
    os.utime(table, (later, later))  # the notebook run again by hand: the stamp is the earlier run's
    assert handoff.source_run(small, handoff.ABLATION) == handoff.NOT_RECORDED
