"""The benchmark scripts import rtmap inside functions (child processes, environment set first), so a
moved module breaks them only when a benchmark runs. Every `from rtmap_assets… / rtmap_synth… import
name` in benchmarks/ and scripts/, at any depth, must resolve."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("scripts/*.py")])


def _rtmap_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name or None) of every rtmap import in the file, nested ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] in ("rtmap_assets", "rtmap_synth"):
            out += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, None) for alias in node.names
                    if alias.name.split(".")[0] in ("rtmap_assets", "rtmap_synth")]
    return out


def test_the_scripts_import_rtmap_at_all():
    assert sum(len(_rtmap_imports(p)) for p in SCRIPTS) > 20  # the check below has something to check


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_rtmap_import_of_a_script_resolves(path: Path):
    broken = []
    for line, module, name in _rtmap_imports(path):
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            broken.append(f"line {line}: {module}: {err}")
            continue
        if name is not None and not hasattr(mod, name):
            try:  # `from package import submodule`
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                broken.append(f"line {line}: {module} has no {name!r}")
    assert not broken, f"{path.relative_to(ROOT)}: " + "; ".join(broken)
