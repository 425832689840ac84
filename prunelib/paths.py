"""Where the project lives on disk: the repository root, the results folder, and git's view of them."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

RESULTS_ENV = "PRUNELIB_RESULTS"


def project_root() -> Path:
    """The repository root when prunelib runs from a checkout, else the working directory."""
    checkout = Path(__file__).resolve().parents[1]
    return checkout if (checkout / "pyproject.toml").exists() else Path.cwd()


def results_root() -> Path:
    """Where results go: $PRUNELIB_RESULTS, else <repo>/results."""
    return Path(os.environ.get(RESULTS_ENV, project_root() / "results"))


def run_git(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`git -C root args`, output captured as text; raises OSError where git is not installed.

    In the C locale: callers match git's messages, and a translated message would not match.
    """
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          env={**os.environ, "LC_ALL": "C"}, check=False)
