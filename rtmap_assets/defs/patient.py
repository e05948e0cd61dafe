"""Silver/gold per patient (one dynamic partition each): imaging, then dosimetry and classification.

Both steps run in one process per patient (`patient_job` uses the in-process executor): a step
subprocess costs seconds, more than the dosimetry itself. Each step's data version is its inputs'
versions + its code version + the hash of only the configuration sections it reads; a step whose data
version equals the stored one re-reports the stored result instead of recomputing.
"""

import json
import shutil
import traceback
from pathlib import Path

import polars as pl
import SimpleITK as sitk

import dagster as dg
from rtmap_assets.config import TrialConfig
from rtmap_assets.defs.checks import (
    CLASSIFICATION_CHECKS,
    REGISTRATION_CHECKS,
    classification_complete,
    dose_statistics_sane,
    ground_truth_check,
    known_warp_check,
    registration_checks,
)
from rtmap_assets.defs.lake_io import read_upstream
from rtmap_assets.defs.metadata import md_table
from rtmap_assets.defs.partitions import patients_partitions
from rtmap_assets.defs.resources import RtmapPaths, TrialSettings
from rtmap_assets.defs.versions import (
    DOSIMETRY_CODE_VERSION,
    IMAGING_CODE_VERSION,
    classification_outputs,
    classification_radius,
    dosimetry_version,
    imaging_version,
)
from rtmap_assets.dicom.manifest import complete_rows
from rtmap_assets.dicom.path_tokens import redact, resolver
from rtmap_assets.errors import PatientDataError
from rtmap_assets.figures.viewer import build_patient_viewer
from rtmap_assets.lake import Lake
from rtmap_assets.lake.contract import (
    COHORT_UNCERTAINTY,
    DICOM_FILES,
    DOSE_STATISTICS,
    MAPPED_STRUCTURES,
    PATIENT_MANIFEST,
    PIPELINE_ISSUES,
    RECURRENCE_CLASSIFICATION,
    REGISTRATION_QC,
    TRIAL_COVARIATES,
)
from rtmap_assets.pipeline.dosimetry_patient import run_dosimetry, write_seed_csvs
from rtmap_assets.pipeline.imaging_patient import run_imaging
from rtmap_assets.pipeline.issues import record_issues
from rtmap_assets.pipeline.volumes import PatientVolumes

SILVER, GOLD = "patient_silver", "patient_gold"
# Bump when the science of a step changes: every patient is then recomputed once.
HEAVY_POOL = "rtmap_patient_heavy"
VIEWER_DOSE_FLOOR = 0.3  # the viewer's dose wash is hidden below this fraction of the highest prescription

# Classifications follow the cohort radius and the covariates: when cohort_uncertainty's data version
# changes (only under the 'cohort' radius policy) or trial_covariates' does (a corrected arm), every
# registered patient's classification step runs; it recomputes only where its own data version changed.
RECLASSIFY_ON_COHORT_CHANGE = (
    dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed()).allow(
        dg.AssetSelection.assets(COHORT_UNCERTAINTY.name, TRIAL_COVARIATES.name))
    & ~dg.AutomationCondition.any_deps_match(dg.AutomationCondition.missing()).allow(
        dg.AssetSelection.assets(REGISTRATION_QC.name))
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("cohort radius or covariates changed")


def _fail(lake: Lake, pid: str, stage: str, err: Exception, context: dg.AssetExecutionContext, *,
          redact_paths: list[str] | None = None) -> dg.Failure:
    """Record the reason in pipeline_issues and the run log; the partition fails, the others go on.

    `redact_paths` (rule 17, hashed export paths): catalog paths replaced by their tokens in the row."""
    if isinstance(err, PatientDataError):
        row = err.as_issue(pid, stage)
    else:
        row = {"code": "UNEXPECTED_ERROR", "message": f"{type(err).__name__}: {err}", "file": None}
        context.log.error(traceback.format_exc())
    if redact_paths:
        rel = {str(Path(p)) for p in redact_paths}
        row = {**row, "message": redact(row["message"], rel), "file": redact(_catalog_relative(row.get("file"), lake), rel)}
    record_issues(lake, pid, stage, [row])
    context.log.error(f"{pid} [{row['code']}] {row['message']}")
    return dg.Failure(description=f"{pid}: [{row['code']}] {row['message']}", allow_retries=False)


