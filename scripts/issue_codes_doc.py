"""Write docs/ISSUE_CODES.md from rtmap_assets/issue_codes.py (the one list of issue codes).

    .venv/bin/python scripts/issue_codes_doc.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ISSUE_CODES.md"
sys.path.insert(0, str(ROOT))


def issue_codes_markdown() -> str:
    from rtmap_assets.issue_codes import MEANINGS, IssueCode

    lines = ["# Issue codes", "",
             "Every `code` a row of `pipeline_issues` can carry (stage: manifest, imaging or dosimetry), in the order",
             "the pipeline meets them. Generated from `rtmap_assets/issue_codes.py` by `scripts/issue_codes_doc.py`;",
             "rows also carry a message with what was found and, where one file is at fault, its path.", "",
             "| code | meaning |", "|---|---|"]
    lines += [f"| `{code}` | {MEANINGS[code]} |" for code in IssueCode]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    DOC.write_text(issue_codes_markdown())
    print(f"wrote {DOC}")
