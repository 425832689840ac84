"""Profiles and the notebooks runner: every profile parameter is one a notebook declares; unmet needs fail at once."""
from __future__ import annotations

import papermill
import pytest

from prunelib import hub, notebooks
from prunelib.__main__ import main

PROFILES = sorted(p.stem for p in (notebooks.project_root() / "params").glob("*.yaml"))


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_parameter_is_declared_by_its_notebook(profile):
    # papermill injects unknown names silently: a typo in a profile would be ignored without this.
    data = notebooks.load_profile(profile)
    stems = {path.stem: path for path in notebooks.notebook_paths()}
    blocks = data.get("notebooks") or {}
    assert set(blocks) <= set(stems), f"{profile}: blocks for notebooks that do not exist: {set(blocks) - set(stems)}"
    shared = set(data.get("shared") or {})
    used_shared = set()
    for stem, block in blocks.items():
        declared = set(papermill.inspect_notebook(str(stems[stem])))
        assert set(block or {}) <= declared, f"{profile}/{stem}: undeclared {sorted(set(block or {}) - declared)}"
        used_shared |= shared & declared
    assert used_shared == shared, f"{profile}: shared parameters no notebook declares: {sorted(shared - used_shared)}"


def test_unmet_profile_requirements_fail_at_once_naming_the_downloads(monkeypatch, capsys):
    monkeypatch.setattr(notebooks.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hub, "hub_reachable", lambda *args, **kwargs: False)
    ran = []
    monkeypatch.setattr(notebooks, "notebook_paths", lambda only=None: ran.append(only) or [])
    assert main(["notebooks", "--profile", "paper"]) == 2
    message = capsys.readouterr().err
    assert "CUDA GPU" in message and "openai/whisper-small" in message and "tedlium" in message
    assert ran == []  # nothing started


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(ValueError, match="known: default, default-tiny, paper, smoke, smoke-base"):
        notebooks.load_profile("nosuch")


@pytest.mark.parametrize("seconds, text", [(6632.4, "1 h 50 min 32 s"), (3600, "1 h"), (59.6, "1 min"), (0.2, "0 s")])
def test_durations_read_as_the_readme_quotes_them(seconds, text):
    assert notebooks.format_duration(seconds) == text


def test_a_profile_model_folder_is_relative_to_the_repository():
    notebook = notebooks.notebook_paths(["01"])[0]
    local = notebooks.parameters_for(notebook, "p", {"shared": {"model": "./build/whisper-base"}})
    assert local["model"] == str(notebooks.project_root() / "build" / "whisper-base")
    hub_id = notebooks.parameters_for(notebook, "p", {"shared": {"model": "openai/whisper-base"}})
    assert hub_id["model"] == "openai/whisper-base"  # hub ids are left alone
