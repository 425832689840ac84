"""Executed notebooks as committed: no machine paths, clocks, widgets or progress redraws; the last good run kept."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import nbformat
import pytest

from prunelib import notebooks, publish

PATHS = {"/home/alice/prunelib": "<repo>", "/home/alice": "<repo>/.."}


def executed_notebook() -> nbformat.NotebookNode:
    """A notebook as papermill leaves it: clocks, a progress widget, redrawn bars, machine paths."""
    cell = nbformat.v4.new_code_cell("run()")
    cell.metadata["papermill"] = {"duration": 1.5, "start_time": "2026-12-01T00:00:00", "status": "completed"}
    cell.metadata["execution"] = {"iopub.status.busy": "2026-12-01T00:00:00Z"}
    cell.metadata["tags"] = ["keep"]
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={
            publish.WIDGET_VIEW: {"model_id": "bar", "version_major": 2, "version_minor": 0},
            "text/plain": "  0%|          | 0/4"}),
        nbformat.v4.new_output("display_data", data={
            publish.WIDGET_VIEW: {"model_id": "slider", "version_major": 2, "version_minor": 0},
            "text/plain": "IntSlider(value=3)"}),
        nbformat.v4.new_output("stream", name="stderr", text="\r  0%|  | 0/2"),
        nbformat.v4.new_output("stream", name="stderr", text="\r 50%|# | 1/2\r100%|##| 2/2\n"),
        nbformat.v4.new_output("stream", name="stdout", text="read /home/alice/prunelib/results/x.csv\n\n"),
        nbformat.v4.new_output("stream", name="stdout", text="data in /home/alice/data, not /home/alicey\n"),
    ]
    notebook = nbformat.v4.new_notebook(cells=[cell])
    # tqdm's widget as nbclient saves it at the end of the run: an HBox of text, bar, text.
    state = {
        "bar": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"]}},
        "l": {"model_name": "HTMLModel", "state": {"value": "sweep (en):\u2007 50%"}},
        "p": {"model_name": "FloatProgressModel", "state": {"value": 2.0, "max": 4.0}},
        "r": {"model_name": "HTMLModel", "state": {"value": "\u20072/4\u2007[00:03&lt;00:03]"}},
        "slider": {"model_name": "IntSliderModel", "state": {"value": 3}},
    }
    notebook.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": state}}
    notebook.metadata["papermill"] = {"start_time": "t0", "end_time": "t1", "duration": 12.0,
                                      "input_path": "/home/alice/prunelib/notebooks/01.ipynb"}
    return notebook


def test_clean_notebook_drops_run_time_noise_and_machine_paths():
    cleaned = publish.clean_notebook(executed_notebook(), PATHS)
    cell = cleaned.cells[0]
    assert set(cell.metadata) == {"tags"}
    assert "widgets" not in cleaned.metadata
    assert cleaned.metadata.papermill == {"duration": 12.0, "input_path": "<repo>/notebooks/01.ipynb"}
    # The progress widget becomes its final line (tqdm's own text); a widget of another kind is dropped.
    assert [output["output_type"] for output in cell.outputs] == ["stream", "stream"]
    assert cell.outputs[0] == {"output_type": "stream", "name": "stderr",
                               "text": "sweep (en):  50%|█████     | 2/4 [00:03<00:03]\n100%|##| 2/2\n"}
    # Whole path components only: /home/alicey is another user's folder.
    # A blank line the notebook printed stays.
    assert cell.outputs[1]["text"] == "read <repo>/results/x.csv\n\ndata in <repo>/../data, not /home/alicey\n"
    nbformat.validate(cleaned)


def test_clean_notebook_leaves_the_executed_notebook_alone():
    notebook = executed_notebook()
    publish.clean_notebook(notebook, PATHS)
    assert "widgets" in notebook.metadata and len(notebook.cells[0].outputs) == 6


def test_publish_notebook_writes_a_valid_notebook_with_the_final_path(tmp_path, monkeypatch):
    monkeypatch.setattr(publish, "project_root", lambda: tmp_path)
    executed = tmp_path / "executed" / "p" / "running" / "01.ipynb"
    executed.parent.mkdir(parents=True)
    notebook = executed_notebook()
    notebook.metadata.papermill["output_path"] = str(executed)
    nbformat.write(notebook, executed)
    written = publish.publish_notebook(executed, tmp_path / "executed" / "p" / "01.ipynb")
    result = nbformat.read(written, as_version=4)
    assert result.metadata.papermill["output_path"] == "<repo>/executed/p/01.ipynb"
    assert str(tmp_path) not in written.read_text()


def test_publish_notebook_stamps_the_commit_it_ran_at(tmp_path):
    executed = tmp_path / "01.ipynb"
    nbformat.write(executed_notebook(), executed)
    stamp = {"commit": "abc123", "modified": [], "profile": "p"}
    written = publish.publish_notebook(executed, tmp_path / "out.ipynb", stamp)
    assert nbformat.read(written, as_version=4).metadata[publish.PROVENANCE_KEY] == stamp


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout


def test_source_revision_names_the_commit_and_the_result_inputs_changed_since(tmp_path):
    assert publish.source_revision(tmp_path) == {"commit": None, "modified": []}  # not a repository
    git(tmp_path, "init", "-q")
    (tmp_path / "prunelib").mkdir()
    (tmp_path / "prunelib" / "x.py").write_text("A = 1\n")
    (tmp_path / "README.md").write_text("text\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = git(tmp_path, "rev-parse", "HEAD").strip()
    assert publish.source_revision(tmp_path) == {"commit": head, "modified": []}
    (tmp_path / "README.md").write_text("other prose\n")  # not an input of any result
    (tmp_path / "prunelib" / "new.py").write_text("")  # untracked: never imported by a committed notebook
    assert publish.source_revision(tmp_path)["modified"] == []
    (tmp_path / "prunelib" / "x.py").write_text("A = 2\n")
    assert publish.source_revision(tmp_path) == {"commit": head, "modified": ["prunelib/x.py"]}


def test_a_failed_run_keeps_the_last_complete_notebook(tmp_path, monkeypatch):
    """papermill writes into running/; the committed notebook is replaced only after a run finishes."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "p.yaml").write_text("shared: {}\n")
    parameters = nbformat.v4.new_code_cell("profile = 'x'", metadata={"tags": ["parameters"]})
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    source = nbformat.v4.new_notebook(cells=[parameters], metadata={"kernelspec": kernel})
    nbformat.write(source, tmp_path / "notebooks" / "01_a.ipynb")
    committed = tmp_path / "executed" / "p" / "01_a.ipynb"
    committed.parent.mkdir(parents=True)
    committed.write_text("the last complete run\n")
    monkeypatch.setattr(notebooks, "project_root", lambda: tmp_path)
    monkeypatch.setattr(notebooks, "check_requirements", lambda profile, requires: None)
    monkeypatch.setattr(publish, "source_revision", lambda: {"commit": "abc123", "modified": []})

    def failing_run(source, output, **kwargs):
        nbformat.write(nbformat.v4.new_notebook(), output)
        raise RuntimeError("cell 3 failed")

    import papermill
    monkeypatch.setattr(papermill, "execute_notebook", failing_run)
    with pytest.raises(RuntimeError, match="cell 3"):
        notebooks.run_notebooks("p")
    assert committed.read_text() == "the last complete run\n"
    assert (committed.parent / notebooks.RUNNING / "01_a.ipynb").exists()

    def good_run(source, output, **kwargs):
        nbformat.write(executed_notebook(), output)

    monkeypatch.setattr(papermill, "execute_notebook", good_run)
    monkeypatch.setattr(publish, "project_root", lambda: tmp_path)
    assert notebooks.run_notebooks("p") == [committed]
    published = nbformat.read(committed, as_version=4).metadata
    assert "widgets" not in published
    assert published[publish.PROVENANCE_KEY] == {"commit": "abc123", "modified": [], "profile": "p"}
    assert not (committed.parent / notebooks.RUNNING).exists()