def _catalog_relative(file: str | None, lake: Lake) -> str | None:
    """A reader's file path as the catalog names it (relative to the raw root, <data>/raw)."""
    raw = str((lake.root.parent / "raw").resolve()) + "/"
    return file[len(raw):] if file and file.startswith(raw) else file


def _prune_versions(folder: Path, keep: Path) -> None:
    for old in folder.iterdir() if folder.exists() else []:
        if old.is_dir() and old != keep:
            shutil.rmtree(old, ignore_errors=True)


def _with_overlap(structures: pl.DataFrame, overlap: pl.DataFrame) -> pl.DataFrame:
    """Comparison structures' mapped-vs-planning Dice / HD95 / mean surface distance on their mapped rows."""
    metrics = overlap.select("structure", pl.lit("mapped").alias("space"), "planning_structure",
                             pl.col("dice").alias("dice_vs_planning"), "hd95_mm", "msd_mm")
    return structures.join(metrics, on=["structure", "space"], how="left")


def _relative(df: pl.DataFrame, columns: tuple[str, ...], lake: Lake) -> pl.DataFrame:
    """Stored paths relative to the lake root, so the data folder can move."""
    prefix = str(lake.root.resolve()) + "/"
    return df.with_columns([pl.col(c).str.strip_prefix(prefix) for c in columns if c in df.columns])


def _load_truth(paths: RtmapPaths, trial: str, pid: str) -> dict | None:
    f = paths.truth_root / trial / f"{pid}.json"
    return json.loads(f.read_text()) if f.exists() else None


