"""One patient's dosimetry, end to end, without Dagster (docs/RULES.md rules 5–14).

Input: the imaging stage's `PatientVolumes` (everything on the planning working grid), the trial
configuration, the sphere radius and σ (decided by the radius policy, possibly from the cohort, so
they come from outside) and optionally the arm named by the trial covariates.
Output: the `dose_statistics` rows (long format, one per structure), the `recurrence_classification`
rows (one per level, every scheme side by side), the overlay figure, and the non-fatal issues
(e.g. arm unassigned) as `pipeline_issues` rows. Fatal problems raise `PatientDataError`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import SimpleITK as sitk

from rtmap_assets.config import LEVELS, TrialConfig
from rtmap_assets.dosimetry import arm as arm_mod
from rtmap_assets.dosimetry import classification as cls
from rtmap_assets.dosimetry.dose_statistics import STAT_COLUMNS, structure_statistics
from rtmap_assets.dosimetry.probability import probability_inside
from rtmap_assets.dosimetry.regions import Sphere, mask_array, recurrence_centroid, sphere, voxel_volume_cc
from rtmap_assets.dosimetry.uncertainty import patient_uncertainty_mm
from rtmap_assets.errors import PatientDataError
from rtmap_assets.issue_codes import IssueCode
from rtmap_assets.figures.overlay import OverlayContext, render_overlay
from rtmap_assets.lake import atomic_write
from rtmap_assets.pipeline.gc_freeze import after_freezing_long_lived_objects
from rtmap_assets.pipeline.volumes import PatientVolumes

log = logging.getLogger(__name__)
STAGE = "dosimetry"
# The configuration sections this stage reads: its data version hashes these and nothing else.
CONFIG_SECTIONS = ("trial", "arms", "aliases", "uncertainty", "thresholds", "probability", "dose_statistics")

CLASSIFICATION_SCHEMA: dict[str, pl.DataType] = {
    "patient_id": pl.String, "trial": pl.String, "level": pl.String,
    "prescription_gy": pl.Float64, "level_present": pl.Boolean,
    "arm": pl.String, "arm_source": pl.String, "arm_from_dose": pl.String, "arm_mismatch": pl.Boolean,
    "ctv_mean_dose_gy": pl.Float64,
    "uncertainty_mm": pl.Float64, "radius_mm": pl.Float64, "radius_policy": pl.String,
    "centroid_x_mm": pl.Float64, "centroid_y_mm": pl.Float64, "centroid_z_mm": pl.Float64,
    "centroid_dose_gy": pl.Float64, "centroid_in_dose_grid": pl.Boolean, "centroid_class": pl.Int32,
    "sphere_fraction": pl.Float64, "volume_class": pl.Int32,
    "dawson_fraction": pl.Float64, "dawson_class": pl.String,
    "mohamed_type": pl.String, "probability_inside": pl.Float64,
    # traceability beyond the contract's columns
    "ctv_name": pl.String, "sigma_mm": pl.Float64, "sphere_voxels_outside_dose_grid": pl.Int32,
    "mohamed_reason": pl.String,
    "ctv_alias": pl.String,  # the alias that matched the level's CTV (a level name or a dose-templated name)
    "sphere_outside_dose_fraction": pl.Float64,  # share of the sphere's sub-voxel samples beyond the dose grid
    # rule 10 under the fixed and the patient radius side by side, whatever policy is in use (the statistician's
    # "fixed vs patient radius" question); null where the patient's uncertainty is unknown
    "fixed_radius_mm": pl.Float64, "fixed_radius_sphere_fraction": pl.Float64, "fixed_radius_volume_class": pl.Int32,
    "patient_radius_mm": pl.Float64, "patient_radius_sphere_fraction": pl.Float64,
    "patient_radius_volume_class": pl.Int32,
}
DOSE_STATISTICS_SCHEMA: dict[str, pl.DataType] = {
    "patient_id": pl.String, "structure": pl.String, "role": pl.String, "level": pl.String,
    **{c: pl.Float64 for c in STAT_COLUMNS},
}


@dataclass
class DosimetryResult:
    dose_statistics: pl.DataFrame
    classification: pl.DataFrame
    figure_path: Path | None
    issues: list[dict[str, str | None]] = field(default_factory=list)  # pipeline_issues rows (non-fatal)


Issues = list[dict[str, str | None]]


def _single_mapped_recurrence(volumes: PatientVolumes):
    rec = volumes.find("recurrence", "mapped")
    if not rec:
        raise PatientDataError("no_recurrence", "no mapped recurrence structure in the patient's volumes", stage=STAGE)
    if len(rec) > 1:
        raise PatientDataError("ambiguous_recurrence",
                               f"several mapped recurrence structures {[s.name for s in rec]}: which one is the rGTV?",
                               stage=STAGE)
    return rec[0]


def _check_one_grid(volumes: PatientVolumes) -> None:
    """Masks index the dose array voxel for voxel: they must share its grid (the imaging stage's contract)."""
    ref = volumes.dose
    others = [(s.name, s.mask) for s in volumes.structures]
    if volumes.dose_support is not None:
        others.append(("dose_support", volumes.dose_support))
    for name, img in others:
        same = (img.GetSize() == ref.GetSize()
                and np.allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-3)
                and np.allclose(img.GetSpacing(), ref.GetSpacing(), atol=1e-6)
                and np.allclose(img.GetDirection(), ref.GetDirection(), atol=1e-6))
        if not same:
            raise PatientDataError("grid_mismatch", f"structure '{name}' is not on the dose's working grid", stage=STAGE)


