"""Bronze: header-only DICOM catalog and the patient manifest (roles of each DICOM object)."""

import polars as pl

import dagster as dg
from rtmap_assets.dicom.catalog import catalog_folder, subject_issues
from rtmap_assets.dicom.manifest import ISSUES_SCHEMA, build_manifest, complete_rows
from rtmap_assets.defs.lake_io import read_upstream
from rtmap_assets.dicom.path_tokens import redact, tokenise_manifest
from rtmap_assets.defs.metadata import md_table
from rtmap_assets.defs.resources import RtmapPaths, TrialSettings
from rtmap_assets.lake.contract import DICOM_FILES, DICOM_REJECTS, PATIENT_MANIFEST, PIPELINE_ISSUES
from rtmap_assets.pipeline.issues import record_issues

BRONZE = "bronze"


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            DICOM_FILES.name,
            description="One row per readable DICOM file under data/raw/<trial>/: UIDs, modality, SOP class, "
            "dates, FrameOfReference, referenced series/FoR, structure names, path, size. Header-only; no "
            "identifying tags beyond the trial subject ID.",
            group_name=BRONZE,
            kinds={"deltalake", "dicom"},
        ),
        dg.AssetSpec(
            DICOM_REJECTS.name,
            description="Files under the raw folder that are not usable DICOM (junk, corrupt, duplicate "
            "SOPInstanceUID), each with the reason.",
            group_name=BRONZE,
            kinds={"deltalake"},
        ),
    ],
    can_subset=False,
)
def dicom_catalog(context: dg.AssetExecutionContext, paths: RtmapPaths, trial: TrialSettings):
    """Incremental: files whose path, size and mtime are unchanged keep their previous row."""
    lake = paths.lake
    # The catalog's own previous state (not an upstream): unchanged files are not read again.
    prev_files = lake.read(DICOM_FILES)
    prev_rejects = lake.read(DICOM_REJECTS)
    result = catalog_folder(
        paths.raw_root / trial.config.trial,
        previous_files=prev_files if prev_files.height else None,
        previous_rejects=prev_rejects if prev_rejects.height else None,
        subject_key=trial.config.subject_key,  # rule 17: patient_id = trial subject ID
    )
    files_path = lake.replace_all(DICOM_FILES, result.files)
    rejects_path = lake.replace_all(DICOM_REJECTS, result.rejects)
    context.log.info(
        f"catalog: {result.files.height} files ({result.n_read} read, {result.n_reused} reused, "
        f"{result.n_removed} removed), {result.rejects.height} rejects"
    )
    yield dg.MaterializeResult(
        asset_key=DICOM_FILES.name,
        metadata={
            "dagster/row_count": result.files.height,
            "files_read": result.n_read,
            "files_reused": result.n_reused,
            "files_removed": result.n_removed,
            "patients": result.files["patient_id"].n_unique() if result.files.height else 0,
            "path": dg.MetadataValue.path(str(files_path)),
        },
    )
    yield dg.MaterializeResult(
        asset_key=DICOM_REJECTS.name,
        metadata={
            "dagster/row_count": result.rejects.height,
            "path": dg.MetadataValue.path(str(rejects_path)),
            "preview": md_table(result.rejects.select([c for c in ("path", "reason") if c in result.rejects.columns])),
        },
    )


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            PATIENT_MANIFEST.name, deps=[DICOM_FILES.name, DICOM_REJECTS.name],
            description="Roles per patient (planning CT / RTSTRUCT / RTDOSE, relapse image / RTSTRUCT) with the reason "
            "for each choice (rule 1). Missing or ambiguous roles become pipeline_issues rows, never a guess.",
            group_name=BRONZE, kinds={"deltalake"}),
        dg.AssetSpec(
            "manifest_issues", deps=[DICOM_FILES.name, DICOM_REJECTS.name],
            description="The manifest's pipeline_issues rows (stage 'manifest'): why a patient has no complete set "
            "of roles.", group_name=BRONZE, kinds={"deltalake"}),
    ],
    can_subset=False,
)
def patient_manifest(context: dg.AssetExecutionContext, paths: RtmapPaths, trial: TrialSettings):
    lake = paths.lake
    files = read_upstream(context, lake, DICOM_FILES)
    manifest, issues = build_manifest(files, trial.config)
    # rule 17: files refused for their PatientID are an issue on the subject (named by hash only)
    rejects = read_upstream(context, lake, DICOM_REJECTS)
    rule17 = subject_issues(rejects)
    if trial.config.privacy.hash_export_paths:  # the rejected file by its catalog token (dicom_rejects.path)
        known = rejects["path"].to_list()
        rule17 = [{**r, "file": redact(r["file"], known), "message": redact(r["message"], known)} for r in rule17]
    if rule17:
        issues = pl.concat([issues, pl.DataFrame([{**r, "stage": "manifest"} for r in rule17], schema=ISSUES_SCHEMA)])
    if trial.config.privacy.hash_export_paths:  # rule 17: files by catalog token beyond the bronze catalog
        manifest, issues = tokenise_manifest(manifest, issues, files["path"].to_list())
    out = lake.replace_all(PATIENT_MANIFEST, manifest)
    # Rewrite every patient's manifest issues so solved problems disappear from pipeline_issues.
    patients = set(files["patient_id"].drop_nulls().to_list()) | set(lake.patients_with_rows(PIPELINE_ISSUES))
    patients |= {r["patient_id"] for r in rule17}
    for pid in sorted(patients):
        rows = issues.filter(pl.col("patient_id") == pid).to_dicts() if issues.height else []
        record_issues(lake, pid, "manifest", rows)
    ready = complete_rows(manifest)["patient_id"].n_unique() if manifest.height else 0
    for row in issues.iter_rows(named=True) if issues.height else []:
        context.log.warning(f"{row['patient_id']}: [{row['code']}] {row['message']}")
    yield dg.MaterializeResult(
        asset_key=PATIENT_MANIFEST.name,
        metadata={
            "dagster/row_count": manifest.height,
            "patients_ready": ready,
            "patients_with_issues": issues["patient_id"].n_unique() if issues.height else 0,
            "path": dg.MetadataValue.path(str(out)),
        }
    )
    yield dg.MaterializeResult(
        asset_key="manifest_issues",
        metadata={"dagster/row_count": issues.height,
                  "issues": md_table(issues.select("patient_id", "code", "message") if issues.height else issues, 20)},
    )


pipeline_issues = dg.AssetSpec(
    PIPELINE_ISSUES.name,
    deps=["manifest_issues", "imaging_issues", "dosimetry_issues"],
    description="Why a patient or file did not make it through a stage (patient, stage, code, message, file): the "
    "union of the manifest, imaging and dosimetry steps' issue rows, each replaced per patient and stage.",
    group_name=BRONZE,
    kinds={"deltalake"},
)
