"""One orchestration: the raw-exports sensor and `rtmap demo` choose the patients to run by the same rule
(`defs.automation.patients_to_run`): new or changed files, or a run that never finished."""

from __future__ import annotations

import polars as pl
import pytest

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


# --- the nightly refresh: which stored results are out of date -------------------------------------
def _up_to_date_lake(tmp_path, config, pids=("P1", "P2"), arms=("A", "B"), distance_mm=1.5):
    """A lake whose stored versions are exactly what the current inputs and configuration produce."""
    from rtmap_assets.defs.versions import classification_outputs, classification_radius, dosimetry_version, \
        imaging_version
    from rtmap_assets.lake.contract import TRIAL_COVARIATES

    lake = Lake(tmp_path)
    fps = [f"fp-{p}" for p in pids]
    lake.replace_all(PATIENT_MANIFEST, _rows(PATIENT_MANIFEST, {
        "patient_id": list(pids), "input_fingerprint": fps, "complete": [True] * len(pids)}))
    lake.replace_all(TRIAL_COVARIATES, _rows(TRIAL_COVARIATES, {"patient_id": list(pids), "arm": list(arms)}))
    for pid, fp, arm in zip(pids, fps, arms):
        iv = imaging_version(fp, config)
        lake.replace_patient(REGISTRATION_QC, pid, _rows(REGISTRATION_QC, {
            "patient_id": [pid], "input_fingerprint": [fp], "data_version": [iv], "landmark_distance_mm": [distance_mm]}))
        radius, _ = classification_radius(config, distance_mm, None)
        lake.replace_patient(RECURRENCE_CLASSIFICATION, pid, _rows(RECURRENCE_CLASSIFICATION, {
            "patient_id": [pid], "data_version": [dosimetry_version(iv, config, radius.radius_mm, arm)]}))
        for f in classification_outputs(lake, pid):
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"x")
    return lake


def test_out_of_date_follows_every_input_of_the_stored_versions(tmp_path):
    from rtmap_assets.config import load_trial_config
    from rtmap_assets.defs.versions import classification_outputs, patients_out_of_date
    from rtmap_assets.lake.contract import TRIAL_COVARIATES

    config = load_trial_config()
    lake = _up_to_date_lake(tmp_path, config)
    assert patients_out_of_date(lake, config) == []
    assert patients_out_of_date(lake, config, ["P2", "GONE"]) == []
    # a dosimetry threshold, or an imaging setting: everyone
    dawson = config.model_copy(update={"thresholds": config.thresholds.model_copy(update={"dawson_marginal": 0.3})})
    assert patients_out_of_date(lake, dawson) == ["P1", "P2"]
    grid = config.model_copy(update={"grid_spacing_mm": 3.0})
    assert patients_out_of_date(lake, grid) == ["P1", "P2"]
    # a corrected covariate arm: that patient only
    lake.replace_all(TRIAL_COVARIATES, _rows(TRIAL_COVARIATES, {"patient_id": ["P1", "P2"], "arm": ["A", "C"]}))
    assert patients_out_of_date(lake, config) == ["P2"]
    # a figure deleted: that patient only
    lake.replace_all(TRIAL_COVARIATES, _rows(TRIAL_COVARIATES, {"patient_id": ["P1", "P2"], "arm": ["A", "B"]}))
    classification_outputs(lake, "P1")[1].unlink()
    assert patients_out_of_date(lake, config) == ["P1"]
    # new files for a patient
    lake.replace_all(PATIENT_MANIFEST, _rows(PATIENT_MANIFEST, {
        "patient_id": ["P1", "P2"], "input_fingerprint": ["fp-P1", "fp-P2-new"], "complete": [True, True]}))
    assert patients_out_of_date(lake, config) == ["P1", "P2"]


@pytest.mark.slow  # a Dagster instance
def test_nightly_refresh_requests_only_out_of_date_patients(tmp_path):
    from datetime import datetime

    import dagster as dg

    from rtmap_assets.config import load_trial_config
    from rtmap_assets.defs.automation import nightly_refresh
    from rtmap_assets.defs.resources import RtmapPaths, TrialSettings
    from rtmap_assets.lake.contract import TRIAL_COVARIATES

    data = tmp_path / "data"
    lake = _up_to_date_lake(data / "lake", load_trial_config())
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("patients", ["P1", "P2"])

        def evaluate():
            ctx = dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime(2026, 12, 2, 2), resources={
                "paths": RtmapPaths(data_dir=str(data)), "trial": TrialSettings()})
            return nightly_refresh(ctx)

        idle = evaluate()
        assert isinstance(idle, dg.SkipReason) and "every patient is up to date (2 patients checked" in idle.skip_message
        lake.replace_all(TRIAL_COVARIATES, _rows(TRIAL_COVARIATES, {"patient_id": ["P1", "P2"], "arm": ["B", "B"]}))
        requests = evaluate()
        assert [(r.partition_key, r.run_key) for r in requests] == [("P1", "refresh:2026-12-02:P1")]
