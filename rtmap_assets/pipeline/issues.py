"""`pipeline_issues`: why a patient (or file) did not make it through a stage.

Each stage replaces its own rows per patient every time it runs for the patient (nothing when the
problem is gone), so the table always tells the current state, and one query lists everything that
needs a human. Issue codes and their meanings: `rtmap_assets.issue_codes.IssueCode`.
"""

from __future__ import annotations

from datetime import datetime, timezone

import polars as pl

from rtmap_assets.errors import ISSUE_ROW_SCHEMA
from rtmap_assets.lake import Lake

ISSUE_SCHEMA = {**ISSUE_ROW_SCHEMA, "recorded_at": pl.Datetime("us", "UTC")}


def issues_frame(rows: list[dict]) -> pl.DataFrame:
    now = datetime.now(timezone.utc)
    return pl.DataFrame(
        [{**{k: r.get(k) for k in ISSUE_SCHEMA if k != "recorded_at"}, "recorded_at": now} for r in rows],
        schema=ISSUE_SCHEMA,
    )


def record_issues(lake: Lake, patient_id: str, stage: str, rows: list[dict]) -> pl.DataFrame:
    """Replace this patient's issues for `stage` (an empty list clears them; nothing is written when
    there were none and are none)."""
    from rtmap_assets.lake.contract import PIPELINE_ISSUES

    df = issues_frame([{**r, "patient_id": patient_id, "stage": stage, "code": str(r["code"]).upper()} for r in rows])
    if df.is_empty() and lake.read(PIPELINE_ISSUES, patient_id=patient_id, stage=stage).is_empty():
        return df
    lake.replace_patient(PIPELINE_ISSUES, patient_id, df, stage=stage)
    return df


def read_issues(lake: Lake) -> pl.DataFrame:
    from rtmap_assets.lake.contract import PIPELINE_ISSUES

    return lake.read(PIPELINE_ISSUES)
