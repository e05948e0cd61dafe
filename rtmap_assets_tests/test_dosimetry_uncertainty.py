"""Rule 5: landmark distance and the sphere radius policy."""

from __future__ import annotations

import numpy as np
import pytest

from rtmap_assets.config import Uncertainty
from rtmap_assets.dosimetry.uncertainty import (
    cohort_radius,
    landmark_distance_mm,
    patient_uncertainty_mm,
    sphere_radius,
)
from rtmap_assets.errors import PatientDataError
from test_dosimetry_pipeline import ball, make_volumes


def test_landmark_distance_is_euclidean():
    assert landmark_distance_mm(np.array([0, 0, 0]), np.array([3, 4, 12])) == pytest.approx(13.0)


def test_patient_uncertainty_from_mask_centroids():
    # planning landmark at (0, 20, 10), mapped one shifted by (3, 0, 4): 5 mm (voxel centres symmetric)
    assert patient_uncertainty_mm(make_volumes(landmark_shift=(3.0, 0.0, 4.0))) == pytest.approx(5.0)
    assert patient_uncertainty_mm(make_volumes(landmark_shift=(0.0, 0.0, 0.0))) == pytest.approx(0.0)


def test_patient_uncertainty_missing_or_empty_landmark():
    vols = make_volumes()
    vols.structures = [s for s in vols.structures if not (s.role == "landmark" and s.space == "mapped")]
    with pytest.raises(PatientDataError) as err:
        patient_uncertainty_mm(vols)
    assert err.value.code == "LANDMARK_MISSING"
    vols = make_volumes()
    for s in vols.structures:
        if s.role == "landmark" and s.space == "mapped":
            s.mask = ball((0, 0, 0), 1) * 0
    with pytest.raises(PatientDataError) as err:
        patient_uncertainty_mm(vols)
    assert err.value.code == "LANDMARK_EMPTY"


def test_cohort_radius_is_a_percentile_and_changes_with_the_cohort():
    d = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert cohort_radius(d, 50) == pytest.approx(3.0)
    assert cohort_radius(d, 95) == pytest.approx(4.8)
    assert cohort_radius(d + [9.0], 95) == pytest.approx(8.0)  # a new patient moves it
    # well-registered cohort: sub-voxel radii are kept (rule 5 with sub-voxel sampling, no one-voxel floor)
    assert cohort_radius([0.1, 0.2, float("nan")], 95) == pytest.approx(0.195)
    with pytest.raises(ValueError):
        cohort_radius([float("nan")], 95)


def test_radius_policies_keep_sub_voxel_radii():
    fixed = sphere_radius(Uncertainty(policy="fixed", radius_mm=5.0))
    assert (fixed.radius_mm, fixed.policy) == (5.0, "fixed")
    assert sphere_radius(Uncertainty(policy="fixed", radius_mm=1.0)).radius_mm == 1.0
    pat = sphere_radius(Uncertainty(policy="patient"), patient_distance_mm=3.7)
    assert pat.radius_mm == pytest.approx(3.7)
    assert sphere_radius(Uncertainty(policy="patient"), patient_distance_mm=0.4).radius_mm == 0.4
    assert sphere_radius(Uncertainty(policy="patient"), patient_distance_mm=0.0).radius_mm == 0.0
    coh = sphere_radius(Uncertainty(policy="cohort"), cohort_radius_mm=6.5, patient_distance_mm=1.0)
    assert coh.radius_mm == 6.5
    with pytest.raises(PatientDataError):
        sphere_radius(Uncertainty(policy="patient"), patient_distance_mm=None)
    with pytest.raises(ValueError):
        sphere_radius(Uncertainty(policy="cohort"))
