"""Lake maintenance: compact each Delta table's small files (one per patient run) and vacuum old ones.

A replace costs ~10 ms on a compacted table and ~200 ms once a few hundred small files pile up
(docs/SCALE.md), so the nightly schedule keeps refreshes cheap; a backfill may run it by hand.
"""

import polars as pl

import dagster as dg
from rtmap_assets.defs.metadata import md_table
from rtmap_assets.defs.resources import RtmapPaths
from rtmap_assets.lake.contract import TABLES


@dg.asset(
    description="Maintenance of every lake table (Delta): compaction sorted by patient_id, a log checkpoint, "
    "and vacuum of files no snapshot younger than 7 days needs. Changes no row.",
    group_name="maintenance",
    kinds={"deltalake"},
)
def lake_maintenance(context: dg.AssetExecutionContext, paths: RtmapPaths) -> dg.MaterializeResult:
    done = [paths.lake.maintain(spec) for spec in TABLES.values()]
    report = pl.DataFrame([d for d in done if d.get("exists")])
    for d in done:
        context.log.info(f"{d}")
    return dg.MaterializeResult(metadata={
        "tables": len(report),
        "files_before": int(report["files_before"].sum()) if report.height else 0,
        "files_after": int(report["files_after"].sum()) if report.height else 0,
        "report": md_table(report.select("table", "optimize", "files_before", "files_after", "files_vacuumed")
                           if report.height else report, 20),
    })


lake_maintenance_job = dg.define_asset_job(
    "lake_maintenance_job", selection=dg.AssetSelection.assets(lake_maintenance),
    description="Compact and vacuum the lake's Delta tables.", executor_def=dg.in_process_executor)


@dg.schedule(cron_schedule="30 3 * * *", job=lake_maintenance_job, default_status=dg.DefaultScheduleStatus.RUNNING,
             description="Nightly lake maintenance (after the 02:00 refresh).")
def nightly_lake_maintenance(context: dg.ScheduleEvaluationContext):
    return dg.RunRequest(run_key=f"maintenance:{context.scheduled_execution_time:%Y-%m-%d}")