def _issues_output(key: str, rows: int) -> dg.MaterializeResult:
    return dg.MaterializeResult(asset_key=key, metadata={"dagster/row_count": rows})


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            REGISTRATION_QC.name, deps=[PATIENT_MANIFEST.name, DICOM_FILES.name],
            description="Per patient: relapse→planning registration (engine, timings) and its quality: landmark "
            "centroid distance (the uncertainty), Jacobian minimum and folding, comparison-structure Dice/HD95.",
            group_name=SILVER, kinds={"deltalake", "simpleitk"}, code_version=IMAGING_CODE_VERSION),
        dg.AssetSpec(
            MAPPED_STRUCTURES.name, deps=[PATIENT_MANIFEST.name, DICOM_FILES.name],
            description="Per patient: structures on the planning working grid (planning CTVs, organs, landmark) and "
            "relapse structures mapped into planning space, with centroid (mm), volume (cc), matched alias and the "
            "NIfTI mask path (relative to the lake root).",
            group_name=SILVER, kinds={"deltalake", "nifti"}, code_version=IMAGING_CODE_VERSION),
        dg.AssetSpec(
            "imaging_issues", deps=[PATIENT_MANIFEST.name, DICOM_FILES.name],
            description="The imaging step's pipeline_issues rows for the patient (stage 'imaging').",
            group_name=SILVER, kinds={"deltalake"}, code_version=IMAGING_CODE_VERSION),
    ],
    check_specs=REGISTRATION_CHECKS,
    partitions_def=patients_partitions,
    pool=HEAVY_POOL,
    can_subset=False,
)
def patient_registration(context: dg.AssetExecutionContext, paths: RtmapPaths, trial: TrialSettings):
    """DICOM → working grid → registration → mapped structures, for one patient."""
    pid = context.partition_key
    lake, config = paths.lake, trial.config
    # incomplete patients keep manifest rows for what was found; only complete ones are processed
    rows = complete_rows(read_upstream(context, lake, PATIENT_MANIFEST, patient_id=pid))
    if rows.is_empty():
        raise _fail(lake, pid, "imaging", PatientDataError(
            "NOT_IN_MANIFEST", "patient has no complete set of roles in patient_manifest; see its manifest issues"),
            context)
    fingerprint = rows["input_fingerprint"][0]
    version = imaging_version(fingerprint, config)
    # rule 17: with hashed export paths the manifest names files by catalog tokens; only the catalog resolves them
    patient_files = read_upstream(context, lake, DICOM_FILES, patient_id=pid, columns=["path"])["path"].to_list()
    catalog_paths = resolver(patient_files) if config.privacy.hash_export_paths else None

    qc_old = lake.read(REGISTRATION_QC, patient_id=pid)
    if qc_old.height and qc_old["data_version"][0] == version and lake.absolute(qc_old["volumes_dir"][0]).exists():
        context.log.info(f"{pid}: inputs, code and imaging configuration unchanged — reusing stored registration")
        qc, structures, recomputed = qc_old, lake.read(MAPPED_STRUCTURES, patient_id=pid), False
    else:
        out_dir = lake.patient_files(pid) / f"v-{version}-{context.run_id[:8]}"
        try:
            result = run_imaging(rows, config, out_dir, raw_root=paths.raw_root, path_of=catalog_paths)
            truth = _load_truth(paths, config.trial, pid)
            if truth is not None:  # synthetic patient: TRE / recurrence Dice against the generator's truth
                from rtmap_synth.evaluation import with_truth_metrics

                result.registration_qc = with_truth_metrics(result.registration_qc, out_dir, truth)
        except Exception as err:  # noqa: BLE001 - every failure becomes a pipeline_issues row
            shutil.rmtree(out_dir, ignore_errors=True)
            raise _fail(lake, pid, "imaging", err, context,
                        redact_paths=patient_files if config.privacy.hash_export_paths else None) from err
        provenance = [pl.lit(fingerprint).alias("input_fingerprint"), pl.lit(version).alias("data_version"),
                      pl.lit(lake.relative(out_dir)).alias("volumes_dir"), pl.lit(context.run_id).alias("run_id")]
        qc = _relative(result.registration_qc.with_columns(provenance),
                       ("transform_path", "registered_image_path"), lake)
        structures = _relative(_with_overlap(result.mapped_structures, result.structure_qc).with_columns(
            provenance[1:3]), ("mask_path",), lake)
        lake.replace_patient(REGISTRATION_QC, pid, qc)
        lake.replace_patient(MAPPED_STRUCTURES, pid, structures)
        _prune_versions(lake.patient_files(pid), keep=out_dir)
        recomputed = True
    issues = record_issues(lake, pid, "imaging", [])

    q = qc.row(0, named=True)
    yield dg.MaterializeResult(
        asset_key=REGISTRATION_QC.name,
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
            "comparison_dice_min": structures["dice_vs_planning"].min(),
            "seconds_total": q.get("total_s"),
            "volumes_dir": dg.MetadataValue.path(str(lake.absolute(q["volumes_dir"]))),
        },
    )
    yield dg.MaterializeResult(
        asset_key=MAPPED_STRUCTURES.name,
        data_version=dg.DataVersion(version),
        metadata={
            "dagster/row_count": structures.height,
            "preview": md_table(structures.select("structure", "role", "space", "matched_alias", "volume_cc")),
        },
    )
    yield _issues_output("imaging_issues", issues.height)
    yield from registration_checks(q, config)
    yield known_warp_check(q, has_truth=(paths.truth_root / config.trial / f"{pid}.json").exists())


def _radius_inputs(context, lake: Lake, config: TrialConfig, pid: str) -> tuple[float | None, float | None]:
    """(patient landmark distance, cohort radius as cohort_uncertainty stored it, or None)."""
    qc = read_upstream(context, lake, REGISTRATION_QC, patient_id=pid)
    distance = qc["landmark_distance_mm"][0] if qc.height else None
    cohort = None
    if config.uncertainty.policy == "cohort":
        stored = read_upstream(context, lake, COHORT_UNCERTAINTY)["cohort_radius_mm"].drop_nulls()
        cohort = float(stored[0]) if stored.len() else None
    return distance, cohort


