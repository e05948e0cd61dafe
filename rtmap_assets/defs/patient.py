"""Silver/gold per patient (one dynamic partition each): imaging, then dosimetry and classification.

Both steps run in one process per patient (`patient_job` uses the in-process executor): a step
subprocess costs seconds, more than the dosimetry itself. A patient whose input fingerprint, code
version and configuration are unchanged is not recomputed: the step re-reports the stored result.
"""

import hashlib
import json
import shutil
import traceback
from pathlib import Path

import polars as pl

import dagster as dg
from rtmap_assets.config import TrialConfig
from rtmap_assets.defs.checks import (
    CLASSIFICATION_CHECKS,
    REGISTRATION_CHECKS,
    classification_complete,
    dose_statistics_sane,
    ground_truth_check,
    registration_checks,
)
from rtmap_assets.defs.cohort import current_cohort_radius
from rtmap_assets.defs.metadata import md_table
from rtmap_assets.defs.partitions import patients_partitions
from rtmap_assets.defs.resources import RtmapPaths
from rtmap_assets.dosimetry.uncertainty import sphere_radius
from rtmap_assets.errors import PatientDataError
from rtmap_assets.lake import Lake
from rtmap_assets.pipeline.dosimetry_patient import run_dosimetry, write_seed_csvs
from rtmap_assets.pipeline.imaging_patient import run_imaging
from rtmap_assets.pipeline.issues import record_issues
from rtmap_assets.pipeline.volumes import PatientVolumes

SILVER, GOLD = "patient_silver", "patient_gold"
# Bump when the science of a step changes: every patient is then recomputed once.
IMAGING_CODE_VERSION = "imaging-2"  # mapped masks keep their volume (grid.resample_mask)
DOSIMETRY_CODE_VERSION = "dosimetry-2"  # level-named CTVs, per-arm high CTV, sub-voxel sphere
HEAVY_POOL = "rtmap_patient_heavy"

# Classifications follow the cohort radius: when cohort_uncertainty's data version changes (only under
# the 'cohort' radius policy), every registered patient is re-classified — cheap, no re-registration.
RECLASSIFY_ON_COHORT_RADIUS = (
    dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed()).allow(
        dg.AssetSelection.assets("cohort_uncertainty"))
    & ~dg.AutomationCondition.any_deps_match(dg.AutomationCondition.missing()).allow(
        dg.AssetSelection.assets("registration_qc"))
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("cohort radius changed")


def config_hash(config: TrialConfig) -> str:
    return hashlib.sha1(config.model_dump_json().encode()).hexdigest()[:12]


def _version(*parts: str) -> str:
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def _fail(lake: Lake, pid: str, stage: str, err: Exception, context: dg.AssetExecutionContext) -> dg.Failure:
    """Record the reason in pipeline_issues and the run log; the partition fails, the others go on."""
    if isinstance(err, PatientDataError):
        row = err.as_issue(pid, stage)
    else:
        row = {"code": "UNEXPECTED_ERROR", "message": f"{type(err).__name__}: {err}", "file": None}
        context.log.error(traceback.format_exc())
    record_issues(lake, pid, stage, [row])
    context.log.error(f"{pid} [{row['code']}] {row['message']}")
    return dg.Failure(description=f"{pid}: [{row['code']}] {row['message']}", allow_retries=False)


def _stored(lake: Lake, table: str, pid: str) -> pl.DataFrame:
    path = lake.patient_table(table, pid)
    return pl.read_parquet(path) if path.exists() else pl.DataFrame()


def _prune_versions(folder: Path, keep: Path) -> None:
    for old in folder.iterdir() if folder.exists() else []:
        if old.is_dir() and old != keep:
            shutil.rmtree(old, ignore_errors=True)


def _with_overlap(structures: pl.DataFrame, overlap: pl.DataFrame) -> pl.DataFrame:
    """Comparison structures' mapped-vs-planning Dice / HD95 / mean surface distance on their mapped rows."""
    metrics = overlap.select("structure", pl.lit("mapped").alias("space"), "planning_structure",
                             pl.col("dice").alias("dice_vs_planning"), "hd95_mm", "msd_mm")
    return structures.join(metrics, on=["structure", "space"], how="left")


