"""Make an executed notebook fit to commit: no paths of this machine, no run-time noise, no widget state."""
from __future__ import annotations

import html
import logging
import os
import re
from pathlib import Path

import nbformat

from prunelib.corpora import DATA_ENV
from prunelib.paths import project_root, run_git
from prunelib.results import write_text_atomic

log = logging.getLogger(__name__)

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# A repository browser renders notebooks up to a few MB; the study's are a few hundred kB.
SIZE_LIMIT_BYTES = 2_000_000
# Per-cell clocks change on every run and say nothing about the study.
_RUN_CLOCKS = ("execution", "papermill")
_NOTEBOOK_CLOCKS = ("start_time", "end_time")
# What decides a result: a run records whether any of these differed from the commit it ran at.
RESULT_INPUTS = ("prunelib", "notebooks", "params", "pyproject.toml", "constraints.txt")
PROVENANCE_KEY = "prunelib"  # the executed notebook's metadata entry holding its source_revision()


def source_revision(root: Path | None = None) -> dict:
    """The commit the study's code is at and its result inputs with uncommitted changes ({"commit": None} outside git).

    A study run over several sessions is one reference run only if every notebook ran at commits whose
    inputs agree; the executed notebooks carry this record so that anyone can check.
    """
    root = Path(root) if root is not None else project_root()

    def git(*args: str) -> str | None:
        try:
            done = run_git(root, *args)
        except OSError:  # no git on this machine
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "modified": []}
    status = git("status", "--porcelain", "--untracked-files=no", "--", *RESULT_INPUTS) or ""
    return {"commit": commit.strip(), "modified": sorted(line[3:] for line in status.splitlines() if line.strip())}


def read_provenance(metadata: dict) -> dict:
    """An executed notebook's stamp as readers see it: commit (12 characters), profile, modified, seconds.

    `commit` and `seconds` are None where the notebook recorded none.
    """
    stamp = metadata.get(PROVENANCE_KEY) or {}
    return {"commit": stamp["commit"][:12] if stamp.get("commit") else None, "profile": stamp.get("profile"),
            "modified": list(stamp.get("modified") or []),
            "seconds": (metadata.get("papermill") or {}).get("duration") or None}


def machine_paths() -> dict[str, str]:
    """This machine's absolute paths and the placeholders that replace them, longest first."""
    root = project_root()
    paths = {str(root): "<repo>", str(root.parent): "<repo>/..", str(Path.home()): "~"}
    if os.environ.get(DATA_ENV):
        paths[str(Path(os.environ[DATA_ENV]).resolve())] = f"${DATA_ENV}"
    return dict(sorted(((p, name) for p, name in paths.items() if p != "/"), key=lambda item: -len(item[0])))


def _replace_paths(value: object, paths: dict[str, str]) -> object:
    """`value` with every machine path in its strings replaced, recursing into lists and dicts."""
    if isinstance(value, str):
        for path, placeholder in paths.items():
            # Whole path components only: /work must not match inside /workspace.
            value = re.sub(re.escape(path) + r"(?![\w.-])", lambda _, text=placeholder: text, value)
        return value
    if isinstance(value, list):
        return [_replace_paths(item, paths) for item in value]
    if isinstance(value, dict):
        return type(value)((key, _replace_paths(item, paths)) for key, item in value.items())
    return value


def _terminal_text(text: str) -> str:
    """What a terminal would show: in each line, only its last redraw (the text after a carriage return)."""
    kept = []
    for line in text.split("\n"):
        redraws = [part for part in line.split("\r") if part]
        if redraws or "\r" not in line:  # a blank line that was printed stays
            kept.append(redraws[-1] if redraws else "")
    return "\n".join(kept)


def _progress_text(output: dict, widget_state: dict) -> str | None:
    """A tqdm progress widget's final state as the line tqdm prints in a terminal; None for other widgets."""
    model = widget_state.get(output["data"][WIDGET_VIEW].get("model_id"), {})
    if model.get("model_name") != "HBoxModel":
        return None
    children = [widget_state.get(ref.removeprefix("IPY_MODEL_"), {}) for ref in model["state"].get("children", [])]
    if [child.get("model_name") for child in children] != ["HTMLModel", "FloatProgressModel", "HTMLModel"]:
        return None
    left, bar, right = (child["state"] for child in children)
    fraction = min(max(bar.get("value", 0) / bar["max"], 0), 1) if bar.get("max") else 0
    filled = round(10 * fraction)

    def text(part: dict) -> str:
        return html.unescape(part.get("value", "")).replace("\u2007", " ")  # tqdm pads with figure spaces

    return f"{text(left)}|{'█' * filled}{' ' * (10 - filled)}|{text(right)}\n"


def _clean_outputs(outputs: list, widget_state: dict) -> list:
    """Progress widgets as their final line, consecutive streams of one name merged, progress redraws collapsed."""
    cleaned: list = []
    for output in outputs:
        if output.get("output_type") in ("display_data", "execute_result") and WIDGET_VIEW in output.get("data", {}):
            line = _progress_text(output, widget_state)
            if line is None:
                continue
            output = nbformat.v4.new_output("stream", name="stderr", text=line)
        if output.get("output_type") == "stream":
            if cleaned and cleaned[-1].get("output_type") == "stream" and cleaned[-1]["name"] == output["name"]:
                cleaned[-1]["text"] += output["text"]
                continue
        cleaned.append(output)
    for output in cleaned:
        if output.get("output_type") == "stream":
            output["text"] = _terminal_text(output["text"])
    return [output for output in cleaned if output.get("output_type") != "stream" or output["text"].strip()]


def clean_notebook(notebook: nbformat.NotebookNode, paths: dict[str, str] | None = None) -> nbformat.NotebookNode:
    """A copy of an executed notebook without machine paths, per-cell clocks, widget state or progress redraws."""
    notebook = nbformat.from_dict(_replace_paths(notebook, machine_paths() if paths is None else paths))
    widgets = notebook.metadata.pop("widgets", {})
    widget_state = widgets.get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    for name in _NOTEBOOK_CLOCKS:
        notebook.metadata.get("papermill", {}).pop(name, None)
    for cell in notebook.cells:
        for name in _RUN_CLOCKS:
            cell.metadata.pop(name, None)
        if cell.cell_type == "code":
            cell.outputs = _clean_outputs(cell.outputs, widget_state)
    return notebook


def publish_notebook(executed: Path, destination: Path, provenance: dict | None = None) -> Path:
    """Write a cleaned copy of `executed` to `destination` atomically, stamped with `provenance` when given.

    Warns when the notebook is too big for a repository browser.
    """
    paths = machine_paths()
    notebook = clean_notebook(nbformat.read(executed, as_version=4), paths)
    if provenance is not None:
        notebook.metadata[PROVENANCE_KEY] = provenance
    if "papermill" in notebook.metadata:
        notebook.metadata.papermill["output_path"] = _replace_paths(str(Path(destination).resolve()), paths)
    text = nbformat.writes(notebook) + "\n"
    size = len(text.encode())
    if size > SIZE_LIMIT_BYTES:
        log.warning("%s is %.1f MB, over the %.1f MB a repository browser renders well",
                    destination, size / 1e6, SIZE_LIMIT_BYTES / 1e6)
    return write_text_atomic(destination, text)