def _gold(key: str, description: str, kinds: set[str]) -> dg.AssetSpec:
    """An output of the classification step: everything it reads, automated like the classification."""
    return dg.AssetSpec(
        key, deps=[REGISTRATION_QC.name, MAPPED_STRUCTURES.name, COHORT_UNCERTAINTY.name, TRIAL_COVARIATES.name],
        description=description, group_name=GOLD, kinds=kinds, code_version=DOSIMETRY_CODE_VERSION,
        automation_condition=RECLASSIFY_ON_COHORT_CHANGE)


@dg.multi_asset(
    specs=[
        _gold(RECURRENCE_CLASSIFICATION.name,
              "One row per patient × prescription level: trial arm (and where it came from), uncertainty and sphere "
              "radius, centroid dose, seed centroid and volume classes, Dawson fraction/class, Mohamed type and the "
              "probability of being inside the 95 % isodose.", {"deltalake"}),
        _gold(DOSE_STATISTICS.name,
              "Per structure (CTVs, organs, mapped recurrence, sphere): volume, mean/min/max, D98/D95/D50/D2 and "
              "V95 % of each level. Conventions in docs/DOSIMETRY.md.", {"deltalake"}),
        _gold("patient_overlay",
              "Overlay PNG (axial/coronal/sagittal through the mapped recurrence centroid: CT, dose, CTVs, isodoses, "
              "mapped recurrence, sphere, registered relapse) under lake/figures/patient=<id>/.", {"png"}),
        _gold("patient_viewer",
              "Self-contained, offline plotly HTML viewer (lake/dashboards/viewers/<id>.html): slice sliders in three "
              "orientations, CT, dose wash, CTVs, isodoses, mapped recurrence, sphere, centroid, the registered "
              "relapse image, and every class with its code explained.", {"plotly", "html"}),
        _gold("patient_seed_csv", "The seed workflow's per-patient CSV, <patient>_classifications.csv.", {"csv"}),
        _gold("dosimetry_issues", "The dosimetry step's pipeline_issues rows for the patient (stage 'dosimetry').",
              {"deltalake"}),
    ],
    check_specs=CLASSIFICATION_CHECKS,
    partitions_def=patients_partitions,
    can_subset=False,
)
def patient_classification(context: dg.AssetExecutionContext, paths: RtmapPaths, trial: TrialSettings):
    """Uncertainty → sphere → isodoses → arm → classes, dose statistics and the overlay figure."""
    pid = context.partition_key
    lake, config = paths.lake, trial.config
    qc = read_upstream(context, lake, REGISTRATION_QC, patient_id=pid)
    if qc.is_empty():
        raise _fail(lake, pid, "dosimetry", PatientDataError("NO_REGISTRATION", "registration_qc missing"), context)
    read_upstream(context, lake, MAPPED_STRUCTURES, patient_id=pid)  # the masks' index: volumes_dir below
    volumes_dir = lake.absolute(qc["volumes_dir"][0])
    covariates = read_upstream(context, lake, TRIAL_COVARIATES, patient_id=pid)
    covariate_arm = covariates["arm"][0] if covariates.height else None
    issues_in: list[dict] = []
    try:
        distance, cohort = _radius_inputs(context, lake, config, pid)
        # Sub-voxel sphere sampling (rule 10): any radius is meaningful, no one-voxel floor.
        radius, pending = classification_radius(config, distance, cohort)
        if pending:  # re-classified when cohort_uncertainty first materialises (RECLASSIFY_ON_COHORT_CHANGE)
            issues_in.append({"code": "COHORT_RADIUS_PENDING", "message": "cohort radius not computed yet: "
                              f"classified with the fixed radius {config.uncertainty.radius_mm} mm for now"})
    except Exception as err:  # noqa: BLE001
        raise _fail(lake, pid, "dosimetry", err, context) from err
    version = dosimetry_version(qc["data_version"][0], config, radius.radius_mm, covariate_arm)

    stored = lake.read(RECURRENCE_CLASSIFICATION, patient_id=pid)
    overlay, viewer = classification_outputs(lake, pid)  # the viewer sits beside the cohort dashboard, which links it
    if stored.height and stored["data_version"][0] == version and overlay.exists() and viewer.exists():
        context.log.info(f"{pid}: registration, covariates, radius, code and dosimetry configuration unchanged — "
                         "reusing stored classification")
        classification, stats, recomputed = stored, lake.read(DOSE_STATISTICS, patient_id=pid), False
        issue_rows = lake.read(PIPELINE_ISSUES, patient_id=pid, stage="dosimetry").height
        seed_csv = lake.root / "seed_csv" / f"{pid}_classifications.csv"
    else:
        try:
            volumes = PatientVolumes.load(volumes_dir)
            relapse_file = lake.absolute(qc["registered_image_path"][0])
            relapse = sitk.ReadImage(str(relapse_file), sitk.sitkFloat32) if relapse_file.exists() else None
            result = run_dosimetry(volumes, config, radius_mm=radius.radius_mm, sigma_mm=float(distance or 0.0),
                                   covariate_arm=covariate_arm, figure_path=overlay, registered_relapse=relapse)
            classification = result.classification.with_columns(pl.lit(radius.policy).alias("radius_policy"),
                                                                pl.lit(version).alias("data_version"))
            stats = result.dose_statistics.with_columns(pl.lit(version).alias("data_version"))
            lake.replace_patient(RECURRENCE_CLASSIFICATION, pid, classification)
            lake.replace_patient(DOSE_STATISTICS, pid, stats)
            seed_csv = write_seed_csvs(classification, lake.root / "seed_csv", config.trial)[0]
            build_patient_viewer(volumes, classification, registered_relapse=relapse, relapse_contour_mask=None,
                                 dose_floor_fraction=VIEWER_DOSE_FLOOR, out=viewer,
                                 isodose_fraction=config.thresholds.isodose_fraction,
                                 relapse_is_ct=qc["relapse_modality"][0] == "CT", shared_plotlyjs=True)
        except Exception as err:  # noqa: BLE001 - every failure becomes a pipeline_issues row
            raise _fail(lake, pid, "dosimetry", err, context) from err
        # Non-fatal findings (arm mismatch, centroid outside the dose grid, …) stay queryable.
        issue_rows = record_issues(lake, pid, "dosimetry", issues_in + result.issues).height
        for issue in issues_in + result.issues:
            context.log.warning(f"{pid}: [{issue['code']}] {issue['message']}")
        recomputed = True

    c = classification.filter(pl.col("level_present").fill_null(False))
    first = classification.row(0, named=True)
    yield dg.MaterializeResult(
        asset_key=RECURRENCE_CLASSIFICATION.name,
        data_version=dg.DataVersion(version),
        metadata={
            "recomputed": recomputed,
            "dagster/row_count": classification.height,
            "arm": first.get("arm"),
            "arm_source": first.get("arm_source"),
            "uncertainty_mm": first.get("uncertainty_mm"),
            "radius_mm": radius.radius_mm,
            "radius_policy": radius.policy,
            "classes": md_table(c.select("level", "prescription_gy", "centroid_class", "volume_class", "dawson_class",
                                         "mohamed_type", "probability_inside")),
        },
    )
    yield dg.MaterializeResult(
        asset_key=DOSE_STATISTICS.name, data_version=dg.DataVersion(version),
        metadata={"dagster/row_count": stats.height,
                  "preview": md_table(stats.select("structure", "volume_cc", "mean_gy", "d95_gy"))})
    yield dg.MaterializeResult(asset_key="patient_overlay", data_version=dg.DataVersion(version),
                               metadata={"path": dg.MetadataValue.path(str(overlay))})
    yield dg.MaterializeResult(asset_key="patient_viewer", data_version=dg.DataVersion(version),
                               metadata={"path": dg.MetadataValue.path(str(viewer)),
                                         "open": dg.MetadataValue.url(viewer.resolve().as_uri())})
    yield dg.MaterializeResult(asset_key="patient_seed_csv", data_version=dg.DataVersion(version),
                               metadata={"path": dg.MetadataValue.path(str(seed_csv))})
    yield dg.MaterializeResult(asset_key="dosimetry_issues", data_version=dg.DataVersion(version),
                               metadata={"dagster/row_count": issue_rows})
    yield classification_complete(classification)
    yield ground_truth_check(classification, _load_truth(paths, config.trial, pid))
    yield dose_statistics_sane(stats)