def _load_truth(paths: RtmapPaths, trial: str, pid: str) -> dict | None:
    f = paths.truth_root / trial / f"{pid}.json"
    return json.loads(f.read_text()) if f.exists() else None


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "registration_qc",
            deps=["patient_manifest"],
            description="Per patient: relapse→planning registration (engine, timings) and its quality: landmark "
            "centroid distance (the uncertainty), Jacobian minimum and folding, comparison-structure Dice/HD95, "
            "and TRE / recurrence Dice against the truth for synthetic patients.",
            group_name=SILVER,
            kinds={"parquet", "simpleitk"},
            code_version=IMAGING_CODE_VERSION,
        ),
        dg.AssetSpec(
            "mapped_structures",
            deps=["patient_manifest"],
            description="Per patient: structures on the planning working grid (planning CTVs, organs, landmark) and "
            "relapse structures mapped into planning space (recurrence, landmark, comparison), with centroid (mm), "
            "volume (cc), matched alias and the NIfTI mask path.",
            group_name=SILVER,
            kinds={"parquet", "nifti"},
            code_version=IMAGING_CODE_VERSION,
        ),
    ],
    check_specs=REGISTRATION_CHECKS,
    partitions_def=patients_partitions,
    pool=HEAVY_POOL,
    can_subset=False,
)
def patient_registration(context: dg.AssetExecutionContext, paths: RtmapPaths):
    """DICOM → working grid → registration → mapped structures, for one patient."""
    pid = context.partition_key
    lake, config = paths.lake, paths.config()
    manifest = lake.read_table("patient_manifest")
    rows = manifest.filter(pl.col("patient_id") == pid) if manifest.height else manifest
    if rows.is_empty():
        raise _fail(lake, pid, "imaging", PatientDataError(
            "NOT_IN_MANIFEST", "patient has no complete set of roles in patient_manifest; see its manifest issues"),
            context)
    fingerprint = rows["input_fingerprint"][0]
    version = _version(fingerprint, IMAGING_CODE_VERSION, config_hash(config))

    qc_old = _stored(lake, "registration_qc", pid)
    if qc_old.height and qc_old["data_version"][0] == version and Path(qc_old["volumes_dir"][0]).exists():
        context.log.info(f"{pid}: inputs, code and config unchanged — reusing stored registration")
        qc, structures, recomputed = qc_old, _stored(lake, "mapped_structures", pid), False
    else:
        out_dir = lake.patient_files(pid) / f"v-{version}-{context.run_id[:8]}"
        try:
            result = run_imaging(rows, config, out_dir, truth=_load_truth(paths, config.trial, pid),
                                 raw_root=paths.raw_root)
        except Exception as err:  # noqa: BLE001 - every failure becomes a pipeline_issues row
            shutil.rmtree(out_dir, ignore_errors=True)
            raise _fail(lake, pid, "imaging", err, context) from err
        provenance = [pl.lit(fingerprint).alias("input_fingerprint"), pl.lit(version).alias("data_version"),
                      pl.lit(str(out_dir)).alias("volumes_dir"), pl.lit(context.run_id).alias("run_id")]
        qc = result.registration_qc.with_columns(provenance)
        structures = _with_overlap(result.mapped_structures, result.structure_qc).with_columns(provenance[1:3])
        lake.write_patient_table("registration_qc", pid, qc)
        lake.write_patient_table("mapped_structures", pid, structures)
        _prune_versions(lake.patient_files(pid), keep=out_dir)
        record_issues(lake, pid, "imaging", [])
        recomputed = True

    q = qc.row(0, named=True)
    yield dg.MaterializeResult(
        asset_key="registration_qc",
        data_version=dg.DataVersion(version),
        metadata={
            "recomputed": recomputed,
            "engine": q.get("engine"),
            "landmark_distance_mm": q.get("landmark_distance_mm"),
            "jacobian_min": q.get("jacobian_min"),
            "folding_fraction": q.get("folding_fraction"),
            "tre_mean_mm": q.get("tre_mean_mm"),
            "tre_max_mm": q.get("tre_max_mm"),
            "recurrence_dice_truth": q.get("recurrence_dice_truth"),
            "comparison_dice_min": structures["dice_vs_planning"].min() if "dice_vs_planning" in structures.columns
            else None,
            "seconds_total": q.get("total_s"),
            "volumes_dir": dg.MetadataValue.path(q["volumes_dir"]),
        },
    )
    yield dg.MaterializeResult(
        asset_key="mapped_structures",
        data_version=dg.DataVersion(version),
        metadata={
            "dagster/row_count": structures.height,
            "preview": md_table(structures.select(
                [c for c in ("structure", "role", "space", "matched_alias", "volume_cc") if c in structures.columns])),
        },
    )
    yield from registration_checks(q, config)


