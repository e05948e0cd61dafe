"""Scan an rtmap data folder for identifiers (rule 17): names, birth dates, PatientIDs that are not
the subject ID, and absolute study dates, everywhere outside the raw exports, the generator's truth
and inputs, and the bronze catalog (dicom_files, dicom_rejects).

Parquet is read as values, DuckDB as every table/view of every schema, .gz decompressed (NIfTI
headers included), anything else as bytes (Delta logs, PNG/HTML, logs, the Dagster event log, which is
SQLite with its text stored plainly); file names are checked too.

    .venv/bin/python scripts/privacy_scan.py data      # prints what it looked for and every finding
"""

from __future__ import annotations

import gzip
from pathlib import Path

import polars as pl

EXEMPT_TOP = {"raw", "truth", "covariates"}
BRONZE = {"dicom_files", "dicom_rejects", "stg_dicom_files", "stg_dicom_rejects"}  # the catalog and its own views


def identifiers(raw_trial: Path) -> dict[str, set[str]]:
    """What to look for, read from the raw exports themselves."""
    import pydicom

    found: dict[str, set[str]] = {"name": set(), "birth_date": set(), "study_date": set(), "patient_id": set()}
    for f in raw_trial.rglob("*"):
        if not f.is_file():
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=[
                "PatientName", "PatientBirthDate", "StudyDate", "PatientID"])
        except Exception:
            continue
        subject = f.relative_to(raw_trial).parts[0]
        for key, tag in (("name", "PatientName"), ("birth_date", "PatientBirthDate"), ("study_date", "StudyDate")):
            v = str(ds.get(tag, "") or "").strip()
            if len(v) >= 4:
                found[key].add(v)
        pid = str(ds.get("PatientID", "") or "").strip()
        if pid and pid != subject:
            found["patient_id"].add(pid)
    for d in list(found["birth_date"] | found["study_date"]):  # also the ISO spelling
        if len(d) == 8 and d.isdigit():
            found["birth_date" if d in found["birth_date"] else "study_date"].add(f"{d[:4]}-{d[4:6]}-{d[6:]}")
    return found


def _texts(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        try:
            return [str(pl.read_parquet(path).to_dicts())]
        except Exception:
            return [path.read_bytes().decode("latin-1")]
    if path.suffix == ".duckdb":
        import duckdb

        out = []
        with duckdb.connect(str(path), read_only=True) as con:
            tables = con.execute("select table_schema, table_name from information_schema.tables").fetchall()
            for schema, name in tables:
                if name in BRONZE:  # the bronze catalog's own copy (schema lake) keeps its dates
                    continue
                out.append(str(con.execute(f'select * from "{schema}"."{name}"').fetchall()))
        return out
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except OSError:
            pass
    return [data.decode("latin-1")]


def scan(data_dir: Path, looking_for: dict[str, set[str]]) -> list[str]:
    """Findings as `kind 'value' in relative/path`; empty when the folder is clean."""
    findings = []
    for path in sorted(data_dir.rglob("*")):
        rel = path.relative_to(data_dir)
        if not path.is_file() or rel.parts[0] in EXEMPT_TOP or (rel.parts[0] == "lake" and len(rel.parts) > 1
                                                                 and rel.parts[1] in BRONZE):
            continue
        texts = [str(rel), *_texts(path)]
        for kind, values in looking_for.items():
            for v in values:
                if any(v in t for t in texts):
                    findings.append(f"{kind} {v!r} in {rel}")
    return findings


def main(argv: list[str]) -> int:
    import sys

    data_dir = Path(argv[0] if argv else "data")
    trials = [p for p in (data_dir / "raw").iterdir() if p.is_dir()] if (data_dir / "raw").is_dir() else []
    looking_for: dict[str, set[str]] = {}
    for trial in trials:
        for kind, values in identifiers(trial).items():
            looking_for.setdefault(kind, set()).update(values)
    files = sum(1 for p in data_dir.rglob("*") if p.is_file())
    print(f"looking for {', '.join(f'{len(v)} {k}s' for k, v in looking_for.items())} "
          f"in {files} files under {data_dir} (raw/, truth/, covariates/ and the bronze catalog exempt)")
    findings = scan(data_dir, looking_for)
    for f in findings:
        print("FOUND", f)
    print(f"{len(findings)} findings")
    return 1 if findings else 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