def _issue(volumes: PatientVolumes, code: str, message: str) -> dict[str, str | None]:
    return PatientDataError(code, message, stage=STAGE).as_issue(volumes.patient_id)


def _class_summary(rows: list[dict], mohamed: str | None) -> str:
    parts = []
    for r in rows:
        if r["level_present"]:
            parts.append(f"{r['level']} {r['prescription_gy']:g} Gy: centroid {r['centroid_class']}, "
                         f"volume {r['volume_class']}, Dawson {r['dawson_class']}")
    return " | ".join(parts + [f"Mohamed {mohamed}"])


# ----------------------------------------------------------------------------------------------
# The steps of one patient's dosimetry
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmLevels:
    """Rule 8 and the level CTVs: the arm, its prescriptions (None when unresolved), each level's CTV."""

    decision: arm_mod.ArmDecision
    prescriptions: dict[str, float] | None
    level_ctv: dict[str, arm_mod.LevelCtv | None]


def arm_and_levels(volumes: PatientVolumes, config: TrialConfig, covariate_arm: str | None,
                   issues: Issues) -> ArmLevels:
    """The arm (dose or covariates) and the CTV of each of its levels; problems go to `issues`."""
    ctvs = volumes.find("ctv", "planning")
    decision = arm_mod.determine_arm(ctvs, volumes.dose, config, covariate_arm)
    problems = list(decision.problems)
    if decision.arm_mismatch:
        issues.append(_issue(volumes, "arm_mismatch",
                             f"covariates name arm {decision.arm}, the dose says {decision.arm_from_dose} "
                             f"(mean {decision.ctv_mean_dose_gy} Gy in {decision.ctv_name})"))
    if not decision.resolved:
        detail = f"tied arms {list(decision.candidates)}" if decision.arm == arm_mod.AMBIGUOUS else "no arm fits"
        tested = "; ".join(t.describe() for t in decision.tested)
        code = IssueCode.ARM_AMBIGUOUS if decision.arm == arm_mod.AMBIGUOUS else IssueCode.ARM_UNASSIGNED
        issues.append(_issue(volumes, code,
                             f"arm {decision.arm} from dose ({detail}; tested {tested}): classes left empty"))
        level_ctv: dict[str, arm_mod.LevelCtv | None] = {lvl: None for lvl in LEVELS}
        prescriptions = None
    else:
        prescriptions = config.prescriptions(decision.arm)
        level_ctv, ambiguous = arm_mod.level_ctvs(ctvs, prescriptions, config)
        problems += list(ambiguous.values())
        problems += arm_mod.level_plausibility(level_ctv, prescriptions, volumes.dose, config)
        for lvl in LEVELS:
            p = prescriptions[lvl]
            if p > 0 and level_ctv[lvl] is None and lvl not in ambiguous:
                issues.append(_issue(volumes, "ctv_missing",
                                     f"no CTV matches {config.aliases.ctv_for_level(lvl, p)} "
                                     f"for the {lvl} level ({p:g} Gy)"))
    seen: set[tuple[str, str]] = set()
    for exc in problems:  # the dose's and the levels' checks may meet the same CTV twice
        if (exc.code, exc.message) not in seen:
            seen.add((exc.code, exc.message))
            issues.append(exc.as_issue(volumes.patient_id, STAGE))
    return ArmLevels(decision, prescriptions, level_ctv)


