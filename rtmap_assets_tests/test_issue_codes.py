"""One list of issue codes: every code the package raises or records is an `IssueCode` with a meaning,
none is built at run time from pieces, and docs/ISSUE_CODES.md lists them all."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import load_script
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

    def check(where: str, expr: ast.expr) -> None:
        if isinstance(expr, ast.IfExp):
            check(where, expr.body)
            check(where, expr.orelse)
        elif isinstance(expr, ast.Constant) and isinstance(expr.value, str) and expr.value.upper() not in CODES:
            unknown.append(f"{where} {expr.value}")
        elif (isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "IssueCode"
              and expr.attr not in IssueCode.__members__):
            unknown.append(f"{where} IssueCode.{expr.attr}")

    for where, expr in args:
        if any(isinstance(node, ast.JoinedStr) for node in ast.walk(expr)):
            built.append(f"{where} {ast.unparse(expr)}")
        check(where, expr)
    assert not built, f"codes built from pieces at run time: {built}"
    assert not unknown, f"codes missing from rtmap_assets.issue_codes.IssueCode: {unknown}"
    assert set(MEANINGS) == set(IssueCode)


def test_issue_codes_doc_is_current():
    mod = load_script("issue_codes_doc")
    assert (ROOT / "docs" / "ISSUE_CODES.md").read_text() == mod.issue_codes_markdown()


def test_subject_key_reject_codes_are_issue_codes():
    """The catalog's rule-17 rejects become issue rows with their code taken from the reason's prefix."""
    from rtmap_assets.dicom.catalog import SUBJECT_CODES

    assert set(SUBJECT_CODES) <= CODES
