"""Trial covariates: read the trial's CSV, keep only whitelisted, non-identifying columns."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from rtmap_assets.errors import PatientDataError

# Anything else (names, birth dates, hospital numbers, free text) stays out of the lake.
ALLOWED_COLUMNS = {
    "patient_id": pl.String,
    "arm": pl.String,
    "site": pl.String,
    "t_stage": pl.String,
    "n_stage": pl.String,
    "age_group": pl.String,
    "sex": pl.String,
    "smoking": pl.String,
    "hpv_status": pl.String,
    "months_to_relapse": pl.Float64,
}


def read_covariates(path: Path) -> tuple[pl.DataFrame, list[str]]:
    """(covariates, names of dropped columns). Missing file → empty table with the full schema."""
    if not Path(path).exists():
        return pl.DataFrame(schema=ALLOWED_COLUMNS), []
    raw = pl.read_csv(path, infer_schema_length=0)  # all strings; cast below so types never drift
    if "patient_id" not in raw.columns:
        raise PatientDataError("COVARIATES_NO_ID", f"{path}: no 'patient_id' column", file=str(path))
    keep = [c for c in raw.columns if c in ALLOWED_COLUMNS]
    dropped = [c for c in raw.columns if c not in ALLOWED_COLUMNS]
    df = raw.select([pl.col(c).cast(ALLOWED_COLUMNS[c], strict=False) for c in keep])
    for c, t in ALLOWED_COLUMNS.items():
        if c not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=t).alias(c))
    return df.select(list(ALLOWED_COLUMNS)), dropped
