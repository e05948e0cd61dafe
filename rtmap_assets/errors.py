"""One exception type for everything that is wrong with a patient's data.

A `PatientDataError` is never a crash of the pipeline: the asset layer turns it into a
`pipeline_issues` row (patient, stage, code, message, file) and goes on with the other patients.
"""

from __future__ import annotations

import polars as pl

# The row `as_issue` builds; `pipeline_issues` stores it with the time it was recorded (pipeline/issues.py).
ISSUE_ROW_SCHEMA: dict[str, pl.DataType] = {
    "patient_id": pl.String(), "stage": pl.String(), "code": pl.String(), "message": pl.String(),
    "file": pl.String(),
}


class PatientDataError(Exception):
    """Explained problem with one patient's input, e.g. a missing RTDOSE or an empty recurrence."""

    def __init__(self, code: str, message: str, *, stage: str = "", file: str | None = None):
        # One spelling for every stage (listed with meanings in rtmap_assets.issue_codes.IssueCode).
        code = str(code).upper()
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message
        self.stage = stage
        self.file = file

    def as_issue(self, patient_id: str, stage: str | None = None) -> dict[str, str | None]:
        """Row for the `pipeline_issues` table."""
        return {
            "patient_id": patient_id,
            "stage": stage or self.stage,
            "code": self.code,
            "message": self.message,
            "file": self.file,
        }