def uncertainty_step(volumes: PatientVolumes, issues: Issues) -> float | None:
    try:
        return patient_uncertainty_mm(volumes)
    except PatientDataError as exc:
        issues.append(exc.as_issue(volumes.patient_id, STAGE))
        return None


@dataclass(frozen=True)
class SphereStep:
    sphere: Sphere  # voxel mask (overlay, voxel counts)
    samples: cls.SphereSamples  # sub-voxel samples (fraction, volume class, sphere dose statistics)
    voxels_outside_dose: int


def sphere_step(volumes: PatientVolumes, centre: np.ndarray, radius_mm: float) -> SphereStep:
    """Rules 6 and 10: the sphere's voxel mask and its sub-voxel dose samples (no one-voxel floor)."""
    sph = sphere(volumes.dose, centre, float(radius_mm))
    outside = sph.n_outside_grid
    if volumes.dose_support is not None:
        outside += int(np.count_nonzero(mask_array(sph.mask) & ~mask_array(volumes.dose_support)))
    samples = cls.sphere_samples(volumes.dose, sph, volumes.dose_support)
    if samples.outside_dose_fraction:
        log.info("%s: %.1f %% of the sphere lies outside the dose grid (dose 0)",
                 volumes.patient_id, 100 * samples.outside_dose_fraction)
    return SphereStep(sph, samples, outside)


def centroid_step(volumes: PatientVolumes, centre: np.ndarray, issues: Issues) -> tuple[float, bool]:
    c_dose, c_in_grid = cls.centroid_dose(volumes.dose, centre, volumes.dose_support)
    if not c_in_grid:
        issues.append(_issue(volumes, "centroid_outside_dose_grid",
                             f"recurrence centroid {np.round(centre, 1).tolist()} mm lies outside the dose grid: dose 0"))
    return c_dose, c_in_grid


def patient_schemes(volumes: PatientVolumes, config: TrialConfig, levels: ArmLevels, centre: np.ndarray,
                    c_dose: float, sigma_mm: float, issues: Issues) -> tuple[cls.MohamedResult, dict[str, float | None]]:
    """Rules 12 and 13: Mohamed's type and the probability of being inside, per level."""
    if not levels.prescriptions:
        return cls.MohamedResult(None, "arm not resolved"), {lvl: None for lvl in LEVELS}
    frac = config.thresholds.isodose_fraction
    masks = {lvl: (c.mask if c is not None else None) for lvl, c in levels.level_ctv.items()}
    mohamed = cls.mohamed_type(centre, c_dose, levels.prescriptions, masks, frac)
    if mohamed.type is None:
        issues.append(_issue(volumes, "mohamed_undecided", mohamed.reason))
    probs = probability_inside(volumes.dose, centre, sigma_mm, levels.prescriptions, frac,
                               samples=config.probability.samples, seed=config.probability.seed)
    return mohamed, probs


