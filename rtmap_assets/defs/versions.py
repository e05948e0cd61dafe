"""Per-stage data versions, and which patients are out of date.

A stage's data version is a hash of everything its result depends on; the per-patient assets compare it
with the version stored beside their rows and recompute only when it differs. The nightly refresh asks
the same question of the lake for every patient at once (`patients_out_of_date`), so an up-to-date
patient costs a few column reads and file stats, not a run.

- imaging: the input fingerprint (the export's files) + IMAGING_CODE_VERSION + the configuration
  sections `run_imaging` reads;
- dosimetry: the imaging version + DOSIMETRY_CODE_VERSION + the sections `run_dosimetry` reads + the
  sphere radius + the covariate arm.
"""

import hashlib
from pathlib import Path

from rtmap_assets.config import TrialConfig, config_fingerprint
from rtmap_assets.dicom.manifest import complete_rows
from rtmap_assets.dosimetry.uncertainty import RadiusDecision, sphere_radius
from rtmap_assets.lake import Lake
from rtmap_assets.lake.contract import (
    COHORT_UNCERTAINTY,
    PATIENT_MANIFEST,
    RECURRENCE_CLASSIFICATION,
    REGISTRATION_QC,
    TRIAL_COVARIATES,
)
from rtmap_assets.pipeline import dosimetry_patient, imaging_patient

IMAGING_CODE_VERSION = "imaging-5"  # B-spline fields by tensor products (rounding-level changes), refit per axis
DOSIMETRY_CODE_VERSION = "dosimetry-2"  # level-named CTVs, per-arm high CTV, sub-voxel sphere


def stage_version(*parts: object) -> str:
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def imaging_version(fingerprint: str, config: TrialConfig) -> str:
    return stage_version(fingerprint, IMAGING_CODE_VERSION, config_fingerprint(config, imaging_patient.CONFIG_SECTIONS))


def dosimetry_version(imaging_data_version: str, config: TrialConfig, radius_mm: float,
                      covariate_arm: str | None) -> str:
    return stage_version(imaging_data_version, DOSIMETRY_CODE_VERSION,
                         config_fingerprint(config, dosimetry_patient.CONFIG_SECTIONS), f"{radius_mm:.4f}",
                         covariate_arm or "-")


def classification_radius(config: TrialConfig, distance_mm: float | None,
                          cohort_radius_mm: float | None) -> tuple[RadiusDecision, bool]:
    """(the radius the classification uses, whether the cohort radius is still pending).

    Under the 'cohort' policy the first patients of a cohort are classified with the fixed radius until
    cohort_uncertainty exists; its first materialisation re-classifies everyone."""
    pending = config.uncertainty.policy == "cohort" and cohort_radius_mm is None
    cohort = config.uncertainty.radius_mm if pending else cohort_radius_mm
    return sphere_radius(config.uncertainty, patient_distance_mm=distance_mm, cohort_radius_mm=cohort), pending


def classification_outputs(lake: Lake, patient_id: str) -> tuple[Path, Path]:
    """The overlay and viewer files a stored classification must still have to be reused."""
    return (lake.patient_figures(patient_id) / "overlay.png",
            lake.root / "dashboards" / "viewers" / f"{patient_id}.html")


def patients_out_of_date(lake: Lake, config: TrialConfig, patients: list[str] | None = None) -> list[str]:
    """Complete patients (of `patients`, default all) whose stored registration or classification is not
    the one their current inputs, code, configuration, radius and covariate arm would produce, or whose
    figures are gone. Reads a few columns of five tables once, whatever the cohort size."""
    manifest = complete_rows(lake.read(PATIENT_MANIFEST, columns=["patient_id", "input_fingerprint", "complete"]))
    fingerprints = dict(zip(manifest["patient_id"].to_list(), manifest["input_fingerprint"].to_list()))
    qc = lake.read(REGISTRATION_QC, columns=["patient_id", "data_version", "landmark_distance_mm"])
    stored_imaging = {r["patient_id"]: r for r in qc.iter_rows(named=True)}
    cls = lake.read(RECURRENCE_CLASSIFICATION, columns=["patient_id", "data_version"])
    stored_dosimetry = dict(zip(cls["patient_id"].to_list(), cls["data_version"].to_list()))
    cov = lake.read(TRIAL_COVARIATES, columns=["patient_id", "arm"])
    arms = dict(zip(cov["patient_id"].to_list(), cov["arm"].to_list()))
    cohort = None
    if config.uncertainty.policy == "cohort":
        stored = lake.read(COHORT_UNCERTAINTY, columns=["cohort_radius_mm"])["cohort_radius_mm"].drop_nulls()
        cohort = float(stored[0]) if stored.len() else None

    out = []
    for pid in sorted(fingerprints if patients is None else set(patients) & fingerprints.keys()):
        imaging = stored_imaging.get(pid)
        if imaging is None or imaging["data_version"] != imaging_version(fingerprints[pid], config):
            out.append(pid)
            continue
        try:
            radius, _ = classification_radius(config, imaging["landmark_distance_mm"], cohort)
        except Exception:  # noqa: BLE001 - the run will record why; an unresolvable radius is never "up to date"
            out.append(pid)
            continue
        expected = dosimetry_version(imaging["data_version"], config, radius.radius_mm, arms.get(pid))
        if stored_dosimetry.get(pid) != expected or not all(p.exists() for p in classification_outputs(lake, pid)):
            out.append(pid)
    return out
