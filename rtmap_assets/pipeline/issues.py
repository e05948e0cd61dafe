"""`pipeline_issues`: why a patient (or file) did not make it through a stage.

Stored as `<lake>/pipeline_issues/patient=<id>/stage=<stage>.parquet`; a stage rewrites its own file
each time it runs for the patient (empty when the problem is gone), so the table always tells the
current state, and one query lists everything that needs a human.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from rtmap_assets.lake import Lake, write_parquet

ISSUE_SCHEMA = {
    "patient_id": pl.String,
    "stage": pl.String,
    "code": pl.String,
    "message": pl.String,
    "file": pl.String,
    "recorded_at": pl.Datetime("us", "UTC"),
}


def issues_frame(rows: list[dict]) -> pl.DataFrame:
    now = datetime.now(timezone.utc)
    return pl.DataFrame(
        [{**{k: r.get(k) for k in ISSUE_SCHEMA if k != "recorded_at"}, "recorded_at": now} for r in rows],
        schema=ISSUE_SCHEMA,
    )


def issue_path(lake: Lake, patient_id: str, stage: str) -> Path:
    return lake.table_dir("pipeline_issues") / f"patient={patient_id}" / f"stage={stage}.parquet"


def record_issues(lake: Lake, patient_id: str, stage: str, rows: list[dict]) -> pl.DataFrame:
    """Replace this patient's issues for `stage` (an empty list clears them)."""
    df = issues_frame([{**r, "patient_id": patient_id, "stage": stage, "code": str(r["code"]).upper()} for r in rows])
    write_parquet(df, issue_path(lake, patient_id, stage))
    return df


def read_issues(lake: Lake) -> pl.DataFrame:
    files = sorted(lake.table_dir("pipeline_issues").glob("patient=*/stage=*.parquet"))
    if not files:
        return pl.DataFrame(schema=ISSUE_SCHEMA)
    return pl.concat([pl.read_parquet(f) for f in files])
