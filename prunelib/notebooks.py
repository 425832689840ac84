"""Run the numbered notebooks with a profile's parameters, and check those parameters."""
from __future__ import annotations

import logging
import os
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from prunelib.allocation import ALLOCATORS
from prunelib.calibration import LABELS
from prunelib.corpora import DATA_ENV, parse_corpus_name
from prunelib.handoff import summary_folder
from prunelib.paths import project_root

log = logging.getLogger(__name__)

RUNNING = "running"  # executed/<profile>/running/: notebooks papermill is writing (git-ignored)


def load_profile(profile: str) -> dict:
    """Read params/<profile>.yaml: `shared` parameters plus per-notebook `notebooks` overrides."""
    path = project_root() / "params" / f"{profile}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (project_root() / "params").glob("*.yaml"))
        raise ValueError(f"unknown profile {profile!r}: no {path} (known: {', '.join(known)})")
    profile_data = yaml.safe_load(path.read_text()) or {}
    unknown = set(profile_data) - {"description", "shared", "notebooks", "requires"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}")
    return profile_data


def notebook_paths(only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks in order, optionally only those whose names start with `only`."""
    paths = sorted((project_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if any(p.name.startswith(prefix) for prefix in only)]
        if not paths:
            raise ValueError(f"no notebook matches {only}")
    return paths


def parameters_for(notebook: Path, profile: str, profile_data: dict) -> dict:
    """The profile's parameters that this notebook declares in its `parameters` cell."""
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    wanted = {**(profile_data.get("shared") or {}), **((profile_data.get("notebooks") or {}).get(notebook.stem) or {})}
    wanted["profile"] = profile
    model = wanted.get("model")
    if isinstance(model, str) and model.startswith(("./", "../")):
        # A profile's folders are relative to the repository (as data_root is), not to notebooks/ where kernels run.
        wanted["model"] = str((project_root() / model).resolve())
    return {name: value for name, value in wanted.items() if name in declared}


def run_notebooks(profile: str, only: list[str] | None = None, kernel: str | None = None) -> list[Path]:
    """Execute the numbered notebooks in order into executed/<profile>/ with papermill."""
    import papermill

    from prunelib.publish import publish_notebook, source_revision  # nbformat takes seconds to import

    profile_data = load_profile(profile)
    check_requirements(profile, profile_data.get("requires") or {})
    out_dir = project_root() / "executed" / profile
    # papermill saves after every cell: a run in progress (or one that failed) stays in running/,
    # and the last complete notebook in out_dir is replaced only once the new one has finished.
    running = out_dir / RUNNING
    running.mkdir(parents=True, exist_ok=True)
    # Taken before anything runs: a commit made while the notebooks run must not be credited with them.
    provenance = {**source_revision(), "profile": profile}
    if provenance["modified"]:
        log.warning("uncommitted changes to %s: the executed notebooks will record them",
                    ", ".join(provenance["modified"]))
    executed = []
    for notebook in notebook_paths(only):
        parameters = parameters_for(notebook, profile, profile_data)
        in_progress = running / notebook.name
        log.info("running %s with %s", notebook.name, parameters)
        started = time.perf_counter()
        papermill.execute_notebook(
            str(notebook), str(in_progress), parameters=parameters, cwd=str(notebook.parent),
            kernel_name=kernel or "python3", progress_bar=True, log_output=False,
        )
        log.info("%s finished in %s", notebook.name, format_duration(time.perf_counter() - started))
        executed.append(publish_notebook(in_progress, out_dir / notebook.name, provenance))
        in_progress.unlink()
    if not any(running.iterdir()):
        running.rmdir()
    return executed


def format_duration(seconds: float) -> str:
    """'1 h 50 min 32 s' style, as the README quotes run times."""
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return (
        " ".join(f"{value} {unit}" for value, unit in ((hours, "h"), (minutes, "min"), (secs, "s")) if value) or "0 s"
    )


class ProfileRequirementError(RuntimeError):
    """A profile needs something this machine lacks (a GPU, the hub)."""


def check_requirements(profile: str, requires: dict) -> None:
    """Fail at once, naming what is missing, when a profile needs a GPU or the hub."""
    from prunelib.hub import hub_reachable

    missing = []
    if requires.get("gpu") and not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
    if requires.get("hub") and not hub_reachable():
        downloads = ", ".join(requires.get("downloads", []))
        missing.append(f"the Hugging Face hub, to download: {downloads}")
    if missing:
        raise ProfileRequirementError(
            f"profile {profile!r} needs "
            + " and ".join(missing)
            + "; nothing was run (point data_root in the profile at local copies to skip downloads)"
        )


def resolve_data_root(data_root: str | None) -> Path | None:
    """$PRUNELIB_DATA when set, else `data_root` (relative to the repository), else None."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    if data_root is None:
        return None
    path = Path(data_root)
    return path if path.is_absolute() else (project_root() / path).resolve()


def output_dirs(profile: str, figures_dir: str | None = None) -> tuple[Path, Path]:
    """(figures, summary tables) folders of a profile; created if missing.

    Figures of the smoke profile go under results/smoke/figures so that test runs never
    overwrite the committed figures/ of the default run.
    """
    root = project_root()
    figures = root / figures_dir if figures_dir else root / "results" / profile / "figures"
    summary = summary_folder(profile)
    figures.mkdir(parents=True, exist_ok=True)
    summary.mkdir(parents=True, exist_ok=True)
    return figures, summary


_TYPES = {
    "model": str, "dataset": str, "profile": str, "data_root": (str, type(None)),
    "limit": (int, type(None)), "languages": list, "batch_size": int, "n_boot": int, "seed": int,
    "figures_dir": (str, type(None)),
    "sparsities": list, "components": (list, type(None)), "headline": list,
    "headline_sparsities": (list, type(None)),
    "datasets": list, "systems": dict, "allocation_target": float,
    # 02_sensitivity
    "calibration_speakers": int, "calibration_sizes": list, "calibration_seeds": list, "label_choices": list,
    "cross_domain_dataset": (str, type(None)), "cross_domain_limit": (int, type(None)), "stability_threshold": float,
    # 04_global_vs_sensitivity_aware
    "targets": list, "allocators": list, "seeds": list, "cap": float, "sensitivity_labels": str,
    "owl_lambda": float, "owl_outlier": float, "curve_sparsities": list,
    # 07_model_sizes
    "profiles": list, "sparsity": float, "target": float,
}
_CHOICES = {"label_choices": LABELS, "allocators": ALLOCATORS}


def check_parameters(**parameters) -> None:
    """Validate notebook parameters (papermill injects whatever it is given, typed or not)."""
    for name, value in parameters.items():
        expected = _TYPES.get(name)
        if expected is not None and (not isinstance(value, expected) or isinstance(value, bool)):
            raise TypeError(f"parameter {name}={value!r} should be {expected}")
    for name in [parameters.get("dataset"), *parameters.get("datasets", [])]:
        if name is not None:
            parse_corpus_name(name)
    for language in parameters.get("languages", []):
        if language != "auto" and not (isinstance(language, str) and language.isalpha()):
            raise ValueError(f"languages must be 'auto' or codes like 'en', got {language!r}")
    single = [parameters[name] for name in ("sparsity",) if name in parameters]
    for sparsity in [*parameters.get("sparsities", []), *parameters.get("curve_sparsities", []), *single]:
        if not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
            raise ValueError(f"sparsities must lie in [0, 1), got {sparsity!r}")
    for target in [*parameters.get("targets", []), *([parameters["target"]] if "target" in parameters else [])]:
        if not isinstance(target, (int, float)) or not 0 < target < 1:
            raise ValueError(f"targets must lie in (0, 1), got {target!r}")
    for name, known in _CHOICES.items():
        unknown = set(parameters.get(name, [])) - set(known)
        if unknown:
            raise ValueError(f"{name} must come from {known}, got {sorted(unknown)}")
    for profile in parameters.get("profiles", []):
        load_profile(profile)  # names the known profiles when one is unknown
    if parameters.get("limit") is not None and parameters["limit"] < 1:
        raise ValueError(f"limit must be positive or None, got {parameters['limit']}")


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch once, after the parameters cell."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def versions() -> dict[str, str]:
    """Versions of Python and the packages whose behaviour changes results."""
    from importlib.metadata import version

    packages = ["torch", "transformers", "datasets", "jiwer", "whisper-normalizer", "prunelib"]
    found = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": str(torch.get_num_threads()),
    }
    for package in packages:
        try:
            found[package] = version(package)
        except Exception:  # not installed as a distribution (e.g. run from a bare checkout)
            found[package] = "not installed"
    return found
