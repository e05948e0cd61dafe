"""One list of issue codes: every code the package raises or records is an `IssueCode` with a meaning,
none is built at run time from pieces, and docs/ISSUE_CODES.md lists them all."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from rtmap_assets.issue_codes import MEANINGS, IssueCode

ROOT = Path(__file__).resolve().parents[1]
CODES = {c.value for c in IssueCode}


def _code_arguments() -> list[tuple[str, ast.expr]]:
    """(where, expression) of every code handed to PatientDataError / `_issue`, or written as a row's "code"."""
    out: list[tuple[str, ast.expr]] = []
    for path in sorted((ROOT / "rtmap_assets").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call):
                fn = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                if fn == "PatientDataError" and node.args:
                    out.append((where, node.args[0]))
                elif fn == "_issue" and len(node.args) > 1:
                    out.append((where, node.args[1]))
            elif isinstance(node, ast.Dict):
                out += [(where, v) for k, v in zip(node.keys, node.values)
                        if isinstance(k, ast.Constant) and k.value == "code"]
    return out


def test_every_code_in_the_package_is_listed_with_a_meaning():
    args = _code_arguments()
    assert len(args) > 50  # the scan really finds the package's codes
    unknown, built = [], []
    for where, expr in args:
        for node in ast.walk(expr):
            if isinstance(node, ast.JoinedStr):
                built.append(f"{where} {ast.unparse(expr)}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.upper() not in CODES:
                unknown.append(f"{where} {node.value}")
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "IssueCode"
                  and node.attr not in IssueCode.__members__):
                unknown.append(f"{where} IssueCode.{node.attr}")
    assert not built, f"codes built from pieces at run time: {built}"
    assert not unknown, f"codes missing from rtmap_assets.issue_codes.IssueCode: {unknown}"
    assert set(MEANINGS) == set(IssueCode)


def test_issue_codes_doc_is_current():
    spec = importlib.util.spec_from_file_location("issue_codes_doc", ROOT / "scripts" / "issue_codes_doc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (ROOT / "docs" / "ISSUE_CODES.md").read_text() == mod.issue_codes_markdown()
