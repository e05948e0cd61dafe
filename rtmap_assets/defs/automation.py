"""Jobs, the raw-data sensor and the nightly refresh schedule.

The sensor watches `data/raw/<trial>/`: one top-level folder per patient export. It works in two
phases on each tick, remembered in its cursor:
1. the raw folder changed (a file added, removed, resized or touched) → run the bronze job
   (catalog + manifest), with a run key derived from the folder state;
2. the manifest lists a patient whose input fingerprint is new → add its partition and run that
   patient alone, with run key `<patient>:<fingerprint>` (so the same data is never run twice).
"""

import hashlib
import json
import os
import time
from pathlib import Path

import polars as pl

import dagster as dg
from rtmap_assets.defs.partitions import patients_partitions
from rtmap_assets.defs.resources import RtmapPaths, TrialSettings
from rtmap_assets.defs.versions import patients_out_of_date
from rtmap_assets.lake import Lake
from rtmap_assets.lake.contract import PATIENT_MANIFEST, RECURRENCE_CLASSIFICATION, REGISTRATION_QC, TableSpec
from rtmap_assets.dicom.manifest import complete_rows

bronze_job = dg.define_asset_job(
    "bronze_job",
    selection=dg.AssetSelection.assets("dicom_files", "dicom_rejects", "patient_manifest", "manifest_issues",
                                       "trial_covariates"),
    description="Header catalog of the raw folder, patient manifest and covariates.",
    executor_def=dg.in_process_executor,
)

def patient_executor() -> dg.ExecutorDefinition:
    """In process on one machine (a step subprocess costs seconds); Celery workers when the deployment
    says so (RTMAP_EXECUTOR=celery, docs/SCALE.md): then each patient's steps go to the shared queue."""
    if os.environ.get("RTMAP_EXECUTOR") == "celery":
        from rtmap_assets.deploy.celery_profile import celery_executor_def

        return celery_executor_def()
    return dg.in_process_executor


# One run per patient.
patient_job = dg.define_asset_job(
    "patient_job",
    selection=dg.AssetSelection.groups("patient_silver", "patient_gold"),
    partitions_def=patients_partitions,
    description="Everything for one patient: registration, mapped structures, dose statistics, classification.",
    executor_def=patient_executor(),
)

cohort_job = dg.define_asset_job(
    "cohort_job",
    selection=dg.AssetSelection.groups("cohort"),
    description="Cohort assets: covariates, cohort uncertainty, seed CSV, dbt models, dashboard.",
    executor_def=dg.in_process_executor,
)


def raw_folder_state(raw_trial_dir: Path) -> dict[str, str]:
    """Export folder → hash of its files' (relative path, size, mtime). Stat calls only, no reads."""
    state: dict[str, str] = {}
    if not raw_trial_dir.is_dir():
        return state
    for export in sorted(p for p in raw_trial_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        h = hashlib.sha1()
        for root, dirs, files in os.walk(export):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                if f.startswith("."):
                    continue
                st = os.stat(os.path.join(root, f))
                h.update(f"{os.path.relpath(os.path.join(root, f), export)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        state[export.name] = h.hexdigest()[:16]
    return state


def stored_fingerprints(lake: Lake, spec: TableSpec) -> dict[str, str]:
    """patient_id → input_fingerprint as recorded in a lake table (manifest: current; registration_qc: done).

    Reads two columns only: the sensor never loads whole tables."""
    if spec.name == PATIENT_MANIFEST.name:  # only complete patients get partitions and runs
        df = complete_rows(lake.read(spec, columns=["patient_id", "input_fingerprint", "complete"]))
    else:
        df = lake.read(spec, columns=["patient_id", "input_fingerprint"])
    if df.is_empty():
        return {}
    fp = df.group_by("patient_id").agg(pl.col("input_fingerprint").first())
    return dict(zip(fp["patient_id"].to_list(), fp["input_fingerprint"].to_list()))


def patients_to_run(lake: Lake, seen: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """The one selection rule of the sensor and `rtmap demo`: (every complete patient → its input
    fingerprint, the patients to run). A patient runs when its fingerprint is new to the caller (`seen`)
    and the lake does not already hold its registration from these very files and its classification
    (a run killed between the two steps is run again)."""
    current = stored_fingerprints(lake, PATIENT_MANIFEST)
    registered = stored_fingerprints(lake, REGISTRATION_QC)
    classified = set(lake.patients_with_rows(RECURRENCE_CLASSIFICATION))
    seen = seen or {}
    return current, [pid for pid, fp in sorted(current.items())
                     if seen.get(pid) != fp and (registered.get(pid) != fp or pid not in classified)]


@dg.sensor(
    jobs=[bronze_job, patient_job],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="New or changed patient exports in data/raw/<trial>/ → catalog, new partitions, per-patient runs.",
)
def raw_exports_sensor(context: dg.SensorEvaluationContext, paths: RtmapPaths, trial: TrialSettings) -> dg.SensorResult:
    cursor = json.loads(context.cursor) if context.cursor else {"raw": {}, "patients": {}}
    runs: list[dg.RunRequest] = []

    raw = raw_folder_state(paths.raw_root / trial.config.trial)
    if raw != cursor["raw"]:
        changed = sorted(k for k in raw.keys() | cursor["raw"].keys() if raw.get(k) != cursor["raw"].get(k))
        key = hashlib.sha1(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]
        runs.append(dg.RunRequest(run_key=f"bronze:{key}", job_name=bronze_job.name,
                                  tags={"rtmap/changed_exports": ",".join(changed)[:200]}))
        cursor["raw"] = raw

    existing = set(context.instance.get_dynamic_partitions(patients_partitions.name))
    current, to_run = patients_to_run(paths.lake, seen=cursor["patients"])
    new_partitions = [pid for pid in sorted(current) if pid not in existing]
    cursor["patients"].update(current)
    runs += [dg.RunRequest(run_key=f"{pid}:{current[pid]}", job_name=patient_job.name, partition_key=pid)
             for pid in to_run]

    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[patients_partitions.build_add_request(new_partitions)] if new_partitions else [],
        cursor=json.dumps(cursor, sort_keys=True),
    )


@dg.schedule(
    cron_schedule="0 2 * * *",
    job=patient_job,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Nightly refresh: every patient whose stored result is out of date (inputs, code, configuration, "
    "sphere radius or covariate arm changed, or its figures are gone) is re-run; up-to-date patients cost a "
    "column read, not a run. To force everyone, launch a backfill of patient_job from the UI.",
)
def nightly_refresh(context: dg.ScheduleEvaluationContext, paths: RtmapPaths, trial: TrialSettings):
    t = time.perf_counter()
    known = context.instance.get_dynamic_partitions(patients_partitions.name)
    stale = patients_out_of_date(paths.lake, trial.config, known)
    checked = f"{len(known)} patients checked in {1000 * (time.perf_counter() - t):.0f} ms"
    if not stale:
        return dg.SkipReason(f"every patient is up to date ({checked})")
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    context.log.info(f"{len(stale)} out of date ({checked}): {', '.join(stale[:20])}")
    return [dg.RunRequest(run_key=f"refresh:{day}:{pid}", partition_key=pid) for pid in stale]


# Evaluates the declarative automation conditions (cohort assets follow patients; classifications follow
# the cohort radius). Declared here so it is on by default, also in a fresh `dagster dev`.
cohort_automation_sensor = dg.AutomationConditionSensorDefinition(
    "cohort_automation_sensor",
    target=dg.AssetSelection.groups("cohort", "patient_gold"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Runs cohort assets after patients change, and re-classifies when the cohort radius changes.",
)
