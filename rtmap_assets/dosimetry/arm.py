"""Trial arm from the delivered dose, and CTV-to-level assignment (DESIGN.md rule 8).

The CTVs on the planning RTSTRUCT are not labelled with levels; their names carry the nominal
dose (e.g. `CTV_65`). A level with prescription P is the CTV matching the trial's CTV aliases
instantiated with P (`*CTV*{dose}*` -> `*CTV*65*`).

The arm from dose: m = mean dose in the CTV with the highest nominal dose among CTVs matching any
arm's prescriptions; the arm is the one with the highest high-level prescription p such that
m ≥ p − tolerance. No such arm -> "unassigned". Several arms sharing that p cannot be told apart
by dose -> "ambiguous" (the seed had a branch for this that could never be true). Trial covariates,
when they name the arm, win; a disagreement with the dose is flagged, not hidden.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import SimpleITK as sitk

from rtmap_assets.config import LEVELS, TrialConfig
from rtmap_assets.dosimetry.regions import mask_array
from rtmap_assets.errors import PatientDataError
from rtmap_assets.naming import match_aliases
from rtmap_assets.pipeline.volumes import StructureMask

UNASSIGNED = "unassigned"
AMBIGUOUS = "ambiguous"


def ctv_for_prescription(ctvs: Sequence[StructureMask], prescription_gy: float, config: TrialConfig) -> StructureMask | None:
    """The CTV whose name matches the CTV aliases for this dose; None if none matches.

    Only the earliest alias that matches anything counts; two CTVs matching it are ambiguous and a
    patient data error (rule 1: never a guess).
    """
    if prescription_gy <= 0:
        return None
    by_name = {s.name: s for s in ctvs}
    for alias in config.aliases.ctv_for_dose(prescription_gy):
        hits = [name for name, _ in match_aliases(by_name, [alias])]
        if len(hits) > 1:
            raise PatientDataError(
                "ambiguous_ctv",
                f"several CTVs match '{alias}' for {prescription_gy:g} Gy: {hits}",
                stage="dosimetry",
            )
        if hits:
            return by_name[hits[0]]
    return None


def level_ctvs(ctvs: Sequence[StructureMask], prescriptions: dict[str, float], config: TrialConfig) -> dict[str, StructureMask | None]:
    """Level -> CTV for an arm's prescriptions (None for absent levels or unmatched names)."""
    return {level: ctv_for_prescription(ctvs, prescriptions[level], config) for level in LEVELS}


def mean_dose_in(dose: sitk.Image, mask: sitk.Image) -> float | None:
    m = mask_array(mask)
    if not m.any():
        return None
    return float(sitk.GetArrayViewFromImage(dose)[m].mean(dtype=np.float64))


@dataclass(frozen=True)
class ArmDecision:
    arm: str  # arm used for classification: an arm name, "unassigned" or "ambiguous"
    arm_source: Literal["covariates", "dose"]
    arm_from_dose: str  # arm name, "unassigned" or "ambiguous"
    arm_mismatch: bool  # covariates name an arm different from the dose's answer
    ctv_mean_dose_gy: float | None  # m
    ctv_name: str | None  # the CTV m was measured in
    ctv_nominal_gy: float | None
    candidates: tuple[str, ...] = field(default=())  # arms tied when ambiguous

    @property
    def resolved(self) -> bool:
        return self.arm not in (UNASSIGNED, AMBIGUOUS)


def arm_from_mean_dose(mean_dose_gy: float | None, config: TrialConfig) -> tuple[str, tuple[str, ...]]:
    """(arm, tied candidates) for a CTV mean dose m; m None -> unassigned."""
    if mean_dose_gy is None:
        return UNASSIGNED, ()
    tol = config.thresholds.arm_tolerance_gy
    eligible = {name: levels[2] for name, levels in config.arms.items() if mean_dose_gy >= levels[2] - tol}
    if not eligible:
        return UNASSIGNED, ()
    p_best = max(eligible.values())
    best = tuple(sorted(n for n, p in eligible.items() if p == p_best))
    if len(best) > 1:
        return AMBIGUOUS, best
    return best[0], ()


def _resolve_covariate_arm(covariate_arm: str, config: TrialConfig) -> str:
    if covariate_arm in config.arms:
        return covariate_arm
    folded = {name.casefold(): name for name in config.arms}
    hit = folded.get(covariate_arm.strip().casefold())
    if hit is None:
        raise PatientDataError(
            "unknown_covariate_arm",
            f"covariates name arm '{covariate_arm}', which is not one of the trial's arms {sorted(config.arms)}",
            stage="dosimetry",
        )
    return hit


def determine_arm(
    ctvs: Sequence[StructureMask], dose: sitk.Image, config: TrialConfig, covariate_arm: str | None = None
) -> ArmDecision:
    """Rule 8 for one patient (see module docstring)."""
    nominal = sorted({p for levels in config.arms.values() for p in levels if p > 0}, reverse=True)
    chosen: StructureMask | None = None
    chosen_p: float | None = None
    for p in nominal:  # highest nominal dose first
        ctv = ctv_for_prescription(ctvs, p, config)
        if ctv is not None:
            chosen, chosen_p = ctv, p
            break
    m = mean_dose_in(dose, chosen.mask) if chosen is not None else None
    from_dose, tied = arm_from_mean_dose(m, config)
    if covariate_arm is not None and str(covariate_arm).strip():
        arm = _resolve_covariate_arm(str(covariate_arm), config)
        # An ambiguous dose answer that includes the covariates' arm does not contradict them.
        mismatch = from_dose != arm and not (from_dose == AMBIGUOUS and arm in tied)
        return ArmDecision(arm=arm, arm_source="covariates", arm_from_dose=from_dose, arm_mismatch=mismatch,
                           ctv_mean_dose_gy=m, ctv_name=chosen.name if chosen else None, ctv_nominal_gy=chosen_p,
                           candidates=tied)
    return ArmDecision(arm=from_dose, arm_source="dose", arm_from_dose=from_dose, arm_mismatch=False,
                       ctv_mean_dose_gy=m, ctv_name=chosen.name if chosen else None, ctv_nominal_gy=chosen_p,
                       candidates=tied)
