"""Trial arm from the delivered dose, and CTV-to-level assignment (docs/RULES.md rules 2 and 8).

The CTVs on the planning RTSTRUCT are not labelled with levels; their names say either the nominal
dose (`CTV_65`) or the risk level (`CTV_High`, `ctv_hr`). The CTV of a level with prescription P is
the one structure matching that level's names (`aliases.ctv_by_level[level]`) or the dose-templated
names instantiated with P (`*CTV*{dose}*` -> `*CTV*65*`). Two structures for one level is
`CTV_AMBIGUOUS` (rule 1: never a guess); which alias matched is recorded.

The arm from dose tests the arms from the highest high-level prescription p down: for each, the
high-level CTV *of that arm* (its level names, or the dose name for its p) and its mean dose m; the
first arm with m ≥ p − tolerance is the arm. Several arms sharing that p cannot be told apart by
dose -> "ambiguous" (the seed had a branch for this that could never be true); none -> "unassigned".
Measuring "the first CTV matching any prescription" instead mixed levels: 57 Gy in a 54 Gy CTV
read while looking for the 65 Gy one gave arm C for an arm-B patient.

Plausibility: the CTV chosen for a level should receive about that level's dose: its D95 not above
(1 + tol)·P and its mean not below (1 − tol)·P (tol = `ctv_dose_tolerance_fraction`, 10 %; see
`implausible_dose` for why not the mean on both sides). Otherwise `CTV_DOSE_IMPLAUSIBLE` with the
numbers; for the CTV that would decide the arm it leaves the arm unassigned instead of silently
picking one. Trial covariates, when they name the arm, win; a disagreement with the dose is flagged.
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
STAGE = "dosimetry"


@dataclass(frozen=True)
class LevelCtv:
    """The CTV of one level and the alias that matched it (recorded as `ctv_alias`)."""

    structure: StructureMask
    alias: str

    @property
    def name(self) -> str:
        return self.structure.name

    @property
    def mask(self) -> sitk.Image:
        return self.structure.mask


def ctv_for_level(ctvs: Sequence[StructureMask], level: str, prescription_gy: float,
                  config: TrialConfig) -> LevelCtv | None:
    """The CTV of `level` at `prescription_gy`: the one structure matching the level's names or the
    dose-templated names for P; None for an absent level or no match.

    Raises PatientDataError("CTV_AMBIGUOUS") naming every candidate when two structures match.
    """
    patterns = config.aliases.ctv_for_level(level, prescription_gy)
    if not patterns:
        return None
    by_name = {s.name: s for s in ctvs}
    hits = match_aliases(by_name, patterns)
    if len(hits) > 1:
        listing = ", ".join(f"'{n}' (alias {a})" for n, a in hits)
        raise PatientDataError(
            "CTV_AMBIGUOUS",
            f"{len(hits)} CTVs could be the {level} level's ({prescription_gy:g} Gy): {listing}",
            stage=STAGE,
        )
    if not hits:
        return None
    name, alias = hits[0]
    return LevelCtv(by_name[name], alias)


def level_ctvs(ctvs: Sequence[StructureMask], prescriptions: dict[str, float],
               config: TrialConfig) -> tuple[dict[str, LevelCtv | None], dict[str, PatientDataError]]:
    """Level -> CTV for an arm's prescriptions, and level -> CTV_AMBIGUOUS problem.

    An ambiguous level is None with its error (the other levels and the CTV-free classes go on): two
    structures for one level, or one structure matching two levels' names. Absent levels and
    unmatched names are None without an error here (the caller reports a present level without a CTV).
    """
    out: dict[str, LevelCtv | None] = {}
    problems: dict[str, PatientDataError] = {}
    for level in LEVELS:
        try:
            out[level] = ctv_for_level(ctvs, level, prescriptions[level], config)
        except PatientDataError as exc:
            out[level] = None
            problems[level] = exc
    for i, a in enumerate(LEVELS):
        for b in LEVELS[i + 1:]:
            ca, cb = out[a], out[b]
            if ca is not None and cb is not None and ca.name == cb.name:
                err = PatientDataError(
                    "CTV_AMBIGUOUS",
                    f"CTV '{ca.name}' matches both the {a} level ({prescriptions[a]:g} Gy, alias {ca.alias}) and "
                    f"the {b} level ({prescriptions[b]:g} Gy, alias {cb.alias})", stage=STAGE)
                out[a] = out[b] = None
                problems[a] = problems[b] = err
    return out, problems


def mean_dose_in(dose: sitk.Image, mask: sitk.Image) -> float | None:
    m = mask_array(mask)
    if not m.any():
        return None
    return float(sitk.GetArrayViewFromImage(dose)[m].mean(dtype=np.float64))


def d95_in(dose: sitk.Image, mask: sitk.Image) -> float | None:
    """The dose the coldest 5 % of the CTV's voxels stay below (5th percentile, linear)."""
    m = mask_array(mask)
    if not m.any():
        return None
    return float(np.percentile(sitk.GetArrayViewFromImage(dose)[m], 5.0))


