"""Part (c): cohort SQL and the dbt build at N patients, lake rows replicated from a real small run.

1. A real run (`rtmap demo` on a few small synthetic patients, in a subprocess with its own data dir)
   gives one real lake.
2. For each N, a new lake is written **through `rtmap_assets.lake.Lake`** (`replace_patient` /
   `replace_all`, and the pipeline's own `record_issues` for issue rows): patient i gets the rows of
   real patient i mod k with a new patient ID (R00000, R00001, ...); every string column's source ID
   is rewritten and SOP instance UIDs get a suffix, so dbt's uniqueness tests hold. Whatever layout the
   Lake writes (today: Parquet per patient per table) is the layout measured.
3. `dbt build` with `--vars {rtmap_lake, rtmap_duckdb}` and a separate `--target-path`, timed, with
   its peak RSS; then the README queries and typical statistician queries in DuckDB, each in a fresh
   connection (median of `repeat` runs, with the first run reported too).

Direct-lake queries take each table's DuckDB scan expression from `lake_scan_sql(lake, spec)`: the Lake
API's own `duckdb_scan` / `sql_source` method if it grows one (a Delta backend), else the Parquet
glob of today's layout, so this script runs unchanged after the storage change.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

from bench_common import ROOT, load1  # noqa: E402 - benchmarks/ on sys.path

DBT_DIR = ROOT / "dbt_models"


def lake_scan_sql(lake, spec) -> str:
    """A DuckDB table expression reading one lake table, from the Lake API when it offers one."""
    for name in ("duckdb_scan", "sql_source", "duckdb_source"):
        fn = getattr(lake, name, None)
        if callable(fn):
            return fn(spec)
    d = lake.table_dir(spec).resolve()
    pattern = f"{d}/**/*.parquet"
    return f"read_parquet('{pattern}', union_by_name = true, hive_partitioning = false)"


def storage_layout(lake) -> str:
    """A one-line description of the storage the Lake writes (for the report)."""
    describe = getattr(lake, "describe_storage", None) or getattr(lake, "storage", None)
    if callable(describe):
        return str(describe())
    if describe is not None:
        return str(describe)
    return "Parquet: cohort tables <table>/data.parquet, patient tables <table>/patient=<id>/*.parquet"


def make_base_lake(data_dir: Path, n_patients: int, log) -> Path:
    """A real lake from `rtmap demo` on n small synthetic patients (subprocess: its own Dagster instance)."""
    rtmap = Path(sys.executable).with_name("rtmap")
    t = time.perf_counter()
    env = {**os.environ, "RTMAP_DATA_DIR": str(data_dir), "DAGSTER_HOME": str(data_dir / "dagster_home")}
    proc = subprocess.run([str(rtmap), "demo", "--data-dir", str(data_dir), "--patients", str(n_patients),
                           "--size", "small", "--seed", "7"], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"rtmap demo failed: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    log(f"  base lake: rtmap demo, {n_patients} small patients, {time.perf_counter() - t:.0f} s")
    return data_dir / "lake"


def _rename(df: pl.DataFrame, src: str, dst: str, uid_suffix: str) -> pl.DataFrame:
    cols = []
    for c, t in df.schema.items():
        if c == "patient_id":
            cols.append(pl.lit(dst, dtype=pl.String).alias(c))
        elif c == "sop_instance_uid":
            cols.append((pl.col(c) + uid_suffix).alias(c))
        elif t == pl.String:
            cols.append(pl.col(c).str.replace_all(src, dst, literal=True))
    return df.with_columns(cols) if cols else df


def replicate_lake(base_root: Path, out_root: Path, n: int) -> dict:
    """Write a lake of n patients replicated from the base lake, through the Lake API; return counts/timing."""
    from rtmap_assets.lake import Lake
    from rtmap_assets.lake.contract import TABLES

    base, lake = Lake(base_root), Lake(out_root)
    t = time.perf_counter()
    tables = {name: base.read(spec) for name, spec in TABLES.items()}
    sources = sorted(set(tables["registration_qc"]["patient_id"].to_list()))
    if not sources:
        raise RuntimeError("base lake has no registered patient")
    by_patient = {name: tables[name].partition_by("patient_id", as_dict=True) if tables[name].height else {}
                  for name in TABLES}
    # Every table is written in one commit: the state `lake_maintenance` leaves a Delta lake in (compacted),
    # which is what cohort SQL reads between refreshes (per-patient commits would take hours to replay here).
    cohort_rows: dict[str, list[pl.DataFrame]] = {n_: [] for n_ in TABLES}
    rows_written = 0
    for i in range(n):
        src, dst = sources[i % len(sources)], f"R{i:05d}"
        for name, spec in TABLES.items():
            part = by_patient[name].get((src,))
            if part is None:
                part = spec.empty()
            df = _rename(part, src, dst, f".{i}")
            if df.height:
                cohort_rows[name].append(df)
    notes = ["tables written in one commit each (the compacted state lake_maintenance produces)"]
    lake.ensure_all(TABLES.values())  # every table exists (empty) before dbt reads it, as the pipeline does
    for name, parts in cohort_rows.items():
        df = pl.concat(parts, how="diagonal_relaxed") if parts else TABLES[name].empty()
        lake.replace_all(TABLES[name], df)
        rows_written += df.height
    n_files = sum(1 for _ in out_root.rglob("*") if _.is_file())
    size_mb = sum(p.stat().st_size for p in out_root.rglob("*") if p.is_file()) / 1e6
    return {"patients": n, "source_patients": sources, "rows": rows_written, "files": n_files,
            "size_mb": round(size_mb, 1), "write_s": time.perf_counter() - t, "notes": notes}


def dbt_build(lake_root: Path, duckdb_path: Path, target: Path) -> dict:
    """`dbt build` as the warehouse asset runs it (--vars, dbt's partial-parse cache from an earlier run of
    the same project), timed, with peak RSS of dbt and its children. The parse that fills the cache is
    timed apart (`parse_s`): the asset pays it only when the project or its vars change."""
    import psutil

    dbt = str(Path(sys.executable).with_name("dbt"))
    common = ["--project-dir", str(DBT_DIR), "--profiles-dir", str(DBT_DIR), "--target-path",
              str(target), "--log-path", str(target / "logs"), "--vars",
              json.dumps({"rtmap_lake": str(lake_root), "rtmap_duckdb": str(duckdb_path)})]
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    t = time.perf_counter()
    parsed = subprocess.run([dbt, "parse", *common], capture_output=True, text=True, cwd=DBT_DIR, env=env)
    parse_s = time.perf_counter() - t
    if parsed.returncode != 0:
        return {"seconds": None, "parse_s": parse_s, "ok": False, "summary": "dbt parse failed",
                "tail": (parsed.stdout + parsed.stderr)[-1500:], "peak_rss_mb": 0.0}
    cmd = [dbt, "build", *common]
    before = load1()
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=DBT_DIR, env=env)
    peak = 0
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True)))
        except psutil.Error:
            pass
        time.sleep(0.1)
    out = proc.stdout.read() if proc.stdout else ""
    wall = time.perf_counter() - t
    summary = next((line.strip() for line in reversed(out.splitlines()) if "PASS=" in line), "")
    return {"seconds": wall, "parse_s": parse_s, "peak_rss_mb": peak / 1024**2, "ok": proc.returncode == 0,
            "summary": summary,
            "load_before": before, "load_after": load1(), **({} if proc.returncode == 0 else {"tail": out[-1500:]})}


def queries(lake) -> dict[str, tuple[str, str]]:
    """name -> (where: 'duckdb' file or 'lake', SQL). README queries first, then statisticians' questions."""
    from rtmap_assets.lake.contract import DOSE_STATISTICS, RECURRENCE_CLASSIFICATION, REGISTRATION_QC, \
        TRIAL_COVARIATES

    rc = lake_scan_sql(lake, RECURRENCE_CLASSIFICATION)
    return {
        "README: select * from patient_summary": ("duckdb", "select * from patient_summary"),
        # The README's direct-lake example, then every column of the same table.
        "README: classes from the lake's recurrence_classification": (
            "lake", f"select patient_id, level, volume_class, dawson_class from {rc}"),
        "classes per arm x level (staging view)": (
            "duckdb", "select arm, level, volume_class, count(*) n from stg_recurrence_classification "
                      "where level_present group by all order by all"),
        "classification_by_arm mart": ("duckdb", "select * from classification_by_arm"),
        "P(inside) by arm x site, high level (join covariates)": (
            "duckdb", "select r.arm, c.site, avg(r.probability_inside) p, count(*) n "
                      "from stg_recurrence_classification r join stg_trial_covariates c using (patient_id) "
                      "where r.level = 'high' group by all order by all"),
        "registration quality percentiles (staging view)": (
            "duckdb", "select engine, count(*) n, quantile_cont(landmark_distance_mm, 0.95) p95, "
                      "avg(tre_mean_mm) tre from stg_registration_qc group by engine"),
        "D95 per structure (staging view)": (
            "duckdb", "select structure, count(*) n, avg(d95_gy) d95, avg(mean_gy) mean from stg_dose_statistics "
                      "group by structure order by structure"),
        "one patient's row (patient_summary)": (
            "duckdb", "select * from patient_summary where patient_id = 'R00003'"),
        "open issues by code (staging view)": (
            "duckdb", "select stage, code, count(distinct patient_id) n from stg_pipeline_issues group by all"),
        "P(inside) by arm x t_stage, direct on the lake": (
            "lake", f"select r.arm, c.t_stage, avg(r.probability_inside) p, count(*) n from {rc} r "
                    f"join {lake_scan_sql(lake, TRIAL_COVARIATES)} c using (patient_id) where r.level = 'high' "
                    "group by all"),
        "landmark distance vs D95 of the sphere, direct on the lake": (
            "lake", f"select q.patient_id, q.landmark_distance_mm, d.d95_gy "
                    f"from {lake_scan_sql(lake, REGISTRATION_QC)} q "
                    f"join {lake_scan_sql(lake, DOSE_STATISTICS)} d using (patient_id) where d.role = 'sphere'"),
        "every column of recurrence_classification, direct on the lake": ("lake", f"select * from {rc}"),
    }


