"""Every "rule N" the code and docs cite resolves to a numbered section of docs/RULES.md, which lives in
the repository (someone who clones rtmap alone can read every rule)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("rtmap_assets", "rtmap_synth", "dbt_models", "docs", "benchmarks", "scripts")


def _sources() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in FOLDERS:
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".md", ".sql", ".yml", ".yaml"}
                  and "target" not in p.parts]
    return files


def test_every_rule_reference_resolves_to_docs_rules():
    numbers = {int(n) for n in re.findall(r"^## (\d+)\. ", (ROOT / "docs" / "RULES.md").read_text(), re.M)}
    assert numbers == set(range(1, 18))
    cited: dict[int, list[str]] = {}
    outside = []
    for path in _sources():
        text = path.read_text(errors="replace")
        for m in re.finditer(r"\brules? (\d+)(?:\s*[–-]\s*(\d+))?", text):
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            for n in range(lo, hi + 1):
                cited.setdefault(n, []).append(str(path.relative_to(ROOT)))
        if "DESIGN.md" in text:
            outside.append(str(path.relative_to(ROOT)))
    assert len(cited) >= 15  # the code really cites the rules
    unresolved = {n: where for n, where in cited.items() if n not in numbers}
    assert not unresolved, f"rule numbers with no section in docs/RULES.md: {unresolved}"
    assert not outside, f"files pointing at DESIGN.md (outside the repository) instead of docs/RULES.md: {outside}"
