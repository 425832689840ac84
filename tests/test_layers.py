"""The package's imports point one way: data and models, transcription and scoring, pruning methods, the study."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prunelib"

# The layering the README's Layout section describes; a module may import its own layer and those above it here.
LAYERS = {
    "data, models and the prune mechanism": ["paths", "results", "hub", "audio", "corpora", "components", "ct2",
                                             "encoder_cache", "attention", "models", "pruning"],
    "transcription and scoring": ["distributed", "transcribe", "scoring", "analysis", "evaluate"],
    "pruning methods": ["calibration", "gradients", "sparsegpt", "sensitivity", "reliability", "allocation", "export"],
    "the study": ["handoff", "sweep", "claims", "readings", "plots", "notebooks", "sizes", "publish",
                  "book", "report", "compare", "__main__", "__init__"],
}
LEVEL = {module: level for level, modules in enumerate(LAYERS.values()) for module in modules}


def _imported_modules(path: Path) -> set[str]:
    """The prunelib modules a file imports, at any depth of the file (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prunelib"):
            if node.module == "prunelib":  # from prunelib import sensitivity, ...
                found |= {alias.name for alias in node.names}
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".", 1)[1] if "." in alias.name else "<package>"
                      for alias in node.names if alias.name.startswith("prunelib")}
    return found


def test_every_module_has_a_layer():
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    assert modules == set(LEVEL), f"place these in LAYERS (and the README): {sorted(modules ^ set(LEVEL))}"


@pytest.mark.parametrize("module", sorted(LEVEL))
def test_imports_point_one_way(module):
    imported = _imported_modules(PACKAGE / f"{module}.py")
    assert "<package>" not in imported, f"{module} imports the prunelib package itself (a cycle)"
    upward = sorted(name for name in imported if LEVEL[name] > LEVEL[module])
    assert not upward, f"{module} ({list(LAYERS)[LEVEL[module]]}) imports the later layer's {upward}"


def test_the_layer_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from prunelib.sweep import run_sweep\n    import prunelib\n")
    assert _imported_modules(bad) == {"sweep", "<package>"}
