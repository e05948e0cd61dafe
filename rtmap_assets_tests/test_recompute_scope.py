"""What re-computes when something changes (issue 11): each stage's data version hashes its own inputs,
code version and only the configuration sections it reads.

- a classification threshold change re-classifies everyone and re-registers no one;
- a registration setting change re-registers;
- a corrected covariate arm re-classifies that patient only, with no re-registration.
"""

from __future__ import annotations

import csv

import pytest
import yaml

import dagster as dg
from rtmap_assets.config import DEFAULT_CONFIG_PATH

pytestmark = pytest.mark.slow
PATIENTS = ["SYN-001", "SYN-002"]


def _latest(instance, key: str, pid: str):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[pid]), limit=1).records
    return records[0].event_log_entry


def _recomputed(instance, key: str, pid: str) -> bool:
    return _latest(instance, key, pid).asset_materialization.metadata["recomputed"].value


def _run_id(instance, key: str, pid: str) -> str:
    return _latest(instance, key, pid).run_id


@pytest.fixture
def pipeline(data_dir, monkeypatch, tmp_path):
    config_file = tmp_path / "trial.yaml"
    cfg = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    config_file.write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("RTMAP_TRIAL_CONFIG", str(config_file))
    monkeypatch.setenv("RTMAP_DATA_DIR", str(data_dir))
    from rtmap_assets.definitions import defs as load_defs

    defs = load_defs()
    instance = dg.DagsterInstance.ephemeral()
    assert defs.resolve_job_def("bronze_job").execute_in_process(instance=instance).success
    instance.add_dynamic_partitions("patients", PATIENTS)
    job = defs.resolve_job_def("patient_job")
    for pid in PATIENTS:
        assert job.execute_in_process(instance=instance, partition_key=pid).success

    def edit(section: str, key: str, value) -> None:
        cfg[section][key] = value
        config_file.write_text(yaml.safe_dump(cfg))

    return defs, instance, job, edit, data_dir


def test_threshold_change_reclassifies_without_reregistering(pipeline):
    defs, instance, job, edit, _ = pipeline
    first_registration = {pid: _run_id(instance, "registration_qc", pid) for pid in PATIENTS}
    # Same configuration: neither stage recomputes.
    job.execute_in_process(instance=instance, partition_key=PATIENTS[0])
    assert not _recomputed(instance, "registration_qc", PATIENTS[0])
    assert not _recomputed(instance, "recurrence_classification", PATIENTS[0])

    edit("thresholds", "dawson_marginal", 0.25)
    for pid in PATIENTS:
        assert job.execute_in_process(instance=instance, partition_key=pid).success
        assert _recomputed(instance, "recurrence_classification", pid)
        assert not _recomputed(instance, "registration_qc", pid)
    # the stored registration is the first run's
    from rtmap_assets.lake import Lake
    from rtmap_assets.lake.contract import REGISTRATION_QC

    stored = Lake(pipeline[4] / "lake").read(REGISTRATION_QC)
    assert dict(zip(stored["patient_id"], stored["run_id"])) == first_registration

    edit("registration", "bspline_grid_mm", 35.0)
    assert job.execute_in_process(instance=instance, partition_key=PATIENTS[0]).success
    assert _recomputed(instance, "registration_qc", PATIENTS[0])
    assert _recomputed(instance, "recurrence_classification", PATIENTS[0])  # its input changed


def test_changed_covariate_arm_reclassifies_that_patient_only(pipeline):
    defs, instance, job, _, data_dir = pipeline
    paths = {"paths": defs.resources["paths"], "trial": defs.resources["trial"]}
    covariates = defs.get_assets_def(dg.AssetKey("trial_covariates"))
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    dg.materialize([covariates], instance=instance, resources=paths)
    second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)

    # The trial corrects SYN-001's arm in its covariates.
    f = data_dir / "covariates" / "SYNTH-HN.csv"
    rows = list(csv.DictReader(f.open()))
    old_arm = next(r["arm"] for r in rows if r["patient_id"] == PATIENTS[0])
    new_arm = next(a for a in ("A", "B", "C") if a != old_arm)
    for r in rows:
        if r["patient_id"] == PATIENTS[0]:
            r["arm"] = new_arm
    with f.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    dg.materialize([covariates], instance=instance, resources=paths)
    third = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
    requested = third.get_requested_partitions(dg.AssetKey("recurrence_classification"))
    assert requested == set(PATIENTS)
    assert not third.get_requested_partitions(dg.AssetKey("registration_qc"))

    gold = defs.get_assets_def(dg.AssetKey("recurrence_classification"))
    registration_runs = {pid: _run_id(instance, "registration_qc", pid) for pid in PATIENTS}
    for pid in sorted(requested):
        dg.materialize([gold], instance=instance, resources=paths, partition_key=pid)
    assert _recomputed(instance, "recurrence_classification", PATIENTS[0])
    assert not _recomputed(instance, "recurrence_classification", PATIENTS[1])
    assert {pid: _run_id(instance, "registration_qc", pid) for pid in PATIENTS} == registration_runs
    from rtmap_assets.lake import Lake
    from rtmap_assets.lake.contract import RECURRENCE_CLASSIFICATION

    cls = Lake(data_dir / "lake").read(RECURRENCE_CLASSIFICATION, patient_id=PATIENTS[0])
    assert set(cls["arm"]) == {new_arm} and set(cls["arm_source"]) == {"covariates"}