def classification_rows(volumes: PatientVolumes, config: TrialConfig, levels: ArmLevels, *, centre: np.ndarray,
                        c_dose: float, c_in_grid: bool, rec_mask: sitk.Image, sph: SphereStep,
                        uncertainty: float | None, sigma_mm: float, mohamed: cls.MohamedResult,
                        probs: dict[str, float | None], alternatives: dict[str, SphereStep | None]) -> list[dict]:
    """Rules 9–11 per level, beside the per-patient answers: one `recurrence_classification` row per level."""
    th = config.thresholds
    frac = th.isodose_fraction
    d = levels.decision
    rows = []
    for lvl in LEVELS:
        p = levels.prescriptions[lvl] if levels.prescriptions else None
        present = None if p is None else p > 0
        sf = cls.sphere_fraction(sph.samples, None, p, frac) if present else None
        df = cls.dawson_fraction(volumes.dose, rec_mask, p, frac) if present else None
        alt: dict[str, object] = {}
        for policy, step in alternatives.items():  # the volume class under the fixed and the patient radius
            f = cls.sphere_fraction(step.samples, None, p, frac) if present and step is not None else None
            alt |= {f"{policy}_radius_mm": step.sphere.radius_mm if step is not None else None,
                    f"{policy}_radius_sphere_fraction": f,
                    f"{policy}_radius_volume_class": cls.volume_class(f, th.volume_inside_fraction)}
        c = levels.level_ctv[lvl]
        rows.append({
            "patient_id": volumes.patient_id, "trial": config.trial, "level": lvl,
            "prescription_gy": p, "level_present": present,
            "arm": d.arm, "arm_source": d.arm_source, "arm_from_dose": d.arm_from_dose,
            "arm_mismatch": d.arm_mismatch, "ctv_mean_dose_gy": d.ctv_mean_dose_gy,
            "uncertainty_mm": uncertainty, "radius_mm": sph.sphere.radius_mm, "radius_policy": config.uncertainty.policy,
            "centroid_x_mm": float(centre[0]), "centroid_y_mm": float(centre[1]), "centroid_z_mm": float(centre[2]),
            "centroid_dose_gy": c_dose, "centroid_in_dose_grid": c_in_grid,
            "centroid_class": cls.centroid_class(c_dose, p, frac) if present else None,
            "sphere_fraction": sf, "volume_class": cls.volume_class(sf, th.volume_inside_fraction),
            "dawson_fraction": df, "dawson_class": cls.dawson_class(df, th),
            "mohamed_type": mohamed.type, "probability_inside": probs.get(lvl) if present else None,
            "ctv_name": c.name if c is not None else None,
            "sigma_mm": float(sigma_mm), "sphere_voxels_outside_dose_grid": sph.voxels_outside_dose,
            "mohamed_reason": mohamed.reason,
            "ctv_alias": c.alias if c is not None else None,
            "sphere_outside_dose_fraction": sph.samples.outside_dose_fraction,
            **alt,
        })
    return rows


@after_freezing_long_lived_objects  # collections skip the loaded libraries' objects (pipeline/gc_freeze.py)
def run_dosimetry(
    volumes: PatientVolumes,
    config: TrialConfig,
    *,
    radius_mm: float,
    sigma_mm: float,
    covariate_arm: str | None = None,
    figure_path: Path | None = None,
    registered_relapse: sitk.Image | None = None,
) -> DosimetryResult:
    """Arm, sphere, classifications, probabilities and dose statistics for one patient."""
    if volumes.dose is None:
        raise PatientDataError("no_dose", "the patient has no RTDOSE on the working grid", stage=STAGE)
    _check_one_grid(volumes)
    issues: Issues = []
    rec = _single_mapped_recurrence(volumes)
    centre = recurrence_centroid(rec.mask, rec.name)

    levels = arm_and_levels(volumes, config, covariate_arm, issues)
    uncertainty = uncertainty_step(volumes, issues)
    sph = sphere_step(volumes, centre, radius_mm)
    c_dose, c_in_grid = centroid_step(volumes, centre, issues)
    mohamed, probs = patient_schemes(volumes, config, levels, centre, c_dose, sigma_mm, issues)
    alternatives = {"fixed": sphere_step(volumes, centre, config.uncertainty.radius_mm),
                    "patient": sphere_step(volumes, centre, uncertainty) if uncertainty is not None else None}
    rows = classification_rows(volumes, config, levels, centre=centre, c_dose=c_dose, c_in_grid=c_in_grid,
                               rec_mask=rec.mask, sph=sph, uncertainty=uncertainty, sigma_mm=sigma_mm,
                               mohamed=mohamed, probs=probs, alternatives=alternatives)
    classification = pl.DataFrame(rows, schema=CLASSIFICATION_SCHEMA)
    stats = _dose_statistics(volumes, config, levels, rec, sph)

    written = None
    if figure_path is not None:
        ctx = OverlayContext(
            patient_id=volumes.patient_id, arm=levels.decision.arm, centroid_mm=tuple(float(v) for v in centre),
            recurrence=rec.mask, sphere=sph.sphere.mask,
            ctvs={lvl: c.mask for lvl, c in levels.level_ctv.items() if c is not None},
            prescriptions=levels.prescriptions, isodose_fraction=config.thresholds.isodose_fraction,
            class_summary=_class_summary(rows, mohamed.type),
            registered_relapse=registered_relapse,  # the overlay's relapse panel (None: three panels)
        )
        written = render_overlay(volumes, ctx, Path(figure_path))
    return DosimetryResult(dose_statistics=stats, classification=classification, figure_path=written, issues=issues)


