"""The import graph of the rtmap packages, folder to folder, and the one rule it must keep.

Domain folders (the science and its storage: dicom, imaging, dosimetry, figures, pipeline, lake and the
top-level config/naming/errors/issue_codes modules) never import the orchestration (defs, cli,
definitions, deploy): the science runs and is tested without Dagster. Nor do they import the synthetic
generator (rtmap_synth): production code never depends on test data.

    .venv/bin/python scripts/import_graph.py          # prints the edges; exit 1 if the rule is broken
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rtmap_assets", "rtmap_synth")
ORCHESTRATION = {"rtmap_assets.defs", "rtmap_assets.cli", "rtmap_assets.definitions", "rtmap_assets.deploy"}
# Synthetic data lives beside the product: only the CLI (`rtmap synth`) and the orchestration's
# evaluation checks (which run only where ground truth exists) may reach it.
SYNTHETIC = {"rtmap_synth", "rtmap_assets.synth"}


def folder_of(module: str) -> str:
    """`rtmap_assets.dicom.catalog` -> `rtmap_assets.dicom`; top-level modules stay themselves."""
    parts = module.split(".")
    if parts[0] != "rtmap_assets":
        return parts[0]  # rtmap_synth is one folder
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return {m for m in out if m.split(".")[0] in PACKAGES}


def edges() -> Counter:
    counts: Counter = Counter()
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            src = folder_of(module_name(path))
            for target in imports_of(path):
                dst = folder_of(target)
                if dst != src:
                    counts[(src, dst)] += 1
    return counts


def violations(counts: Counter) -> list[tuple[str, str]]:
    """(source, target) folder pairs that break a rule."""
    bad = [(s, d) for (s, d) in counts if d in ORCHESTRATION and s not in ORCHESTRATION]
    bad += [(s, d) for (s, d) in counts if d in SYNTHETIC and s not in ORCHESTRATION | SYNTHETIC]
    return sorted(bad)


def main() -> int:
    counts = edges()
    for (src, dst), n in sorted(counts.items()):
        print(f"{src:32s} -> {dst:32s} {n}")
    bad = violations(counts)
    for src, dst in bad:
        print(f"RULE BROKEN: {src} imports {dst}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
