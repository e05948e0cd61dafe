"""The lake contract: every table declared once — name, partitioning, schema, description.

Every reader and writer of the lake (the Dagster assets, the storage layer, the dbt sources, the
tests) takes a table's shape from here, never from a string typed elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import polars as pl

Partitioning = Literal["cohort", "patient"]


@dataclass(frozen=True)
class TableSpec:
    """One lake table.

    `partitioning` says how rows are replaced: "cohort" tables are rewritten whole by one asset;
    "patient" tables have their rows replaced per patient (`patient_id`), optionally narrowed by
    `replace_keys` (e.g. `pipeline_issues` is replaced per patient and stage).
    """

    name: str
    partitioning: Partitioning
    schema: dict[str, pl.DataType]
    description: str = ""
    replace_keys: tuple[str, ...] = ("patient_id",)
    column_descriptions: dict[str, str] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return list(self.schema)

    def empty(self) -> pl.DataFrame:
        return pl.DataFrame(schema=self.schema)


# ----------------------------------------------------------------------------------------------
# The tables. Each schema is the one its producing function builds rows with (imported, so the
# two cannot drift), plus the provenance columns the asset layer adds when it stores them.
# ----------------------------------------------------------------------------------------------

from rtmap_assets.dicom.catalog import FILES_SCHEMA, REJECTS_SCHEMA  # noqa: E402
from rtmap_assets.dicom.manifest import MANIFEST_SCHEMA  # noqa: E402
from rtmap_assets.pipeline.covariates import ALLOWED_COLUMNS  # noqa: E402
from rtmap_assets.pipeline.dosimetry_patient import CLASSIFICATION_SCHEMA, DOSE_STATISTICS_SCHEMA  # noqa: E402
from rtmap_assets.pipeline.imaging_patient import MAPPED_STRUCTURES_SCHEMA, REGISTRATION_QC_SCHEMA  # noqa: E402
from rtmap_assets.pipeline.issues import ISSUE_SCHEMA  # noqa: E402

# Which inputs, code and configuration produced a patient's rows, and where its files are.
IMAGING_PROVENANCE: dict[str, pl.DataType] = {
    "input_fingerprint": pl.String(),  # hash of the manifest's chosen files (path, size, mtime)
    "data_version": pl.String(),  # fingerprint + imaging code version + imaging config sections
    "volumes_dir": pl.String(),  # the patient's versioned NIfTI folder, relative to the lake root
    "run_id": pl.String(),  # the Dagster run that computed it
}
OVERLAP_COLUMNS: dict[str, pl.DataType] = {  # comparison structures, mapped vs planning (registration QC)
    "planning_structure": pl.String(), "dice_vs_planning": pl.Float64(), "hd95_mm": pl.Float64(),
    "msd_mm": pl.Float64(),
}
DOSIMETRY_PROVENANCE: dict[str, pl.DataType] = {
    "data_version": pl.String(),  # imaging data version + dosimetry code version + its config sections + radius
}

DICOM_FILES = TableSpec(
    "dicom_files", "cohort", dict(FILES_SCHEMA),
    "One row per readable DICOM file under data/raw/<trial>/ (header facts only; bronze).")
DICOM_REJECTS = TableSpec(
    "dicom_rejects", "cohort", dict(REJECTS_SCHEMA),
    "Files under the raw folder that are not usable DICOM, each with the reason.")
PATIENT_MANIFEST = TableSpec(
    "patient_manifest", "cohort", dict(MANIFEST_SCHEMA),
    "One row per patient x role (rule 1) with the reason for the choice.")
TRIAL_COVARIATES = TableSpec(
    "trial_covariates", "cohort", {c: t() if isinstance(t, type) else t for c, t in ALLOWED_COLUMNS.items()},
    "Whitelisted, non-identifying trial covariates.")
PIPELINE_ISSUES = TableSpec(
    "pipeline_issues", "patient", dict(ISSUE_SCHEMA),
    "Why a patient or file did not make it through a stage; each stage replaces its own rows per patient.",
    replace_keys=("patient_id", "stage"))
REGISTRATION_QC = TableSpec(
    "registration_qc", "patient", {**REGISTRATION_QC_SCHEMA, **IMAGING_PROVENANCE},
    "One row per patient: registration relapse -> planning and its quality.")
MAPPED_STRUCTURES = TableSpec(
    "mapped_structures", "patient",
    {**MAPPED_STRUCTURES_SCHEMA, **OVERLAP_COLUMNS, "data_version": pl.String(), "volumes_dir": pl.String()},
    "Structures on the planning working grid, relapse structures mapped into it.")
RECURRENCE_CLASSIFICATION = TableSpec(
    "recurrence_classification", "patient", {**CLASSIFICATION_SCHEMA, **DOSIMETRY_PROVENANCE},
    "One row per patient x prescription level, every classification scheme side by side.")
DOSE_STATISTICS = TableSpec(
    "dose_statistics", "patient", {**DOSE_STATISTICS_SCHEMA, **DOSIMETRY_PROVENANCE},
    "Dose statistics per patient x structure (rule 14).")
COHORT_UNCERTAINTY = TableSpec(
    "cohort_uncertainty", "cohort",
    {"patient_id": pl.String(), "landmark_distance_mm": pl.Float64(), "cohort_radius_mm": pl.Float64(),
     "cohort_percentile": pl.Float64(), "policy_in_use": pl.String()},
    "Every registered patient's landmark distance and the cohort radius (rule 5).")

TABLES: dict[str, TableSpec] = {t.name: t for t in (
    DICOM_FILES, DICOM_REJECTS, PATIENT_MANIFEST, TRIAL_COVARIATES, PIPELINE_ISSUES, REGISTRATION_QC,
    MAPPED_STRUCTURES, RECURRENCE_CLASSIFICATION, DOSE_STATISTICS, COHORT_UNCERTAINTY)}
