"""Gold, cohort level: covariates, the cohort uncertainty radius and the seed's all-patients CSV.

These follow the per-patient assets by declarative automation (`eager`), so a new or re-run patient
is reflected without anyone asking.
"""

import hashlib

import polars as pl

import dagster as dg
from rtmap_assets.defs.lake_io import read_upstream
from rtmap_assets.defs.metadata import md_table
from rtmap_assets.defs.resources import RtmapPaths, TrialSettings
from rtmap_assets.dosimetry.uncertainty import cohort_radius
from rtmap_assets.lake.contract import COHORT_UNCERTAINTY, RECURRENCE_CLASSIFICATION, REGISTRATION_QC, TRIAL_COVARIATES
from rtmap_assets.pipeline.covariates import read_covariates
from rtmap_assets.pipeline.dosimetry_patient import write_seed_csvs

COHORT = "cohort"

# A failed patient never materialises its partition, and plain eager() would wait for it forever:
# the cohort follows whatever patients are done, and never runs while an upstream run is in progress.
COHORT_AUTOMATION = dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())


@dg.asset(
    description="Trial covariates (data/covariates/<trial>.csv) validated and stored as Parquet: arm, site, stage, "
    "age band, … — only whitelisted, non-identifying columns enter the lake.",
    group_name=COHORT,
    kinds={"deltalake", "csv"},
)
def trial_covariates(context: dg.AssetExecutionContext, paths: RtmapPaths, trial: TrialSettings) -> dg.MaterializeResult:
    df, dropped = read_covariates(paths.covariates_dir / f"{trial.config.trial}.csv")
    out = paths.lake.replace_all(TRIAL_COVARIATES, df)
    if dropped:
        context.log.warning(f"covariate columns not whitelisted, left out of the lake: {dropped}")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(hashlib.sha1(df.write_csv().encode()).hexdigest()[:16]),
        metadata={"dagster/row_count": df.height, "dropped_columns": ", ".join(dropped) or "none",
                  "path": dg.MetadataValue.path(str(out)), "preview": md_table(df)},
    )


def landmark_distances(qc: pl.DataFrame) -> pl.DataFrame:
    """Every registered patient's landmark distance (the uncertainty input of rule 5)."""
    return qc.select("patient_id", pl.col("landmark_distance_mm").cast(pl.Float64))


@dg.asset(
    deps=[REGISTRATION_QC.name],
    description="Cohort view of registration uncertainty: every patient's landmark distance and, for the "
    "'cohort' radius policy, the percentile radius all classifications use (rule 5).",
    group_name=COHORT,
    kinds={"deltalake"},
    automation_condition=COHORT_AUTOMATION,
)
def cohort_uncertainty(context: dg.AssetExecutionContext, paths: RtmapPaths, trial: TrialSettings) -> dg.MaterializeResult:
    config = trial.config
    table = landmark_distances(read_upstream(context, paths.lake, REGISTRATION_QC,
                                             columns=["patient_id", "landmark_distance_mm"]))
    d = table["landmark_distance_mm"].drop_nulls()
    radius = cohort_radius(d.to_list(), config.uncertainty.cohort_percentile) if d.len() else None
    table = table.with_columns(
        pl.lit(radius, dtype=pl.Float64).alias("cohort_radius_mm"),
        pl.lit(config.uncertainty.cohort_percentile).alias("cohort_percentile"),
        pl.lit(config.uncertainty.policy).alias("policy_in_use"),
    )
    out = paths.lake.replace_all(COHORT_UNCERTAINTY, table)
    # The data version is what the classifications depend on: it changes only when the cohort radius is
    # in use and changes, so a new patient does not re-classify everyone under the fixed/patient policies.
    used = f"{radius:.4f}" if config.uncertainty.policy == "cohort" and radius is not None else config.uncertainty.policy
    return dg.MaterializeResult(
        data_version=dg.DataVersion(used),
        metadata={"dagster/row_count": table.height, "cohort_radius_mm": radius,
                  "policy": config.uncertainty.policy, "path": dg.MetadataValue.path(str(out))},
    )


@dg.asset(
    deps=[RECURRENCE_CLASSIFICATION.name],
    description="The seed workflow's cohort CSV, <trial>_all_classifications.csv, for existing users.",
    group_name=COHORT,
    kinds={"csv"},
    automation_condition=COHORT_AUTOMATION,
)
def seed_classification_csv(context: dg.AssetExecutionContext, paths: RtmapPaths,
                            trial: TrialSettings) -> dg.MaterializeResult:
    table = read_upstream(context, paths.lake, RECURRENCE_CLASSIFICATION)
    out = write_seed_csvs(table, paths.lake.root / "seed_csv", trial.config.trial, per_patient=False)[0]
    return dg.MaterializeResult(metadata={"dagster/row_count": table.height, "path": dg.MetadataValue.path(str(out))})
