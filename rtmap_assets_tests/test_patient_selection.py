"""One orchestration: the raw-exports sensor and `rtmap demo` choose the patients to run by the same rule
(`defs.automation.patients_to_run`): new or changed files, or a run that never finished."""

from __future__ import annotations

import polars as pl

from rtmap_assets.defs.automation import patients_to_run
from rtmap_assets.lake import Lake
from rtmap_assets.lake.contract import PATIENT_MANIFEST, RECURRENCE_CLASSIFICATION, REGISTRATION_QC


def _rows(spec, values: dict) -> pl.DataFrame:
    n = len(next(iter(values.values())))
    return pl.DataFrame({c: values.get(c, [None] * n) for c in spec.schema}, schema=spec.schema)


def test_selection_rule(tmp_path):
    lake = Lake(tmp_path)
    lake.replace_all(PATIENT_MANIFEST, _rows(PATIENT_MANIFEST, {
        "patient_id": ["DONE", "CHANGED", "NEW", "HALF", "INCOMPLETE"],
        "input_fingerprint": ["f1", "f2-new", "f3", "f4", "f5"], "complete": [True, True, True, True, False]}))
    for pid, fp in (("DONE", "f1"), ("CHANGED", "f2-old"), ("HALF", "f4")):
        lake.replace_patient(REGISTRATION_QC, pid, _rows(REGISTRATION_QC, {"patient_id": [pid], "input_fingerprint": [fp]}))
    for pid in ("DONE", "CHANGED"):  # HALF: killed between registration and classification
        lake.replace_patient(RECURRENCE_CLASSIFICATION, pid, _rows(RECURRENCE_CLASSIFICATION, {"patient_id": [pid]}))
    current, to_run = patients_to_run(lake)
    assert set(current) == {"DONE", "CHANGED", "NEW", "HALF"}  # an incomplete manifest never runs
    assert to_run == ["CHANGED", "HALF", "NEW"]
    # the sensor passes what it has already requested: nothing twice for the same files
    assert patients_to_run(lake, seen=current)[1] == []
