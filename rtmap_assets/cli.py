"""`rtmap` command line: generate a synthetic cohort, run the whole pipeline through Dagster, open the UI."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

INSTANCE_HEADER = "# Written by `rtmap demo` / `rtmap ui`: a persistent local instance under data/."
DAGSTER_YAML = f"""\
{INSTANCE_HEADER}
# rtmap instance config v2 (rewritten by rtmap when it differs; remove the first line to keep your edits)
concurrency:
  runs:
    max_concurrent_runs: 2
  pools:
    default_limit: 1   # the heavy per-patient step (pool rtmap_patient_heavy) one at a time on 2 cores
telemetry:
  enabled: false
# Run monitoring (daemon of `rtmap ui`): a run stuck STARTING or CANCELING is failed/canceled after 3 min,
# any run after 2 h (the local run launcher cannot probe its worker process, so a bound on run time is
# how the daemon notices a killed STARTED run), and the pool slots of every finished run are freed a
# minute after it ended, so a dead run never holds the only slot of rtmap_patient_heavy (issue 10).
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  max_runtime_seconds: 7200
  max_resume_run_attempts: 0
  poll_interval_seconds: 30
  free_slots_after_run_end_seconds: 60
"""


def prepare_instance(data_dir: Path) -> Path:
    """DAGSTER_HOME under the data folder, with the run queue and pool limits rtmap expects."""
    home = data_dir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "dagster.yaml"
    # A file rtmap wrote (its header) is brought up to date; a file without the header is the user's own.
    if not cfg.exists() or (cfg.read_text().startswith(INSTANCE_HEADER) and cfg.read_text() != DAGSTER_YAML):
        cfg.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ["RTMAP_DATA_DIR"] = str(data_dir)
    return home


def _cmd_synth(argv: list[str]) -> int:
    from rtmap_synth.cli import main_synth

    return main_synth(argv)


def _print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) if rows else len(c) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


# Exit codes of `rtmap demo` (also in `rtmap demo -h`).
EXIT_OK = 0
EXIT_PATIENT_FAILED = 3  # the pipeline ran, but at least one patient failed; one line each above, reasons in pipeline_issues
EXIT_COHORT_FAILED = 4  # the cohort stage (dbt models, dashboard) failed; details in the log file
EXIT_LOCKED = 5  # another rtmap process holds the data folder's lock
EXIT_CODES_HELP = (f"exit codes: {EXIT_OK} all patients ok; {EXIT_PATIENT_FAILED} a patient failed; "
                   f"{EXIT_COHORT_FAILED} the cohort stage failed; {EXIT_LOCKED} another rtmap process holds "
                   "the data folder")


def _open_log(data_dir: Path, command: str) -> Path:
    """A log file for this command under data/logs/; Python warnings, errors and tracebacks go there."""
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"rtmap-{command}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    for h in list(root.handlers):  # the console stays for progress lines only
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    return path


def _log_run_errors(result, log_path: Path) -> None:
    """Append a failed run's errors (with tracebacks) to the log file."""
    with open(log_path, "a") as fh:
        fh.write(f"\n=== run {result.run_id} ({result.job_def.name}) failed ===\n")
        for event in result.all_events:
            info = getattr(event.event_specific_data, "error", None)
            if event.is_failure or info is not None:
                fh.write(f"[{event.event_type_value}] {event.step_key or ''} {event.message or ''}\n")
                if info is not None:
                    fh.write(info.to_string() + "\n")


def _failure_lines(lake, pid: str) -> list[str]:
    """One line per open issue of the patient: `<pid>: FAILED [CODE] message`."""
    import polars as pl

    from rtmap_assets.pipeline.issues import read_issues

    issues = read_issues(lake)
    mine = issues.filter(pl.col("patient_id") == pid) if issues.height else issues
    if mine.is_empty():
        return [f"{pid}: FAILED (no reason recorded; see the log file)"]
    return [f"{pid}: FAILED [{r['code']}] {r['message']}" for r in mine.sort("stage", "code").iter_rows(named=True)]


def _read_summary(duck: Path) -> list[dict] | None:
    """patient_summary rows, or None when the cohort build did not produce it (e.g. every patient failed)."""
    import duckdb

    if not duck.exists():
        return None
    try:
        with duckdb.connect(str(duck), read_only=True) as con:
            return con.sql("select * from main.patient_summary order by patient_id").pl().to_dicts()
    except duckdb.Error:
        return None


def _locked(command: str, run):
    """Run `run(args)` holding the data folder's lock; refuse with EXIT_LOCKED if another rtmap holds it."""

    def wrapper(args: argparse.Namespace) -> int:
        from rtmap_assets.housekeeping import DataDirLock, DataDirLocked

        try:
            with DataDirLock(Path(args.data_dir).resolve(), command):
                return run(args)
        except DataDirLocked as exc:
            print(f"rtmap {command}: {exc}; not starting (exit code {EXIT_LOCKED})", file=sys.stderr)
            return EXIT_LOCKED

    return wrapper