REPO = Path(__file__).resolve().parents[1]
COMMITTED = sorted((REPO / "executed").glob("default*/[0-9][0-9]_*.ipynb"))
# Absolute paths that would name a user or a machine; <repo>, ~ and $PRUNELIB_DATA replace them.
PRIVATE_PATH = re.compile(r"(?<![\w.<>~$-])/(?:home|Users|root|work|tmp|mnt|scratch)/")


@pytest.mark.parametrize("path", COMMITTED, ids=[f"{p.parent.name}/{p.name}" for p in COMMITTED])
def test_committed_executed_notebooks_are_complete_clean_and_small(path):
    text = path.read_text(encoding="utf-8")
    assert len(text.encode()) < publish.SIZE_LIMIT_BYTES
    notebook = nbformat.reads(text, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.papermill["exception"] is None
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count is not None for cell in code), "a cell did not run"
    assert not any(output.get("output_type") == "error" for cell in code for output in cell.outputs)
    assert "widgets" not in notebook.metadata and publish.WIDGET_VIEW not in text
    stamp = notebook.metadata.get(publish.PROVENANCE_KEY, {})
    assert stamp.get("commit"), "no record of the commit it ran at: rerun it with `prunelib notebooks`"
    assert stamp["modified"] == [], f"ran with uncommitted changes to {stamp['modified']}"
    assert stamp["profile"] == path.parent.name
    assert not PRIVATE_PATH.search(text) and not any(p in text for p in publish.machine_paths())