def implausible_dose(mean_gy: float | None, d95_gy: float | None, prescription_gy: float,
                     tolerance_fraction: float) -> bool:
    """A CTV's dose does not fit its level's prescription P: its D95 above (1 + tol)·P (it received a
    hotter level's dose throughout) or its mean below (1 − tol)·P (it mostly received a cooler level's).

    Not the mean on both sides: an elective CTV enclosing part of the boost has a mean well above its
    prescription (+13 % measured on the synthetic cohort's 54 Gy CTVs) while its D95 stays at it; an
    under-covered high CTV has a low D95 while its mean stays near P.
    """
    if prescription_gy <= 0 or mean_gy is None or d95_gy is None:
        return False
    return d95_gy > (1 + tolerance_fraction) * prescription_gy or mean_gy < (1 - tolerance_fraction) * prescription_gy


def implausible_error(level_ctv: LevelCtv, level: str, prescription_gy: float, mean_gy: float, d95_gy: float,
                      tolerance_fraction: float) -> PatientDataError:
    def rel(v: float) -> str:
        return f"{100 * (v / prescription_gy - 1):+.1f} %"
    return PatientDataError(
        "CTV_DOSE_IMPLAUSIBLE",
        f"CTV '{level_ctv.name}' (alias {level_ctv.alias}) matched the {level} level of {prescription_gy:g} Gy "
        f"but received mean {mean_gy:.2f} Gy ({rel(mean_gy)}) and D95 {d95_gy:.2f} Gy ({rel(d95_gy)}); "
        f"plausible: D95 ≤ {100 * (1 + tolerance_fraction):g} % and mean ≥ {100 * (1 - tolerance_fraction):g} % "
        f"of the prescription. Another level's CTV, or a wrong name?",
        stage=STAGE,
    )


@dataclass(frozen=True)
class ArmTest:
    """One tested high-level prescription: the arms sharing it, the CTV found and its mean dose."""

    prescription_gy: float
    arms: tuple[str, ...]
    ctv_name: str | None
    ctv_alias: str | None
    mean_dose_gy: float | None

    def describe(self) -> str:
        arms = "/".join(self.arms)
        if self.ctv_name is None:
            return f"arm {arms} ({self.prescription_gy:g} Gy): no high-level CTV"
        mean = "empty" if self.mean_dose_gy is None else f"mean {self.mean_dose_gy:.2f} Gy"
        return f"arm {arms} ({self.prescription_gy:g} Gy): {self.ctv_name} (alias {self.ctv_alias}) {mean}"


@dataclass(frozen=True)
class ArmDecision:
    arm: str  # arm used for classification: an arm name, "unassigned" or "ambiguous"
    arm_source: Literal["covariates", "dose"]
    arm_from_dose: str  # arm name, "unassigned" or "ambiguous"
    arm_mismatch: bool  # covariates name an arm different from the dose's answer
    ctv_mean_dose_gy: float | None  # m
    ctv_name: str | None  # the CTV m was measured in
    ctv_nominal_gy: float | None  # the high-level prescription it was tested against
    candidates: tuple[str, ...] = field(default=())  # arms tied when ambiguous
    ctv_alias: str | None = None
    tested: tuple[ArmTest, ...] = field(default=())  # every arm tested, highest p first
    problems: tuple[PatientDataError, ...] = field(default=())  # CTV_AMBIGUOUS / CTV_DOSE_IMPLAUSIBLE met

    @property
    def resolved(self) -> bool:
        return self.arm not in (UNASSIGNED, AMBIGUOUS)