def _cmd_demo(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    if args.fresh and data_dir.exists():
        for sub in ("raw", "truth", "covariates", "lake", "dagster_home", "rtmap.duckdb"):
            p = data_dir / sub
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    prepare_instance(data_dir)
    log_path = _open_log(data_dir, "demo")

    import dagster as dg

    from rtmap_assets.config import load_trial_config
    from rtmap_assets.definitions import defs as load_defs
    from rtmap_assets.defs.automation import patients_to_run
    from rtmap_assets.defs.patient import HEAVY_POOL
    from rtmap_assets.housekeeping import reap_dead_runs, run_tags, wait_for_pool
    from rtmap_assets.dicom.manifest import complete_rows
    from rtmap_assets.lake import Lake
    from rtmap_assets.lake.contract import TABLES

    config = load_trial_config(os.environ.get("RTMAP_TRIAL_CONFIG") or None)
    raw_trial = data_dir / "raw" / config.trial
    t0 = time.perf_counter()
    print(f"log file (warnings, tracebacks): {log_path}")
    if not raw_trial.exists() or not any(raw_trial.iterdir()):
        print(f"[1/4] generating a synthetic cohort of {args.patients} patients ({args.size}) in {raw_trial}")
        rc = _cmd_synth(["--out", str(data_dir / "raw"), "--truth", str(data_dir / "truth"),
                         "--covariates", str(data_dir / "covariates" / f"{config.trial}.csv"),
                         "--patients", str(args.patients), "--size", args.size, "--seed", str(args.seed),
                         "--mr-every", "3"])  # every third relapse image is MR
        if rc:
            return rc
    else:
        print(f"[1/4] using the existing cohort in {raw_trial}")

    defs = load_defs()
    instance = dg.DagsterInstance.get()
    # Dagster's console logger would print every step failure with its traceback between the progress
    # lines; the events stay in the instance (UI) and failed runs' errors go to the log file.
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    print(f"[2/4] catalog + manifest (Dagster instance {os.environ['DAGSTER_HOME']})")
    bronze = defs.resolve_job_def("bronze_job").execute_in_process(instance=instance, run_config=quiet,
                                                                    tags=run_tags(), raise_on_error=False)
    if not bronze.success:
        _log_run_errors(bronze, log_path)
        print(f"      catalog FAILED; see {log_path}")
        return EXIT_COHORT_FAILED
    lake = Lake(data_dir / "lake")
    manifest = complete_rows(lake.read(TABLES["patient_manifest"]))
    files = lake.read(TABLES["dicom_files"])
    patients = sorted(set(files["patient_id"].drop_nulls().to_list())) if files.height else []
    ready = sorted(set(manifest["patient_id"].to_list())) if manifest.height else []
    print(f"      {files.height} DICOM files, {lake.read(TABLES['dicom_rejects']).height} rejects, "
          f"{len(patients)} patients, {len(ready)} with a complete manifest")
    failed: list[str] = []
    for pid in (p for p in patients if p not in ready):  # refused by the manifest: never run
        failed.append(pid)
        for line in _failure_lines(lake, pid):
            print(f"      {line}")
    instance.add_dynamic_partitions("patients", [p for p in ready if not instance.has_dynamic_partition("patients", p)])

    reaped = reap_dead_runs(instance)
    if reaped:
        print(f"      failed {len(reaped)} dead run(s) left by a killed process and freed their pool slots: "
              + ", ".join(f"{r.job_name}[{r.partition or '-'}] {r.run_id[:8]}" for r in reaped))
    # The sensor's own selection rule: patients whose files are new or changed since their stored registration.
    _, changed = patients_to_run(lake)
    to_run = ready if args.refresh else [p for p in ready if p in changed]
    unchanged = len(ready) - len(to_run)
    print(f"[3/4] per-patient runs ({len(to_run)})"
          + (f"; {unchanged} unchanged since their last run (same files) not re-run: --refresh re-runs them, "
             "and stages whose code and configuration are unchanged re-report" if unchanged else ""))
    job = defs.resolve_job_def("patient_job")
    for i, pid in enumerate(to_run, 1):
        wait_for_pool(instance, HEAVY_POOL)
        t = time.perf_counter()
        result = job.execute_in_process(instance=instance, partition_key=pid, raise_on_error=False,
                                        run_config=quiet, tags=run_tags())
        took = f"in {time.perf_counter() - t:.1f} s"
        if result.success:
            print(f"      [{i}/{len(to_run)}] {pid}: ok {took}", flush=True)
            continue
        failed.append(pid)
        _log_run_errors(result, log_path)
        for line in _failure_lines(lake, pid):
            print(f"      [{i}/{len(to_run)}] {line} {took}", flush=True)

    print("[4/4] cohort: uncertainty, seed CSV, dbt models, dashboard")
    with open(log_path, "a") as fh, contextlib.redirect_stdout(fh):  # dbt's own console output goes to the log
        cohort = defs.resolve_job_def("cohort_job").execute_in_process(instance=instance, raise_on_error=False,
                                                                       run_config=quiet, tags=run_tags())
    if not cohort.success:
        _log_run_errors(cohort, log_path)
    print(f"      {'ok' if cohort.success else 'FAILED'} (dbt output: {log_path})")

    duck = data_dir / "rtmap.duckdb"
    rows = _read_summary(duck)
    if rows is None:
        print(f"\nNo per-patient summary: the cohort build did not produce patient_summary (see {log_path})")
    else:
        _add_truth_agreement(rows, lake, data_dir / "truth" / config.trial)
        print(f"\nPer-patient summary (high-risk level) — {time.perf_counter() - t0:.0f} s in all")
        _print_table(rows, ["patient_id", "vs_truth", "arm", "arm_source", "uncertainty_mm", "radius_mm",
                            "high_centroid_class", "high_volume_class", "high_dawson_class", "mohamed_type",
                            "high_probability_inside", "tre_mean_mm", "open_issues", "issue_codes"])
    print(f"""
Outputs
  lake (Delta tables): {lake.root}
  DuckDB (dbt):       {duck}   e.g. duckdb {duck} "select * from patient_summary"
  dashboard:          {lake.root / 'dashboards' / 'cohort_dashboard.html'}
  overlays (PNG):     {lake.root / 'figures'}/patient=<id>/overlay.png
  patient viewers:    {lake.root / 'dashboards' / 'viewers'}/<id>.html
  seed CSVs:          {lake.root / 'seed_csv'}
  log file:           {log_path}
  Dagster instance:   {os.environ['DAGSTER_HOME']}   (open the UI: rtmap ui)""")
    if failed:
        print(f"\n{len(failed)} patient(s) failed: {', '.join(failed)} (exit code {EXIT_PATIENT_FAILED})")
        return EXIT_PATIENT_FAILED
    return EXIT_OK if cohort.success else EXIT_COHORT_FAILED


def _add_truth_agreement(rows: list[dict], lake, truth_dir: Path) -> None:
    """Synthetic patients: does every class of every level and scheme equal the generator's truth?"""
    import json

    import polars as pl

    from rtmap_synth.evaluation import truth_mismatches

    from rtmap_assets.lake.contract import TABLES

    classification = lake.read(TABLES["recurrence_classification"])
    for row in rows:
        f = truth_dir / f"{row['patient_id']}.json"
        mine = classification.filter(pl.col("patient_id") == row["patient_id"]) if classification.height else None
        if not f.exists() or mine is None or mine.is_empty():
            row["vs_truth"] = "-"
            continue
        row["vs_truth"] = "agrees" if not truth_mismatches(mine, json.loads(f.read_text())) else "DIFFERS"


def _cmd_ui(args: argparse.Namespace) -> int:
    prepare_instance(Path(args.data_dir).resolve())
    import dagster as dg

    from rtmap_assets.housekeeping import reap_dead_runs

    # Runs left unfinished by an earlier, killed UI or demo: the daemon would only time them out.
    reaped = reap_dead_runs(dg.DagsterInstance.get())
    if reaped:
        print(f"failed {len(reaped)} dead run(s) left by a killed process and freed their pool slots")
    dagster = str(Path(sys.executable).with_name("dagster"))
    root = Path(__file__).resolve().parents[1]
    return subprocess.call([dagster, "dev", "-h", "127.0.0.1", "-p", str(args.port), "-w",
                            str(root / "workspace.yaml")], cwd=root)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # Dagster's INFO/DEBUG event lines: the UI has them
        handler.setLevel(logging.WARNING)
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="rtmap", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("synth", help="generate a synthetic DICOM-RT cohort with ground truth (see rtmap synth -h)",
                   add_help=False)
    demo = sub.add_parser("demo", help="generate (if needed) and run the whole pipeline through Dagster",
                          epilog=EXIT_CODES_HELP)
    demo.add_argument("--data-dir", default=os.environ.get("RTMAP_DATA_DIR", "data"))
    demo.add_argument("--patients", type=int, default=6)
    demo.add_argument("--size", choices=["small", "clinical"], default="small")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--fresh", action="store_true", help="delete earlier raw data, lake and instance first")
    demo.add_argument("--refresh", action="store_true",
                      help="run every patient, not only new or changed ones (unchanged ones re-report their stored result)")
    ui = sub.add_parser("ui", help="start the Dagster UI and daemon on 127.0.0.1")
    ui.add_argument("--data-dir", default=os.environ.get("RTMAP_DATA_DIR", "data"))
    ui.add_argument("--port", type=int, default=3000)
    if argv and argv[0] == "synth":
        return _cmd_synth(argv[1:])
    args = parser.parse_args(argv)
    return {"demo": _locked("demo", _cmd_demo), "ui": _locked("ui", _cmd_ui)}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
