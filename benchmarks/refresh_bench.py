"""Parts (d) and (e): a cohort through Dagster, incremental refresh, and patients per hour on 2 cores.

Runs in its own process (the Dagster definitions read RTMAP_DATA_DIR when they load) with a temporary
persistent instance under the data dir (the run queue / pool settings `rtmap demo` writes):

1. `rtmap synth` N+1 small (or clinical) patients; one export is held back outside the raw folder.
2. Full run, as `rtmap demo` does it: bronze_job, partitions added, patient_job per partition
   (in-process, one after the other: the heavy step's pool limit is 1 on 2 cores), cohort_job.
   Patients per hour = N / (wall time of the whole run), and per patient_job alone.
3. Refresh with nothing changed: the raw-exports sensor ticks and the nightly refresh schedule is
   evaluated (what they request is what a refresh costs: an up-to-date patient is not run); then, as a
   forced backfill would, patient_job on K unchanged partitions (time per unchanged patient inside a run;
   'recomputed' metadata counted) and the cohort job.
4. One patient added (the held-back export moved in): sensor tick → bronze_job → sensor tick → the
   requested patient runs → cohort_job. Wall time and partitions recomputed (from the runs' own
   `recomputed` materialisation metadata).

    python benchmarks/refresh_bench.py --workdir /tmp/rb --patients 50 --size small --unchanged 10
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _load1() -> float:
    return round(os.getloadavg()[0], 2)


def _recomputed(result) -> dict[str, int]:
    """How many of a run's materialisations say recomputed=True / False (per-patient assets)."""
    out = {"recomputed": 0, "reused": 0}
    for ev in result.all_events:
        if ev.event_type_value != "ASSET_MATERIALIZATION":
            continue
        mat = ev.event_specific_data.materialization
        if mat.asset_key.to_user_string() not in ("registration_qc", "recurrence_classification"):
            continue
        md = mat.metadata.get("recomputed")
        if md is not None:
            out["recomputed" if md.value else "reused"] += 1
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--patients", type=int, default=50)
    ap.add_argument("--size", choices=["small", "clinical"], default="small")
    ap.add_argument("--unchanged", type=int, default=10, help="unchanged partitions re-run in the nothing-changed refresh")
    ap.add_argument("--no-refresh", action="store_true", help="only the full run (patients per hour)")
    args = ap.parse_args(argv)

    data = args.workdir.resolve()
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    from rtmap_assets.cli import prepare_instance

    prepare_instance(data)  # DAGSTER_HOME + RTMAP_DATA_DIR before the definitions load
    from rtmap_assets.config import load_trial_config
    from rtmap_synth.cli import main_synth

    config = load_trial_config()
    raw = data / "raw" / config.trial
    n_total = args.patients + (0 if args.no_refresh else 1)
    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        main_synth(["--out", str(data / "raw"), "--truth", str(data / "truth"), "--covariates",
                    str(data / "covariates" / f"{config.trial}.csv"), "--patients", str(n_total), "--size", args.size,
                    "--seed", "11"])
    synth_s = time.perf_counter() - t
    held = None
    if not args.no_refresh:
        last = sorted(p.name for p in raw.iterdir())[-1]
        held = data / "held_back" / last
        held.parent.mkdir()
        shutil.move(str(raw / last), held)

    import dagster as dg

    from rtmap_assets.defs.automation import nightly_refresh, raw_exports_sensor
    from rtmap_assets.defs.resources import RtmapPaths, TrialSettings

    t = time.perf_counter()
    from rtmap_assets.definitions import defs as load_defs

    defs = load_defs()
    instance = dg.DagsterInstance.get()
    bronze, patient_job, cohort = (defs.resolve_job_def(j) for j in ("bronze_job", "patient_job", "cohort_job"))
    load_defs_s = time.perf_counter() - t

    def tick(cursor):
        ctx = dg.build_sensor_context(instance=instance, cursor=cursor,
                                      resources={"paths": RtmapPaths(data_dir=str(data)), "trial": TrialSettings()})
        t0 = time.perf_counter()
        res = raw_exports_sensor(ctx)
        for req in res.dynamic_partitions_requests:
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        return res, time.perf_counter() - t0

    def schedule_tick():
        from datetime import datetime, timezone

        ctx = dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime.now(timezone.utc),
                                        resources={"paths": RtmapPaths(data_dir=str(data)), "trial": TrialSettings()})
        t0 = time.perf_counter()
        res = nightly_refresh(ctx)
        return ([] if isinstance(res, dg.SkipReason) else [r.partition_key for r in res]), time.perf_counter() - t0

    def run(job, **kw):
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # dbt's console output
            r = job.execute_in_process(instance=instance, raise_on_error=False, run_config=QUIET, **kw)
        return r, time.perf_counter() - t0

    out: dict = {"patients": args.patients, "size": args.size, "synth_s": synth_s, "load_definitions_s": load_defs_s}

    # ---- full run
    load_before = _load1()
    t_full = time.perf_counter()
    _, bronze_s = run(bronze)
    from rtmap_assets.dicom.manifest import complete_rows
    from rtmap_assets.lake.contract import PATIENT_MANIFEST

    lake = RtmapPaths(data_dir=str(data)).lake
    ready = sorted(set(complete_rows(lake.read(PATIENT_MANIFEST))["patient_id"].to_list()))
    instance.add_dynamic_partitions("patients", ready)
    per_patient, failed = [], []
    for pid in ready:
        r, s = run(patient_job, partition_key=pid)
        per_patient.append(s)
        if not r.success:
            failed.append(pid)
    cohort_r, cohort_s = run(cohort)
    full_s = time.perf_counter() - t_full
    out["full_run"] = {
        "seconds": full_s, "bronze_s": bronze_s, "patient_job_s": per_patient, "cohort_s": cohort_s,
        "cohort_ok": cohort_r.success, "patients_ok": len(ready) - len(failed), "failed": failed,
        "patients_per_hour": 3600 * len(ready) / full_s,
        "patients_per_hour_patient_jobs_only": 3600 * len(ready) / sum(per_patient),
        "load_before": load_before, "load_after": _load1()}
    print(f"full run: {len(ready)} patients in {full_s:.0f} s", file=sys.stderr, flush=True)
    if args.no_refresh:
        print("RESULT " + json.dumps(out))
        return 0

    # ---- refresh, nothing changed
    r1, _ = tick(None)  # a fresh cursor: learns the folder state; every patient is already registered
    if r1.run_requests and r1.run_requests[0].job_name == "bronze_job":
        run(bronze)
    r2, tick2_s = tick(r1.cursor)
    load_before = _load1()
    t0 = time.perf_counter()
    r3, tick3_s = tick(r2.cursor)
    schedule_requests, schedule_s = schedule_tick()
    unchanged = ready[: args.unchanged]
    unchanged_s, counts = [], {"recomputed": 0, "reused": 0}
    for pid in unchanged:
        r, s = run(patient_job, partition_key=pid)
        unchanged_s.append(s)
        for k, v in _recomputed(r).items():
            counts[k] += v
    cohort_r, cohort_unchanged_s = run(cohort)
    out["refresh_nothing_changed"] = {
        "sensor_tick_s": tick3_s, "sensor_requests": len(r3.run_requests),
        "schedule_tick_s": schedule_s, "schedule_requests": len(schedule_requests), "patients_checked": len(ready),
        "patient_job_s_per_unchanged": unchanged_s, "unchanged_partitions_run": len(unchanged),
        "step_materialisations": counts, "cohort_job_s": cohort_unchanged_s, "cohort_ok": cohort_r.success,
        "seconds": time.perf_counter() - t0, "load_before": load_before, "load_after": _load1()}
    print(f"nothing changed: {len(unchanged)} unchanged patient_jobs, median "
          f"{sorted(unchanged_s)[len(unchanged_s) // 2]:.1f} s", file=sys.stderr, flush=True)

    # ---- one patient added
    shutil.move(str(held), raw / held.name)
    load_before = _load1()
    t0 = time.perf_counter()
    a1, a1_s = tick(r3.cursor)
    steps = {"sensor_tick_1_s": a1_s}
    if any(r.job_name == "bronze_job" for r in a1.run_requests):
        _, steps["bronze_s"] = run(bronze)
    a2, steps["sensor_tick_2_s"] = tick(a1.cursor)
    requested = [r.partition_key for r in a2.run_requests if r.job_name == "patient_job"]
    counts = {"recomputed": 0, "reused": 0}
    steps["patient_job_s"] = []
    for pid in requested:
        r, s = run(patient_job, partition_key=pid)
        steps["patient_job_s"].append(s)
        for k, v in _recomputed(r).items():
            counts[k] += v
    cohort_r, steps["cohort_job_s"] = run(cohort)
    added_s = time.perf_counter() - t0
    out["refresh_one_added"] = {
        "seconds": added_s, "partitions_requested": requested, "step_materialisations": counts,
        "cohort_ok": cohort_r.success, **steps, "fraction_of_full_run": added_s / full_s,
        "load_before": load_before, "load_after": _load1()}
    print(f"one added: {added_s:.0f} s, requested {requested}", file=sys.stderr, flush=True)
    print("RESULT " + json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
