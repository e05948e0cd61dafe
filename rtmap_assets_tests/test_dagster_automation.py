"""Declarative automation: the cohort assets follow the per-patient ones, evaluated tick by tick with
the cursor, and a failed patient (never materialised) does not block them."""

from __future__ import annotations

import pytest

import dagster as dg

pytestmark = pytest.mark.slow


def _requested(result) -> set[str]:
    keys = ["cohort_uncertainty", "seed_classification_csv", "cohort_dashboard", "registration_qc",
            "recurrence_classification", ["warehouse", "patient_summary"]]
    return {dg.AssetKey(k).to_user_string() for k in keys if result.get_num_requested(dg.AssetKey(k))}


def test_cohort_follows_patients(data_dir, monkeypatch):
    monkeypatch.setenv("RTMAP_DATA_DIR", str(data_dir))
    from rtmap_assets.definitions import defs as load_defs

    defs = load_defs()
    instance = dg.DagsterInstance.ephemeral()
    defs.resolve_job_def("bronze_job").execute_in_process(instance=instance)
    instance.add_dynamic_partitions("patients", ["SYN-001", "SYN-002", "SYN-NEVER"])  # SYN-NEVER has no data
    patient_job = defs.resolve_job_def("patient_job")

    # First tick establishes the cursor; nothing has changed yet, so nothing is requested.
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert "cohort_uncertainty" not in _requested(first)

    patient_job.execute_in_process(instance=instance, partition_key="SYN-001")
    second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    wanted = _requested(second)
    assert {"cohort_uncertainty", "seed_classification_csv", "warehouse/patient_summary"} <= wanted
    assert not any(k in wanted for k in ("registration_qc", "recurrence_classification"))

    # Materialise what automation asked for, then the next tick (same cursor chain) asks for nothing more.
    dg.materialize([defs.get_assets_def(dg.AssetKey(k)) for k in ("cohort_uncertainty", "seed_classification_csv")],
                   instance=instance, resources={"paths": defs.resources["paths"], "trial": defs.resources["trial"]})
    third = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
    assert {"cohort_uncertainty", "seed_classification_csv"}.isdisjoint(_requested(third))

    # A new patient lands: the cohort follows, although SYN-NEVER (no data) is still missing.
    patient_job.execute_in_process(instance=instance, partition_key="SYN-002")
    fourth = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=third.cursor)
    assert "cohort_uncertainty" in _requested(fourth)


def test_cohort_radius_change_reclassifies_everyone(data_dir, monkeypatch, tmp_path):
    """Under the 'cohort' radius policy the radius depends on all patients: when cohort_uncertainty's
    radius changes, automation requests every registered patient's classification again."""
    import yaml

    from rtmap_assets.config import DEFAULT_CONFIG_PATH
    from rtmap_assets.lake import Lake
    from rtmap_assets.lake.contract import TABLES

    cfg = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    cfg["uncertainty"]["policy"] = "cohort"
    (tmp_path / "trial.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("RTMAP_TRIAL_CONFIG", str(tmp_path / "trial.yaml"))
    monkeypatch.setenv("RTMAP_DATA_DIR", str(data_dir))
    from rtmap_assets.definitions import defs as load_defs

    defs = load_defs()
    instance = dg.DagsterInstance.ephemeral()
    defs.resolve_job_def("bronze_job").execute_in_process(instance=instance)
    instance.add_dynamic_partitions("patients", ["SYN-001", "SYN-002"])
    patient_job = defs.resolve_job_def("patient_job")
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    patient_job.execute_in_process(instance=instance, partition_key="SYN-001")
    patient_job.execute_in_process(instance=instance, partition_key="SYN-002")
    lake = Lake(data_dir / "lake")
    cls = lake.read(TABLES["recurrence_classification"])
    assert set(cls["radius_policy"]) == {"cohort"}

    second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    dg.materialize([defs.get_assets_def(dg.AssetKey("cohort_uncertainty"))], instance=instance,
                   resources={"paths": defs.resources["paths"], "trial": defs.resources["trial"]})
    third = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
    requested = third.get_requested_partitions(dg.AssetKey("recurrence_classification"))
    assert requested == {"SYN-001", "SYN-002"}

    # Doing what automation asked gives every patient the same, current cohort radius.
    for pid in sorted(requested):
        patient_job.execute_in_process(instance=instance, partition_key=pid)
    cls = lake.read(TABLES["recurrence_classification"])
    assert cls["radius_mm"].n_unique() == 1
    assert cls["radius_mm"][0] == pytest.approx(lake.read(TABLES["cohort_uncertainty"])["cohort_radius_mm"][0])

    # cohort_uncertainty re-materialised with the same radius (same data version): nobody is re-classified.
    dg.materialize([defs.get_assets_def(dg.AssetKey("cohort_uncertainty"))], instance=instance,
                   resources={"paths": defs.resources["paths"], "trial": defs.resources["trial"]})
    fourth = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=third.cursor)
    assert not fourth.get_requested_partitions(dg.AssetKey("recurrence_classification"))
