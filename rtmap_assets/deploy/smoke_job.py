"""A tiny per-patient job for checking a deployment profile end to end (no imaging, seconds).

Two independent per-patient assets (so one run has two steps that can run on two workers at once)
write their rows into Delta tables through DeltaStore, the way the real per-patient assets do, and
record which process and host ran them. `dagster job execute -m rtmap_assets.deploy.smoke_job
-j smoke_job` with the Celery run config runs it on the workers.
"""

# no `from __future__ import annotations`: Dagster reads the Config annotations at definition time

import os
import socket
import time

import dagster as dg
import polars as pl
from dagster_celery import celery_executor

from rtmap_assets.lake.contract import TableSpec
from rtmap_assets.lake.delta_store import DeltaStore

PATIENTS = dg.StaticPartitionsDefinition(["SMOKE-01", "SMOKE-02", "SMOKE-03"])
SMOKE_STEPS = TableSpec(
    name="smoke_steps",
    partitioning="patient",
    schema={"patient_id": pl.String, "step": pl.String, "pid": pl.Int64, "host": pl.String,
            "started_s": pl.Float64, "ended_s": pl.Float64},
    replace_keys=("patient_id", "step"),
    description="One row per smoke step: which process ran it, when.",
)


class SmokeConfig(dg.Config):
    lake_root: str
    step_seconds: float = 1.0  # long enough that the two steps of a run overlap on two workers


def _step(context: dg.AssetExecutionContext, config: SmokeConfig, step: str) -> None:
    started = time.time()
    time.sleep(config.step_seconds)
    patient_id = context.partition_key
    row = pl.DataFrame({"patient_id": [patient_id], "step": [step], "pid": [os.getpid()],
                        "host": [socket.gethostname()], "started_s": [started], "ended_s": [time.time()]})
    version = DeltaStore(config.lake_root).replace_patient(SMOKE_STEPS, patient_id, row, step=step)
    context.log.info(f"{step} of {patient_id} in pid {os.getpid()}: table version {version}")


@dg.asset(partitions_def=PATIENTS)
def smoke_metrics(context: dg.AssetExecutionContext, config: SmokeConfig) -> None:
    _step(context, config, "metrics")


@dg.asset(partitions_def=PATIENTS)
def smoke_issues(context: dg.AssetExecutionContext, config: SmokeConfig) -> None:
    _step(context, config, "issues")


defs = dg.Definitions(
    assets=[smoke_metrics, smoke_issues],
    jobs=[dg.define_asset_job("smoke_job", selection=[smoke_metrics, smoke_issues],
                              partitions_def=PATIENTS, executor_def=celery_executor)],
)


def smoke_job() -> dg.JobDefinition:
    """The job, for `dg.reconstructable(smoke_job)` (workers import this module and call it)."""
    return defs.resolve_job_def("smoke_job")


def smoke_run_config(lake_root: str, celery_run_config: dict, step_seconds: float = 1.0) -> dict:
    cfg = {"config": {"lake_root": lake_root, "step_seconds": step_seconds}}
    return {**celery_run_config, "ops": {"smoke_metrics": cfg, "smoke_issues": cfg}}