def time_queries(lake, duckdb_path: Path, repeat: int) -> list[dict]:
    import duckdb

    out = []
    for name, (where, sql) in queries(lake).items():
        times, rows, err = [], None, None
        before = load1()
        for _ in range(repeat):
            t = time.perf_counter()
            try:
                con = duckdb.connect(str(duckdb_path), read_only=True) if where == "duckdb" else duckdb.connect()
                with con:
                    rows = len(con.sql(sql).fetchall())
            except Exception as exc:  # noqa: BLE001 - a failing query is reported, not fatal
                err = f"{type(exc).__name__}: {str(exc)[:300]}"
                break
            times.append(time.perf_counter() - t)
        out.append({"query": name, "where": where, "rows": rows, "first_s": times[0] if times else None,
                    "median_s": statistics.median(times) if times else None, "max_s": max(times) if times else None,
                    "error": err, "load_before": before, "load_after": load1()})
    return out


def run_part_c(work: Path, sizes: list[int], base_patients: int, repeat: int, log,
               base_lake: Path | None = None, checkpoint=lambda partial: None) -> dict:
    from rtmap_assets.lake import Lake
    from rtmap_assets.lake.contract import REGISTRATION_QC

    work.mkdir(parents=True, exist_ok=True)
    base = base_lake or make_base_lake(work / "base", base_patients, log)
    base_patients = len(Lake(base).patients_with_rows(REGISTRATION_QC))
    results, notes = [], []
    for n in sizes:
        root = work / f"lake_{n}"
        shutil.rmtree(root, ignore_errors=True)
        rep = replicate_lake(base, root, n)
        notes += [x for x in rep["notes"] if x not in notes]
        log(f"  n={n}: wrote {rep['rows']} rows in {rep['files']} files ({rep['size_mb']} MB) in {rep['write_s']:.0f} s")
        duck = work / f"rtmap_{n}.duckdb"
        duck.unlink(missing_ok=True)
        build = dbt_build(root, duck, work / f"dbt_target_{n}")
        log(f"  n={n}: dbt build {build['seconds']:.1f} s, peak {build['peak_rss_mb']:.0f} MB, ok={build['ok']} "
            f"(load {build['load_before']}→{build['load_after']})")
        qs = time_queries(Lake(root), duck, repeat) if build["ok"] else []
        for q in qs:
            log(f"    {q['query']}: median {q['median_s'] if q['median_s'] is None else round(q['median_s'], 3)} s"
                f" ({q['rows']} rows){' ERROR ' + q['error'] if q['error'] else ''}")
        results.append({"patients": n, "lake": rep, "dbt_build": build, "queries": qs})
        checkpoint({"storage_layout": storage_layout(Lake(base)), "base_patients": base_patients,
                    "base_lake": str(base_lake) if base_lake else "rtmap demo", "sizes": results, "notes": notes})
        shutil.rmtree(root, ignore_errors=True)  # 10k patients: ~70k files; keep the disk tidy
        shutil.rmtree(work / f"dbt_target_{n}", ignore_errors=True)
        duck.unlink(missing_ok=True)
    return {"storage_layout": storage_layout(Lake(base)), "base_patients": base_patients,
            "base_lake": str(base_lake) if base_lake else "rtmap demo", "sizes": results, "notes": notes}