def _radius_inputs(lake: Lake, config: TrialConfig, pid: str) -> tuple[float | None, float | None]:
    """(patient landmark distance, cohort radius or None) for the radius policy.

    The cohort radius is computed from the patients registered so far, as cohort_uncertainty does; when
    that asset's radius changes, automation re-classifies everyone (RECLASSIFY_ON_COHORT_RADIUS).
    """
    qc = _stored(lake, "registration_qc", pid)
    distance = qc["landmark_distance_mm"][0] if qc.height else None
    cohort = current_cohort_radius(lake, config) if config.uncertainty.policy == "cohort" else None
    return distance, cohort


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "recurrence_classification",
            deps=["registration_qc", "mapped_structures", "cohort_uncertainty"],
            description="One row per patient × prescription level: trial arm (and where it came from), uncertainty "
            "and sphere radius, centroid dose, seed centroid and volume classes, Dawson fraction/class, Mohamed "
            "type and the probability of being inside the 95 % isodose.",
            group_name=GOLD,
            kinds={"parquet"},
            code_version=DOSIMETRY_CODE_VERSION,
            automation_condition=RECLASSIFY_ON_COHORT_RADIUS,
        ),
        dg.AssetSpec(
            "dose_statistics",
            deps=["registration_qc", "mapped_structures", "cohort_uncertainty"],
            description="Per structure (CTVs, organs, mapped recurrence, sphere): volume, mean/min/max, D98/D95/D50/D2 "
            "and V95 % of each level. Conventions in docs/DOSIMETRY.md.",
            group_name=GOLD,
            kinds={"parquet"},
            code_version=DOSIMETRY_CODE_VERSION,
            automation_condition=RECLASSIFY_ON_COHORT_RADIUS,
        ),
    ],
    check_specs=CLASSIFICATION_CHECKS,
    partitions_def=patients_partitions,
    can_subset=False,
)
def patient_classification(context: dg.AssetExecutionContext, paths: RtmapPaths):
    """Uncertainty → sphere → isodoses → arm → classes, dose statistics and the overlay figure."""
    pid = context.partition_key
    lake, config = paths.lake, paths.config()
    qc = _stored(lake, "registration_qc", pid)
    if qc.is_empty():
        raise _fail(lake, pid, "dosimetry", PatientDataError("NO_REGISTRATION", "registration_qc missing"), context)
    volumes_dir = Path(qc["volumes_dir"][0])
    try:
        volumes = PatientVolumes.load(volumes_dir)
        distance, cohort = _radius_inputs(lake, config, pid)
        radius = sphere_radius(config.uncertainty, patient_distance_mm=distance, cohort_radius_mm=cohort)
        covariates = lake.read_table("trial_covariates")
        arm_row = covariates.filter(pl.col("patient_id") == pid) if covariates.height else covariates
        covariate_arm = arm_row["arm"][0] if arm_row.height and "arm" in arm_row.columns else None
        result = run_dosimetry(volumes, config, radius_mm=radius.radius_mm, sigma_mm=float(distance or 0.0),
                               covariate_arm=covariate_arm, figure_path=volumes_dir / "overlay.png")
        classification = result.classification.with_columns(pl.lit(radius.policy).alias("radius_policy"))
        lake.write_patient_table("recurrence_classification", pid, classification)
        lake.write_patient_table("dose_statistics", pid, result.dose_statistics)
        write_seed_csvs(classification, lake.root / "seed_csv", config.trial)
    except Exception as err:  # noqa: BLE001 - every failure becomes a pipeline_issues row
        raise _fail(lake, pid, "dosimetry", err, context) from err
    # Non-fatal findings (arm mismatch, centroid outside the dose grid, …) stay queryable.
    record_issues(lake, pid, "dosimetry", result.issues)
    for issue in result.issues:
        context.log.warning(f"{pid}: [{issue['code']}] {issue['message']}")

    version = _version(qc["data_version"][0], DOSIMETRY_CODE_VERSION, f"{radius.radius_mm:.4f}")
    c = classification.filter(pl.col("level_present")) if "level_present" in classification.columns else classification
    cols = [k for k in ("level", "prescription_gy", "centroid_class", "volume_class", "dawson_class", "mohamed_type",
                        "probability_inside") if k in c.columns]
    first = classification.row(0, named=True)
    yield dg.MaterializeResult(
        asset_key="recurrence_classification",
        data_version=dg.DataVersion(version),
        metadata={
            "dagster/row_count": classification.height,
            "arm": first.get("arm"),
            "arm_source": first.get("arm_source"),
            "uncertainty_mm": first.get("uncertainty_mm"),
            "radius_mm": radius.radius_mm,
            "radius_policy": radius.policy,
            "classes": md_table(c.select(cols)),
            "overlay": dg.MetadataValue.path(str(result.figure_path or "")),
        },
    )
    yield dg.MaterializeResult(
        asset_key="dose_statistics",
        data_version=dg.DataVersion(version),
        metadata={"dagster/row_count": result.dose_statistics.height,
                  "preview": md_table(result.dose_statistics.select(
                      [k for k in ("structure", "volume_cc", "mean_gy", "d95_gy") if k in result.dose_statistics.columns]))},
    )
    yield classification_complete(classification)
    yield ground_truth_check(classification, _load_truth(paths, config.trial, pid))
    yield dose_statistics_sane(result.dose_statistics)
