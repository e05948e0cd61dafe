"""Declarative automation: the cohort assets follow the per-patient ones, evaluated tick by tick with
the cursor, and a failed patient (never materialised) does not block them."""

from __future__ import annotations

import pytest

import dagster as dg

pytestmark = pytest.mark.slow


def _requested(result) -> set[str]:
    return {k.to_user_string() for k in result.get_requested_asset_keys()} if hasattr(
        result, "get_requested_asset_keys") else {
        r.asset_key.to_user_string() for r in result.results if r.true_subset.size}


def test_cohort_follows_patients(data_dir, monkeypatch):
    monkeypatch.setenv("RTMAP_DATA_DIR", str(data_dir))
    from rtmap_assets.definitions import defs as load_defs

    defs = load_defs()
    instance = dg.DagsterInstance.ephemeral()
    defs.resolve_job_def("bronze_job").execute_in_process(instance=instance)
    instance.add_dynamic_partitions("patients", ["SYN-001", "SYN-002", "SYN-NEVER"])  # SYN-NEVER has no data
    patient_job = defs.resolve_job_def("patient_job")
    patient_job.execute_in_process(instance=instance, partition_key="SYN-001")

    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    wanted = _requested(first)
    assert "cohort_uncertainty" in wanted and "seed_classification_csv" in wanted
    assert not any(k in wanted for k in ("registration_qc", "recurrence_classification"))

    # Materialise what automation asked for, then the next tick (same cursor chain) asks for nothing.
    dg.materialize([defs.get_assets_def(dg.AssetKey(k)) for k in ("cohort_uncertainty", "seed_classification_csv")],
                   instance=instance, resources={"paths": defs.resources["paths"]})
    second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert {"cohort_uncertainty", "seed_classification_csv"}.isdisjoint(_requested(second))

    # A new patient lands: the cohort follows, despite SYN-NEVER being missing.
    patient_job.execute_in_process(instance=instance, partition_key="SYN-002")
    third = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
    assert "cohort_uncertainty" in _requested(third)
