"""Where the project lives on disk: the repository root and the results folder."""
from __future__ import annotations

import os
from pathlib import Path

RESULTS_ENV = "PRUNELIB_RESULTS"


def project_root() -> Path:
    """The repository root when prunelib runs from a checkout, else the working directory."""
    checkout = Path(__file__).resolve().parents[1]
    return checkout if (checkout / "pyproject.toml").exists() else Path.cwd()


def results_root() -> Path:
    """Where results go: $PRUNELIB_RESULTS, else <repo>/results."""
    return Path(os.environ.get(RESULTS_ENV, project_root() / "results"))
