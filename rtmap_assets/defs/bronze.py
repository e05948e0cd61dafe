"""Bronze: header-only DICOM catalog and the patient manifest (roles of each DICOM object)."""

import polars as pl

import dagster as dg
from rtmap_assets.dicom.catalog import catalog_folder, subject_issues
from rtmap_assets.dicom.manifest import ISSUES_SCHEMA, build_manifest
from rtmap_assets.defs.metadata import md_table
from rtmap_assets.defs.resources import RtmapPaths
from rtmap_assets.pipeline.issues import issue_path, record_issues

BRONZE = "bronze"


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "dicom_files",
            description="One row per readable DICOM file under data/raw/<trial>/: UIDs, modality, SOP class, "
            "dates, FrameOfReference, referenced series/FoR, structure names, path, size. Header-only; no "
            "identifying tags beyond the trial subject ID.",
            group_name=BRONZE,
            kinds={"parquet", "dicom"},
        ),
        dg.AssetSpec(
            "dicom_rejects",
            description="Files under the raw folder that are not usable DICOM (junk, corrupt, duplicate "
            "SOPInstanceUID), each with the reason.",
            group_name=BRONZE,
            kinds={"parquet"},
        ),
    ],
    can_subset=False,
)
def dicom_catalog(context: dg.AssetExecutionContext, paths: RtmapPaths):
    """Incremental: files whose path, size and mtime are unchanged keep their previous row."""
    lake = paths.lake
    prev_files = lake.read_table("dicom_files")
    prev_rejects = lake.read_table("dicom_rejects")
    result = catalog_folder(
        paths.raw_trial_dir(),
        previous_files=prev_files if prev_files.height else None,
        previous_rejects=prev_rejects if prev_rejects.height else None,
        subject_key=paths.config().subject_key,  # rule 17: patient_id = trial subject ID
    )
    files_path = lake.write_cohort_table("dicom_files", result.files)
    rejects_path = lake.write_cohort_table("dicom_rejects", result.rejects)
    context.log.info(
        f"catalog: {result.files.height} files ({result.n_read} read, {result.n_reused} reused, "
        f"{result.n_removed} removed), {result.rejects.height} rejects"
    )
    yield dg.MaterializeResult(
        asset_key="dicom_files",
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
        asset_key="dicom_rejects",
        metadata={
            "dagster/row_count": result.rejects.height,
            "path": dg.MetadataValue.path(str(rejects_path)),
            "preview": md_table(result.rejects.select([c for c in ("path", "reason") if c in result.rejects.columns])),
        },
    )


@dg.asset(
    deps=["dicom_files"],
    description="Roles per patient (planning CT / RTSTRUCT / RTDOSE, relapse image / RTSTRUCT) with the reason "
    "for each choice (DESIGN.md rule 1). Missing or ambiguous roles become pipeline_issues rows, never a guess.",
    group_name=BRONZE,
    kinds={"parquet"},
)
def patient_manifest(context: dg.AssetExecutionContext, paths: RtmapPaths) -> dg.MaterializeResult:
    lake = paths.lake
    files = lake.read_table("dicom_files")
    manifest, issues = build_manifest(files, paths.config())
    # rule 17: files refused for their PatientID are an issue on the subject (named by hash only)
    rule17 = subject_issues(lake.read_table("dicom_rejects"))
    if rule17:
        issues = pl.concat([issues, pl.DataFrame([{**r, "stage": "manifest"} for r in rule17], schema=ISSUES_SCHEMA)])
    files_patients = pl.DataFrame({"patient_id": [r["patient_id"] for r in rule17]}, schema={"patient_id": pl.String})
    out = lake.write_cohort_table("patient_manifest", manifest)
    # Rewrite every patient's manifest issues so solved problems disappear from pipeline_issues.
    patients = set(files["patient_id"].drop_nulls().to_list()) if files.height else set()
    patients |= set(files_patients["patient_id"].to_list())
    for old in lake.table_dir("pipeline_issues").glob("patient=*/stage=manifest.parquet"):
        patients.add(old.parent.name.removeprefix("patient="))
    for pid in sorted(patients):
        rows = issues.filter(pl.col("patient_id") == pid).to_dicts() if issues.height else []
        if rows or issue_path(lake, pid, "manifest").exists():
            record_issues(lake, pid, "manifest", rows)
    ready = manifest["patient_id"].n_unique() if manifest.height else 0
    for row in issues.iter_rows(named=True) if issues.height else []:
        context.log.warning(f"{row['patient_id']}: [{row['code']}] {row['message']}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": manifest.height,
            "patients_ready": ready,
            "patients_with_issues": issues["patient_id"].n_unique() if issues.height else 0,
            "path": dg.MetadataValue.path(str(out)),
            "issues": md_table(issues.select("patient_id", "code", "message") if issues.height else issues, 20),
        }
    )


pipeline_issues = dg.AssetSpec(
    "pipeline_issues",
    description="Why a patient or file did not make it through a stage (patient, stage, code, message, file). "
    "Written by the manifest, imaging and dosimetry steps themselves; each rewrites its own rows per patient.",
    group_name=BRONZE,
    kinds={"parquet"},
)