def _dose_statistics(volumes: PatientVolumes, config: TrialConfig, levels: ArmLevels, rec, sph: SphereStep) -> pl.DataFrame:
    """Long table: every planning CTV, every organ, the mapped rGTV (voxels) and the sphere (sub-voxel samples)."""
    dose_arr = sitk.GetArrayViewFromImage(volumes.dose)
    vcc = voxel_volume_cc(volumes.dose)
    frac = config.thresholds.isodose_fraction
    bw = config.dose_statistics.bin_width_gy
    prescriptions = levels.prescriptions
    level_of = {c.name: lvl for lvl, c in levels.level_ctv.items() if c is not None}
    rows = []

    def add(name: str, role: str, level: str | None, doses: np.ndarray, unit_cc: float = vcc) -> None:
        stats = structure_statistics(doses, unit_cc, prescriptions, frac, bw)
        rows.append({"patient_id": volumes.patient_id, "structure": name, "role": role, "level": level, **stats})

    for s in volumes.find("ctv", "planning"):
        add(s.name, "ctv", level_of.get(s.name), dose_arr[mask_array(s.mask)])
    for s in volumes.find("organ", "planning"):
        add(s.name, "organ", None, dose_arr[mask_array(s.mask)])
    add(rec.name, "recurrence", None, dose_arr[mask_array(rec.mask)])
    # The sphere from its sub-voxel samples (each 1/N of 4/3 π r³, 0 Gy beyond the grid), so its
    # V95 equals 100 × sphere_fraction and a sub-voxel sphere has statistics too.
    smp = sph.samples
    add("sphere", "sphere", None, smp.doses_gy, smp.volume_cc / smp.doses_gy.size)
    return pl.DataFrame(rows, schema=DOSE_STATISTICS_SCHEMA)


SEED_COLUMNS: dict[str, str] = {  # seed-style name <- recurrence_classification column
    "patient": "patient_id", "arm": "arm", "level": "level", "prescription": "prescription_gy",
    "centroid_class": "centroid_class", "volume_class": "volume_class",
    # beyond the seed
    "level_present": "level_present", "arm_source": "arm_source", "arm_mismatch": "arm_mismatch",
    "centroid_dose_gy": "centroid_dose_gy", "centroid_in_dose_grid": "centroid_in_dose_grid",
    "sphere_fraction": "sphere_fraction", "radius_mm": "radius_mm",
    "dawson_fraction": "dawson_fraction", "dawson_class": "dawson_class",
    "mohamed_type": "mohamed_type", "probability_inside": "probability_inside",
}


def seed_csv_rows(classifications: pl.DataFrame) -> pl.DataFrame:
    """The classification rows in the seed's CSV shape (seed-style names first, then rtmap's additions)."""
    return classifications.select([pl.col(src).alias(dst) for dst, src in SEED_COLUMNS.items()])


def write_seed_csvs(classifications: pl.DataFrame, out_dir: Path, trial: str, *, per_patient: bool = True) -> list[Path]:
    """The seed's CSVs for the rows of `trial` (atomic writes); returns the paths written.

    per_patient=True: one `<patient>_classifications.csv` per patient in the frame (the per-patient
    asset, which only holds its own rows); per_patient=False: `<trial>_all_classifications.csv` (the
    cohort asset, which holds every patient). Kept apart so a patient run never overwrites the
    cohort file with one patient's rows.
    """
    out_dir = Path(out_dir)
    rows = seed_csv_rows(classifications.filter(pl.col("trial") == trial).sort("patient_id", maintain_order=True))
    if not per_patient:
        return [atomic_write(out_dir / f"{trial}_all_classifications.csv", lambda tmp: rows.write_csv(tmp))]
    return [atomic_write(out_dir / f"{patient}_classifications.csv", lambda tmp, d=part: d.write_csv(tmp))
            for (patient,), part in rows.group_by("patient", maintain_order=True)]