def arm_from_mean_dose(mean_dose_gy: float | None, config: TrialConfig) -> tuple[str, tuple[str, ...]]:
    """(arm, tied candidates) for a high-level CTV mean dose m measured for every arm alike (a
    level-named high CTV); m None -> unassigned."""
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
            stage=STAGE,
        )
    return hit


@dataclass(frozen=True)
class _DoseAnswer:
    arm: str
    tied: tuple[str, ...]
    test: ArmTest | None  # the test that decided (or the first with a CTV when none did)
    tested: tuple[ArmTest, ...]
    problems: tuple[PatientDataError, ...]


def arm_from_dose(ctvs: Sequence[StructureMask], dose: sitk.Image, config: TrialConfig) -> _DoseAnswer:
    """Rule 8 from dose alone: test each arm's own high-level CTV, highest prescription first."""
    tol_gy = config.thresholds.arm_tolerance_gy
    tol_frac = config.thresholds.ctv_dose_tolerance_fraction
    by_p: dict[float, list[str]] = {}
    for name, levels in config.arms.items():
        by_p.setdefault(float(levels[2]), []).append(name)
    tested: list[ArmTest] = []
    for p in sorted(by_p, reverse=True):
        arms = tuple(sorted(by_p[p]))
        try:
            high = ctv_for_level(ctvs, "high", p, config)
        except PatientDataError as exc:
            # Two candidates for this arm's high CTV: the arm can be neither confirmed nor ruled out.
            tested.append(ArmTest(p, arms, None, None, None))
            return _DoseAnswer(UNASSIGNED, (), None, tuple(tested), (exc,))
        m = mean_dose_in(dose, high.mask) if high is not None else None
        test = ArmTest(p, arms, high.name if high else None, high.alias if high else None, m)
        tested.append(test)
        if m is None or m < p - tol_gy:
            continue
        d95 = d95_in(dose, high.mask)
        if implausible_dose(m, d95, p, tol_frac):
            # Far above this arm's dose: a hotter arm's CTV under a level name, or a wrong structure.
            return _DoseAnswer(UNASSIGNED, (), test, tuple(tested),
                               (implausible_error(high, "high", p, m, d95, tol_frac),))
        if len(arms) > 1:
            return _DoseAnswer(AMBIGUOUS, arms, test, tuple(tested), ())
        return _DoseAnswer(arms[0], (), test, tuple(tested), ())
    first = next((t for t in tested if t.ctv_name is not None), None)
    return _DoseAnswer(UNASSIGNED, (), first, tuple(tested), ())


def determine_arm(
    ctvs: Sequence[StructureMask], dose: sitk.Image, config: TrialConfig, covariate_arm: str | None = None
) -> ArmDecision:
    """Rule 8 for one patient (see module docstring)."""
    ans = arm_from_dose(ctvs, dose, config)
    t = ans.test
    common = dict(arm_from_dose=ans.arm, ctv_mean_dose_gy=t.mean_dose_gy if t else None,
                  ctv_name=t.ctv_name if t else None, ctv_nominal_gy=t.prescription_gy if t else None,
                  ctv_alias=t.ctv_alias if t else None, candidates=ans.tied, tested=ans.tested,
                  problems=ans.problems)
    if covariate_arm is not None and str(covariate_arm).strip():
        arm = _resolve_covariate_arm(str(covariate_arm), config)
        # An ambiguous dose answer that includes the covariates' arm does not contradict them.
        mismatch = ans.arm != arm and not (ans.arm == AMBIGUOUS and arm in ans.tied)
        return ArmDecision(arm=arm, arm_source="covariates", arm_mismatch=mismatch, **common)
    return ArmDecision(arm=ans.arm, arm_source="dose", arm_mismatch=False, **common)


def level_plausibility(level_ctv: dict[str, LevelCtv | None], prescriptions: dict[str, float], dose: sitk.Image,
                       config: TrialConfig) -> list[PatientDataError]:
    """CTV_DOSE_IMPLAUSIBLE for each present level whose CTV's mean dose is far from its prescription."""
    tol = config.thresholds.ctv_dose_tolerance_fraction
    out = []
    for level in LEVELS:
        c, p = level_ctv.get(level), prescriptions[level]
        if c is None or p <= 0:
            continue
        m, d95 = mean_dose_in(dose, c.mask), d95_in(dose, c.mask)
        if implausible_dose(m, d95, p, tol):
            out.append(implausible_error(c, level, p, m, d95, tol))
    return out
