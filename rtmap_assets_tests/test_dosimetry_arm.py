"""Rule 8: CTV-to-level assignment by name and the trial arm from dose / covariates."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from rtmap_assets.config import TrialConfig
from rtmap_assets.dosimetry.arm import (
    LevelCtv,
    arm_from_mean_dose,
    ctv_for_level,
    determine_arm,
    level_ctvs,
    level_plausibility,
)
from rtmap_assets.errors import PatientDataError
from rtmap_assets.pipeline.volumes import StructureMask

CONFIG = TrialConfig(trial="T")  # arms A [54,60,65], B [0,54,60], C [0,0,50], tolerance 0.5 Gy


def mask(value: int = 1) -> sitk.Image:
    m = sitk.Image(4, 4, 4, sitk.sitkUInt8)
    m[1, 1, 1] = value
    m[2, 1, 1] = value
    return m


def dose(gy: float) -> sitk.Image:
    d = sitk.Image(4, 4, 4, sitk.sitkFloat32) + gy
    return d


def ctv(name: str) -> StructureMask:
    return StructureMask(name, "ctv", "planning", mask())


@pytest.mark.parametrize(
    ("m", "arm"),
    [(66.0, "A"), (64.5, "A"), (64.49, "B"), (59.5, "B"), (59.4, "C"), (49.5, "C"), (49.4, "unassigned"), (None, "unassigned")],
)
def test_arm_from_mean_dose_boundaries(m, arm):
    assert arm_from_mean_dose(m, CONFIG)[0] == arm


def test_tied_high_prescriptions_are_reported_as_ambiguous():
    cfg = TrialConfig(trial="T", arms={"X": (0, 54, 60), "Y": (50, 54, 60), "Z": (0, 0, 50)})
    assert arm_from_mean_dose(60.0, cfg) == ("ambiguous", ("X", "Y"))
    assert arm_from_mean_dose(55.0, cfg) == ("Z", ())


def test_ctv_assignment_by_name_and_ambiguity():
    ctvs = [ctv("CTV_65"), ctv("ctv 60 Gy"), ctv("CTV54_nodes"), ctv("PTV_65")]
    levels, problems = level_ctvs(ctvs, CONFIG.prescriptions("A"), CONFIG)
    assert {k: v.name for k, v in levels.items()} == {"high": "CTV_65", "intermediate": "ctv 60 Gy", "low": "CTV54_nodes"}
    assert levels["high"].alias == "*CTV*65*" and problems == {}
    levels_b, _ = level_ctvs(ctvs, CONFIG.prescriptions("B"), CONFIG)
    assert levels_b["low"] is None and levels_b["intermediate"].name == "CTV54_nodes"
    assert ctv_for_level(ctvs, "high", 50.0, CONFIG) is None and ctv_for_level(ctvs, "low", 0.0, CONFIG) is None
    with pytest.raises(PatientDataError) as err:
        ctv_for_level([ctv("CTV_65"), ctv("CTV_65_boost")], "high", 65.0, CONFIG)
    assert err.value.code == "CTV_AMBIGUOUS"
    assert "'CTV_65' (alias *CTV*65*)" in err.value.message and "'CTV_65_boost'" in err.value.message


LEVEL_CONFIG = TrialConfig(trial="T", aliases={"ctv": ["*CTV*{dose}*"], "ctv_by_level": {
    "high": ["CTV_High", "ctv_hr", "*CTV*high*"],
    "intermediate": ["CTV_Mid", "ctv_ir", "*CTV*mid*", "*CTV*inter*"],
    "low": ["CTV_Low", "ctv_lr", "*CTV*low*"]}})


def masked_dose(values: dict[str, float], shape=(4, 4, 4)) -> tuple[list[StructureMask], sitk.Image]:
    """One voxel per CTV, each with its own dose: the CTVs are told apart by their mean dose."""
    arr = np.zeros(shape[::-1], dtype=np.float32)
    structures = []
    for i, (name, gy) in enumerate(values.items()):
        m = np.zeros(shape[::-1], dtype=np.uint8)
        m[0, 0, i] = 1
        arr[0, 0, i] = gy
        structures.append(StructureMask(name, "ctv", "planning", sitk.GetImageFromArray(m)))
    return structures, sitk.GetImageFromArray(arr)


@pytest.mark.parametrize(("names", "arm", "high"), [
    ({"CTV_High": 65.1, "CTV_Mid": 60.3, "CTV_Low": 55.0}, "A", "CTV_High"),
    ({"ctv_hr": 60.2, "ctv_ir": 55.0}, "B", "ctv_hr"),
    ({"CTV_high_risk": 50.1}, "C", "CTV_high_risk"),
])
def test_level_named_ctvs_pick_the_right_ctv_and_arm(names, arm, high):
    ctvs, d = masked_dose(names)
    dec = determine_arm(ctvs, d, LEVEL_CONFIG)
    assert (dec.arm, dec.ctv_name) == (arm, high) and dec.problems == ()
    levels, problems = level_ctvs(ctvs, LEVEL_CONFIG.prescriptions(arm), LEVEL_CONFIG)
    assert problems == {}
    got = {lvl: (c.name if c else None) for lvl, c in levels.items()}
    want = dict(zip(("high", "intermediate", "low"), list(names) + [None] * (3 - len(names))))
    assert got == want
    assert level_plausibility(levels, LEVEL_CONFIG.prescriptions(arm), d, LEVEL_CONFIG) == []


def test_57_gy_in_the_54_gy_ctv_is_not_read_as_the_65_gy_one():
    # An arm-B plan (60/54 Gy) named by level and by dose: the 54 Gy CTV received 57 Gy on average (it
    # encloses part of the boost). The seed-like "first CTV for any prescription" read 57 Gy there while
    # looking for the 65 Gy one and answered C. Each arm is tested with its own high-level CTV: B.
    ctvs, d = masked_dose({"ctv_hr": 60.1, "CTV_54": 57.0})
    dec = determine_arm(ctvs, d, LEVEL_CONFIG)
    assert (dec.arm, dec.ctv_name, dec.ctv_alias, dec.ctv_nominal_gy) == ("B", "ctv_hr", "ctv_hr", 60.0)
    assert dec.ctv_mean_dose_gy == pytest.approx(60.1)
    assert [t.prescription_gy for t in dec.tested] == [65.0, 60.0]
    levels, _ = level_ctvs(ctvs, LEVEL_CONFIG.prescriptions("B"), LEVEL_CONFIG)
    assert (levels["high"].name, levels["intermediate"].name, levels["intermediate"].alias) == (
        "ctv_hr", "CTV_54", "*CTV*54*")
    # 57 Gy in a 54 Gy CTV is +5.6 %: plausible at the default 10 %.
    assert level_plausibility(levels, LEVEL_CONFIG.prescriptions("B"), d, LEVEL_CONFIG) == []


def test_two_ctvs_for_one_level_are_ambiguous_never_a_guess():
    ctvs, d = masked_dose({"CTV_High": 65.0, "CTV_65": 65.0, "CTV_Mid": 60.0})
    dec = determine_arm(ctvs, d, LEVEL_CONFIG)
    assert dec.arm == "unassigned" and [e.code for e in dec.problems] == ["CTV_AMBIGUOUS"]
    assert "'CTV_High' (alias CTV_High)" in dec.problems[0].message and "'CTV_65' (alias *CTV*65*)" in dec.problems[0].message
    levels, problems = level_ctvs(ctvs, LEVEL_CONFIG.prescriptions("A"), LEVEL_CONFIG)
    assert levels["high"] is None and set(problems) == {"high"} and levels["intermediate"].name == "CTV_Mid"
    # one structure for two levels is ambiguous as well
    ctvs, _ = masked_dose({"CTV_High_60": 60.0})
    levels, problems = level_ctvs(ctvs, LEVEL_CONFIG.prescriptions("A"), LEVEL_CONFIG)
    assert levels["high"] is None and levels["intermediate"] is None and set(problems) == {"high", "intermediate"}
    assert problems["high"].code == "CTV_AMBIGUOUS"


def test_implausible_ctv_dose_is_an_issue_never_a_silent_arm():
    # A level-named high CTV with 72 Gy: every arm's m ≥ p − 0.5 holds, but 72 is +10.8 % over 65 Gy.
    ctvs, d = masked_dose({"CTV_High": 72.0})
    dec = determine_arm(ctvs, d, LEVEL_CONFIG)
    assert dec.arm == "unassigned" and not dec.resolved
    (err,) = dec.problems
    assert err.code == "CTV_DOSE_IMPLAUSIBLE"
    assert "D95 72.00 Gy (+10.8 %)" in err.message and "65 Gy" in err.message and "CTV_High" in err.message
    # a wider tolerance accepts it
    wide = LEVEL_CONFIG.model_copy(update={"thresholds": LEVEL_CONFIG.thresholds.model_copy(
        update={"ctv_dose_tolerance_fraction": 0.15})})
    assert determine_arm(ctvs, d, wide).arm == "A"
    # an elective CTV far from its level's dose (a 65 Gy CTV named "Low", +20 % over 54 Gy) is reported per level
    ctvs, d = masked_dose({"CTV_High": 65.0, "CTV_Mid": 60.0, "CTV_Low": 65.0})
    levels, _ = level_ctvs(ctvs, LEVEL_CONFIG.prescriptions("A"), LEVEL_CONFIG)
    (err,) = level_plausibility(levels, LEVEL_CONFIG.prescriptions("A"), d, LEVEL_CONFIG)
    assert err.code == "CTV_DOSE_IMPLAUSIBLE" and "CTV_Low" in err.message and "54 Gy" in err.message
    assert "D95 65.00 Gy (+20.4 %)" in err.message and "mean 65.00 Gy" in err.message


def test_a_nested_elective_ctv_is_hot_on_average_but_plausible():
    # An elective 54 Gy CTV enclosing the boost: mean 61.25 Gy (+13 %, as on the synthetic cohort) but its
    # coldest part at 54-55 Gy (D95): plausible. The same CTV matched to the 65 Gy level: mean below 58.5.
    arr = np.full((10, 10, 10), 66.0, dtype=np.float32)
    arr[:, :, :4] = 55.0  # 40 % of the CTV at 55 Gy, 60 % in the boost at 66 Gy: mean 61.6
    d = sitk.GetImageFromArray(arr)
    low = StructureMask("CTV_Low", "ctv", "planning", sitk.GetImageFromArray(np.ones((10, 10, 10), np.uint8)))
    levels = {"low": LevelCtv(low, "CTV_Low"), "intermediate": None, "high": None}
    assert level_plausibility(levels, {"low": 54.0, "intermediate": 0.0, "high": 65.0}, d, LEVEL_CONFIG) == []
    levels = {"low": None, "intermediate": None, "high": LevelCtv(low, "CTV_Low")}
    (err,) = level_plausibility(levels, {"low": 0.0, "intermediate": 0.0, "high": 70.0}, d, LEVEL_CONFIG)
    assert "mean 61.60 Gy (-12.0 %)" in err.message


def test_config_accepts_level_names_dose_names_or_both():
    only_levels = TrialConfig(trial="T", aliases={"ctv": [], "ctv_by_level": {"high": ["CTV_High"]}})
    assert only_levels.ctv_patterns() == ["CTV_High"]
    both = LEVEL_CONFIG.ctv_patterns()
    assert both[:3] == ["*CTV*65*", "*CTV*60*", "*CTV*54*"] and "ctv_hr" in both and "CTV_Low" in both
    assert LEVEL_CONFIG.aliases.ctv_for_level("high", 60.0)[:3] == ["CTV_High", "ctv_hr", "*CTV*high*"]
    assert LEVEL_CONFIG.aliases.ctv_for_level("low", 0.0) == []
    with pytest.raises(ValueError, match="ctv_by_level"):
        TrialConfig(trial="T", aliases={"ctv": ["CTV_High"]})
    with pytest.raises(ValueError, match="no CTV names"):
        TrialConfig(trial="T", aliases={"ctv": []})


def test_determine_arm_uses_the_highest_nominal_ctv():
    # CTV_60 and CTV_54 present (arm B plan); the mean dose in CTV_60 (the highest nominal) decides.
    ctvs = [ctv("CTV_54"), ctv("CTV_60")]
    d = determine_arm(ctvs, dose(60.2), CONFIG)
    assert (d.arm, d.arm_source, d.arm_from_dose, d.arm_mismatch) == ("B", "dose", "B", False)
    assert d.ctv_name == "CTV_60" and d.ctv_nominal_gy == 60.0 and d.ctv_mean_dose_gy == pytest.approx(60.2)
    assert d.resolved


def test_determine_arm_without_matching_ctv_is_unassigned():
    d = determine_arm([ctv("GTV")], dose(70.0), CONFIG)
    assert d.arm == "unassigned" and d.ctv_mean_dose_gy is None and not d.resolved


def test_covariates_win_and_mismatch_is_flagged():
    ctvs = [ctv("CTV_65")]
    agree = determine_arm(ctvs, dose(65.0), CONFIG, covariate_arm="A")
    assert (agree.arm, agree.arm_source, agree.arm_mismatch) == ("A", "covariates", False)
    differ = determine_arm(ctvs, dose(65.0), CONFIG, covariate_arm=" c ")
    assert (differ.arm, differ.arm_from_dose, differ.arm_mismatch) == ("C", "A", True)
    blank = determine_arm(ctvs, dose(65.0), CONFIG, covariate_arm="")
    assert blank.arm_source == "dose"
    with pytest.raises(PatientDataError) as err:
        determine_arm(ctvs, dose(65.0), CONFIG, covariate_arm="D")
    assert err.value.code == "UNKNOWN_COVARIATE_ARM"


def test_mean_dose_is_over_the_ctv_voxels_only():
    d = dose(0.0)
    d[1, 1, 1] = 64.0
    d[2, 1, 1] = 66.0
    assert determine_arm([ctv("CTV_65")], d, CONFIG).ctv_mean_dose_gy == pytest.approx(65.0)
    assert np.isclose(determine_arm([ctv("CTV_65")], d, CONFIG).ctv_mean_dose_gy, 65.0)


def test_covariates_resolve_an_ambiguous_dose_without_a_mismatch():
    cfg = TrialConfig(trial="T", arms={"X": (0, 54, 60), "Y": (50, 54, 60)})
    ctvs = [ctv("CTV_60")]
    d = determine_arm(ctvs, dose(60.0), cfg)
    assert (d.arm, d.candidates) == ("ambiguous", ("X", "Y")) and not d.resolved
    d = determine_arm(ctvs, dose(60.0), cfg, covariate_arm="Y")
    assert (d.arm, d.arm_from_dose, d.arm_mismatch) == ("Y", "ambiguous", False)
    d = determine_arm(ctvs, dose(40.0), cfg, covariate_arm="Y")
    assert (d.arm_from_dose, d.arm_mismatch) == ("unassigned", True)
