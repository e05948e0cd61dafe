"""Rule 8: CTV-to-level assignment by name and the trial arm from dose / covariates."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from rtmap_assets.config import TrialConfig
from rtmap_assets.dosimetry.arm import arm_from_mean_dose, ctv_for_prescription, determine_arm, level_ctvs
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
    levels = level_ctvs(ctvs, CONFIG.prescriptions("A"), CONFIG)
    assert {k: v.name for k, v in levels.items()} == {"high": "CTV_65", "intermediate": "ctv 60 Gy", "low": "CTV54_nodes"}
    levels_b = level_ctvs(ctvs, CONFIG.prescriptions("B"), CONFIG)
    assert levels_b["low"] is None and levels_b["intermediate"].name == "CTV54_nodes"
    assert ctv_for_prescription(ctvs, 50.0, CONFIG) is None
    with pytest.raises(PatientDataError) as err:
        ctv_for_prescription([ctv("CTV_65"), ctv("CTV_65_boost")], 65.0, CONFIG)
    assert err.value.code == "AMBIGUOUS_CTV"


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
