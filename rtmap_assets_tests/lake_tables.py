"""Small lake tables and writers shared by the DeltaStore tests (local and s3://)."""

from __future__ import annotations

import datetime as dt

import polars as pl

from rtmap_assets.lake.contract import TableSpec
from rtmap_assets.lake.delta_store import DeltaStore

METRICS = TableSpec(
    name="metrics",
    partitioning="patient",
    schema={
        "patient_id": pl.String,
        "structure": pl.String,
        "volume_cc": pl.Float64,
        "n_voxels": pl.UInt32,
        "scan_date": pl.Date,
        "computed_at": pl.Datetime("us"),
        "run": pl.Int64,
    },
)
ISSUES = TableSpec(
    name="issues",
    partitioning="patient",
    schema={"patient_id": pl.String, "stage": pl.String, "code": pl.String, "message": pl.String},
    replace_keys=("patient_id", "stage"),
)
CATALOG = TableSpec(name="catalog", partitioning="cohort",
                    schema={"patient_id": pl.String, "n_files": pl.Int64})


def metrics_rows(patient_id: str, n: int, run: int = 0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "patient_id": [patient_id] * n,
            "structure": [f"S{i}" for i in range(n)],
            "volume_cc": [1.5 * i + run for i in range(n)],
            "n_voxels": [10 * i for i in range(n)],
            "scan_date": [dt.date(2024, 1, 2)] * n,
            "computed_at": [dt.datetime(2024, 1, 2, 3, 4, 5, 678)] * n,
            "run": [run] * n,
        },
        schema=METRICS.schema,
    )


def _writer(root: str, patient_id: str, rounds: int, n_rows: int, retries=None) -> None:
    """Replace `patient_id` `rounds` times; put (commit retries, versions returned) on `retries`."""
    store = DeltaStore(root)
    versions = [store.replace_patient(METRICS, patient_id, metrics_rows(patient_id, n_rows, run=run))
                for run in range(rounds)]
    if retries is not None:
        retries.put((store.commit_retries, versions))
