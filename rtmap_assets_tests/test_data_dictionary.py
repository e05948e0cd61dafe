"""docs/DATA_DICTIONARY.md is what scripts/data_dictionary.py makes from the marts' YAML."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_data_dictionary_is_generated_from_the_yaml():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "data_dictionary.py"), "--check"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    text = (ROOT / "docs" / "DATA_DICTIONARY.md").read_text()
    assert "| `high_volume_class` | Seed volume class at the high level: 1 inside" in text
