"""`rtmap synth --add N`: patients added to an existing cohort get new ids after the highest one there,
leave the existing patients untouched and are the patients a larger cohort would have had."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from rtmap_assets.config import load_trial_config
from rtmap_synth.cli import main_synth
from rtmap_synth.cohort import COVARIATE_COLUMNS, _write_covariates, cohort_plan, next_patient_number

CONFIG = load_trial_config()


def test_next_patient_number_follows_the_highest_id(tmp_path):
    raw, truth = tmp_path / "raw", tmp_path / "truth"
    assert next_patient_number(raw, truth) == 1  # missing folders: a new cohort
    (raw / "SYN-002").mkdir(parents=True)
    (raw / "SYN-007").mkdir()
    (raw / "OTHER-050").mkdir()
    truth.mkdir()
    (truth / "SYN-012.json").write_text("{}")
    (truth / ".SYN-099.json.tmp").write_text("{}")  # an interrupted write is not a patient
    assert next_patient_number(raw, truth) == 13
    assert next_patient_number(raw) == 8


def test_covariates_append_keeps_existing_rows(tmp_path):
    path = tmp_path / "cov.csv"
    row = {c: "x" for c in COVARIATE_COLUMNS}
    _write_covariates(path, [{"patient_id": "SYN-001", "covariates": {**row, "patient_id": "SYN-001"}}], append=False)
    _write_covariates(path, [{"patient_id": "SYN-002", "covariates": {**row, "patient_id": "SYN-002", "arm": "B"}}],
                      append=True)
    rows = list(csv.DictReader(path.open()))
    assert [r["patient_id"] for r in rows] == ["SYN-001", "SYN-002"] and rows[1]["arm"] == "B"
    _write_covariates(path, [{"patient_id": "SYN-003", "covariates": {**row, "patient_id": "SYN-003"}}], append=False)
    assert [r["patient_id"] for r in csv.DictReader(path.open())] == ["SYN-003"]


def test_cohort_plan_continues_the_cycle():
    arms = sorted(CONFIG.arms)
    assert cohort_plan(3, arms, first_index=4) == cohort_plan(7, arms)[4:]


@pytest.mark.slow
def test_cli_add_continues_after_the_highest_id(tmp_path):
    out, truth, cov = tmp_path / "raw", tmp_path / "truth", tmp_path / "cov.csv"
    common = ["--out", str(out), "--truth", str(truth), "--covariates", str(cov), "--seed", "3",
              "--shape", "48,48,16", "--spacing", "3,3,4", "--layout", "flat"]
    assert main_synth([*common, "--patients", "1"]) == 0
    trial = out / CONFIG.trial
    before = {p: p.stat().st_mtime_ns for p in (trial / "SYN-001").rglob("*")}
    first = json.loads((truth / CONFIG.trial / "SYN-001.json").read_text())

    assert main_synth([*common, "--add", "1", "--cases", "gap"]) == 0
    assert sorted(p.name for p in trial.iterdir()) == ["SYN-001", "SYN-002"]
    assert {p: p.stat().st_mtime_ns for p in (trial / "SYN-001").rglob("*")} == before  # untouched
    assert json.loads((truth / CONFIG.trial / "SYN-001.json").read_text()) == first
    added = json.loads((truth / CONFIG.trial / "SYN-002.json").read_text())
    # the patient a 2-patient cohort would have had as its second: seed, arm and case from its number
    assert added["seed"] == int(np.random.SeedSequence([3, 1]).generate_state(1)[0])
    assert (added["arm"], added["case"]) == cohort_plan(2, sorted(CONFIG.arms))[1]
    assert added["export_case"] == "gap" and added["expected"]["outcome"] == "refused"
    rows = list(csv.DictReader(cov.open()))
    assert [r["patient_id"] for r in rows] == ["SYN-001", "SYN-002"]
    assert rows[0]["arm"] == first["arm"] and rows[1]["arm"] == added["arm"]
