"""The README's results tables: rendered from the summary tables, and never out of step with the committed ones."""
from __future__ import annotations

import pandas as pd
import pytest

from prunelib import handoff, report
from prunelib.__main__ import main
from prunelib.paths import project_root


def test_the_readme_tables_are_those_of_the_committed_summaries():
    changed = report.update_readme(project_root() / "README.md", profile="default", write=False)
    assert changed == [], f"run `python -m prunelib report`: the README's {changed} tables are stale"


def test_every_table_is_in_the_readme():
    text = (project_root() / "README.md").read_text()
    assert all(f"<!-- report:{name} -->" in text for name in report.TABLES)


def ablation(rows: list[tuple[str, float, float, float, float]]) -> pd.DataFrame:
    """Notebook 03's table: (component, sparsity, wer, delta, delta_lo); delta_hi is delta + 1."""
    return pd.DataFrame([{"component": c, "requested_sparsity": s, "wer": w, "delta_wer": d, "delta_lo": lo,
                          "delta_hi": d + 1} for c, s, w, d, lo in rows])


def test_components_are_ranked_at_the_level_asked_for_only():
    table = ablation([("decoder FFN", 0.5, 14.0, 4.0, 2.5), ("decoder self-attn", 0.5, 11.0, 1.0, 0.5),
                      ("decoder self-attn", 0.7, 20.0, 10.0, 8.0), ("dense", 0.0, 10.0, 0.0, 0.0)])
    lines = report.components_table(table).splitlines()
    assert lines[0] == "| rank | group at 50% | WER | change vs dense [95%] |"
    assert lines[2:] == ["| 1 | decoder self-attn | 11.00 | +1.00 [+0.50, +2.00] |",
                         "| 2 | decoder FFN | 14.00 | +4.00 [+2.50, +5.00] |"]


def test_a_block_whose_summary_is_missing_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(handoff, "summary_folder", lambda profile: tmp_path / profile / "summary")
    monkeypatch.setattr(report, "project_root", lambda: tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- report:claims -->\nold numbers\n<!-- /report -->\nafter\n")
    assert report.update_readme(readme, profile="p") == ["claims"]
    assert readme.read_text() == ("intro\n<!-- report:claims -->\n*Not run yet: no p/summary/06_claims.csv.*\n"
                                  "<!-- /report -->\nafter\n")
    assert report.update_readme(readme, profile="p") == []


def test_check_fails_on_a_stale_table_and_changes_nothing(tmp_path, monkeypatch, capsys):
    summary = tmp_path / "p" / "summary"
    summary.mkdir(parents=True)
    pd.DataFrame([{"claim": "decoder FFN fragile", "setting": "pipeline 'en', n = 5", "paper": "fragile",
                   "ours": "4.23 -> 38.03", "interval": "[+16.66, +54.92]", "verdict": "replicated"}]).to_csv(
        summary / handoff.CLAIMS, index=False)
    monkeypatch.setattr(handoff, "summary_folder", lambda profile: tmp_path / profile / "summary")
    readme = tmp_path / "README.md"
    stale = "<!-- report:claims -->\n| claim |\n<!-- /report -->\n"
    readme.write_text(stale)
    assert main(["report", "--profile", "p", "--readme", str(readme), "--check"]) == 2
    assert "tables claims differ" in capsys.readouterr().err
    assert readme.read_text() == stale
    assert main(["report", "--profile", "p", "--readme", str(readme)]) == 0
    assert "| decoder FFN fragile | pipeline 'en', n = 5 | fragile | 4.23 -> 38.03 |" in readme.read_text()
    assert main(["report", "--profile", "p", "--readme", str(readme), "--check"]) == 0


def test_an_unknown_block_is_named():
    with pytest.raises(ValueError, match="unknown README table 'claimz'"):
        report.render("claimz")


def test_runs_table_names_each_executed_notebooks_commit_and_time(tmp_path):
    import nbformat

    folder = tmp_path / "executed" / "default-tiny"
    folder.mkdir(parents=True)
    stamped = nbformat.v4.new_notebook(metadata={
        "prunelib": {"commit": "94f936ff05b049137e2b", "modified": ["prunelib/sweep.py"], "profile": "default-tiny"},
        "papermill": {"duration": 129.2}})
    nbformat.write(stamped, folder / "01_baseline.ipynb")
    nbformat.write(nbformat.v4.new_notebook(), folder / "02_sensitivity.ipynb")
    assert report.runs_table(tmp_path).splitlines()[2:] == [
        "| `default-tiny/01_baseline.ipynb` | `94f936ff05b0` with uncommitted changes | 2 min 9 s |",
        "| `default-tiny/02_sensitivity.ipynb` | not recorded | - |"]
    assert report.runs_table(tmp_path / "empty").startswith("*Not run yet")
