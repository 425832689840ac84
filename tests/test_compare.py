"""What moved between a committed version of the summary tables and a rerun's."""
from __future__ import annotations

import subprocess

import pandas as pd
import pytest

from prunelib import compare, handoff
from prunelib.__main__ import main


def git(root, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


@pytest.fixture
def repository(tmp_path, monkeypatch):
    """A git repository whose profile `p` has one committed summary table, then rerun."""
    summary = tmp_path / "results" / "p" / "summary"
    summary.mkdir(parents=True)
    before = pd.DataFrame({"allocator": ["dense", "wanda", "owl"], "target": [0.0, 0.4, 0.4],
                           "wer": [10.0, 14.32, 14.38], "rtfx": [3.0, 3.1, 3.2]})
    before.to_csv(summary / handoff.ALLOCATION_RESULTS, index=False)
    (summary / handoff.AT_TARGET).write_text("allocator,wer\nwanda,14.32\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "-c", "user.email=a@b", "-c", "user.name=a", "add", ".")
    git(tmp_path, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "first run")
    after = pd.DataFrame({"allocator": ["dense", "owl", "sparsegpt", "wanda"], "target": [0.0, 0.4, 0.4, 0.4],
                          "wer": [10.0, 14.38, 12.46, 14.20], "rtfx": [9.0, 9.1, 9.2, 9.3]})
    after.to_csv(summary / handoff.ALLOCATION_RESULTS, index=False)
    (summary / handoff.CROSSINGS).write_text("allocator,+1 point at\nwanda,30.6\n")
    (summary / handoff.AT_TARGET).unlink()  # a table the rerun did not write
    monkeypatch.setattr(compare, "project_root", lambda: tmp_path)
    monkeypatch.setattr(handoff, "summary_folder", lambda profile: tmp_path / "results" / profile / "summary")
    return tmp_path


def test_rows_are_matched_by_their_key_not_their_position(repository):
    found = compare.compare_profile("p", "HEAD")
    results = found[handoff.ALLOCATION_RESULTS]
    moved = results[results["column"] == "wer"]
    assert moved[["row", "before", "after"]].values.tolist() == [["wanda, 0.4", 14.32, 14.2]]
    assert moved["change"].round(2).tolist() == [-0.12]
    assert results[results["after"] == "added"]["row"].tolist() == ["sparsegpt, 0.4"]
    assert found[handoff.CROSSINGS]["before"].tolist() == ["absent"]  # a table the revision did not have
    assert found[handoff.AT_TARGET][["before", "after"]].values.tolist() == [["present", "absent"]]  # one it lost


def test_the_description_separates_speeds_from_results(repository):
    lines = compare.describe(compare.compare_profile("p", "HEAD"))
    assert lines[2] == ("04_results.csv: 2 cells or rows differ; largest WER move -0.12 points "
                        "(wanda, 0.4: wer 14.32 -> 14.20) (3 speed cells differ too: run-to-run timing, not results)")


def test_the_command_writes_every_change_and_names_a_bad_revision(repository, tmp_path, capsys):
    out = tmp_path / "changes.csv"
    assert main(["compare", "--profile", "p", "--since", "HEAD", "--out", str(out)]) == 0
    assert set(pd.read_csv(out)["table"]) == {handoff.ALLOCATION_RESULTS, handoff.CROSSINGS, handoff.AT_TARGET}
    assert main(["compare", "--profile", "p", "--since", "no-such-revision"]) == 2
    assert "no-such-revision" in capsys.readouterr().err


def test_rows_with_the_same_key_are_all_compared():
    before = pd.DataFrame({"allocator": ["random", "random"], "target": [0.4, 0.4], "wer": [100.0, 90.0]})
    after = pd.DataFrame({"allocator": ["random", "random"], "target": [0.4, 0.4], "wer": [100.0, 95.0]})
    found = compare.changes(handoff.ALLOCATION_RESULTS, before, after)
    assert found[["row", "before", "after"]].values.tolist() == [["random, 0.4 (#2)", 90.0, 95.0]]
