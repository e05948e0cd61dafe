"""Assets materialised end to end on an ephemeral Dagster instance for 2 small synthetic patients,
plus a third, broken patient that must fail alone with its reason in pipeline_issues."""

from __future__ import annotations

import polars as pl
import pytest

import dagster as dg
from rtmap_assets.config import LEVELS
from rtmap_assets.lake import Lake
from rtmap_assets.lake.contract import TABLES
from rtmap_assets.pipeline.issues import read_issues

pytestmark = pytest.mark.slow


def _break_patient(data_dir, trial="SYNTH-HN"):
    """Copy patient 1's export as a new subject without its RTDOSE: the manifest must refuse it."""
    import shutil

    import pydicom

    raw = data_dir / "raw" / trial
    src = sorted(raw.iterdir())[0]
    dst = raw / "SYN-BROKEN"  # rule 17: the export folder names the subject
    shutil.copytree(src, dst)
    for f in [p for p in dst.rglob("*") if p.is_file()]:
        ds = pydicom.dcmread(f)
        if ds.Modality == "RTDOSE":
            f.unlink()
            continue
        ds.PatientID = "SYN-BROKEN"
        # fresh UIDs so the copy is not a duplicate of the original files
        for tag in ("SOPInstanceUID",):
            setattr(ds, tag, pydicom.uid.generate_uid(entropy_srcs=[str(f), getattr(ds, tag)]))
        if "MediaStorageSOPInstanceUID" in ds.file_meta:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(f)


def test_pipeline_end_to_end(data_dir, monkeypatch):
    monkeypatch.setenv("RTMAP_DATA_DIR", str(data_dir))
    from rtmap_assets.definitions import defs as load_defs

    defs = load_defs()
    _break_patient(data_dir)
    instance = dg.DagsterInstance.ephemeral()
    assert defs.resolve_job_def("bronze_job").execute_in_process(instance=instance).success
    lake = Lake(data_dir / "lake")

    manifest = lake.read(TABLES["patient_manifest"])
    ready = sorted(manifest["patient_id"].unique().to_list())
    assert ready == ["SYN-001", "SYN-002"]
    issues = read_issues(lake)
    assert issues.filter(pl.col("patient_id") == "SYN-BROKEN")["code"].to_list() == ["NO_RTDOSE"]

    instance.add_dynamic_partitions("patients", ready + ["SYN-BROKEN"])
    job = defs.resolve_job_def("patient_job")
    results = {pid: job.execute_in_process(instance=instance, partition_key=pid, raise_on_error=False)
               for pid in ["SYN-BROKEN", *ready]}
    assert not results["SYN-BROKEN"].success
    assert all(results[p].success for p in ready)

    cls = lake.read(TABLES["recurrence_classification"])
    assert cls.height == 3 * len(ready)
    assert set(cls["level"]) == set(LEVELS)
    for pid in ready:
        checks = {e.check_name: e.passed for e in results[pid].get_asset_check_evaluations()}
        assert checks["classification_complete"], pid
        assert checks["matches_ground_truth"], pid
    assert lake.read(TABLES["dose_statistics"]).height > 0
    mapped = lake.read(TABLES["mapped_structures"]).filter((pl.col("role") == "comparison") & (pl.col("space") == "mapped"))
    assert mapped.height >= 2 * len(ready) and mapped["dice_vs_planning"].min() > 0.7
    assert "SYN-BROKEN" in read_issues(lake)["patient_id"].to_list()

    # Re-running an unchanged patient re-reports the stored registration instead of recomputing.
    rerun = job.execute_in_process(instance=instance, partition_key="SYN-001")
    mats = [m for m in rerun.asset_materializations_for_node("patient_registration")
            if m.asset_key == dg.AssetKey("registration_qc")]
    assert mats[0].metadata["recomputed"].value is False

    cohort = defs.resolve_job_def("cohort_job").execute_in_process(instance=instance, raise_on_error=False)
    assert cohort.success
    import duckdb

    with duckdb.connect(str(data_dir / "rtmap.duckdb"), read_only=True) as con:
        summary = {r[0]: r[1:] for r in con.sql(
            "select patient_id, classified, open_issues, issue_codes from patient_summary").fetchall()}
    # the manifest's reason, and the imaging step's refusal to run without a manifest
    assert summary["SYN-BROKEN"] == (False, 2, "NOT_IN_MANIFEST, NO_RTDOSE")
    assert summary["SYN-001"] == (True, 0, None)
    assert (data_dir / "lake" / "dashboards" / "cohort_dashboard.html").stat().st_size > 10_000
    # dbt's per-run artefacts go with the data, not into the dbt project
    (dbt_run,) = (data_dir / "logs" / "dbt").iterdir()
    assert dbt_run.name == cohort.run_id and (dbt_run / "run_results.json").exists()

    # No identifying tag anywhere in the lake.
    for table in ("dicom_files", "patient_manifest", "trial_covariates", "recurrence_classification"):
        df = lake.read(TABLES[table])
        text = str(df.to_dicts())
        assert "Synthetic^" not in text and "patient_name" not in df.columns and "birth" not in text.lower()


def test_dbt_run_targets_are_pruned_to_the_newest(tmp_path):
    import os

    from rtmap_assets.defs.resources import RtmapPaths
    from rtmap_assets.defs.warehouse import DBT_RUNS_KEPT, dbt_run_target

    runs = tmp_path / "logs" / "dbt"
    for i in range(DBT_RUNS_KEPT + 3):
        (runs / f"run{i:02d}").mkdir(parents=True)
        os.utime(runs / f"run{i:02d}", (1_000_000 + i, 1_000_000 + i))
    target = dbt_run_target(RtmapPaths(data_dir=str(tmp_path)), "new-run")
    assert target == runs / "new-run"
    kept = sorted(p.name for p in runs.iterdir())
    # room for the new run: the newest DBT_RUNS_KEPT - 1 old runs stay
    assert kept == [f"run{i:02d}" for i in range(4, DBT_RUNS_KEPT + 3)]
