"""Rule 13: Monte Carlo probability of the centroid being inside each 95 % isodose."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from rtmap_assets.dosimetry.classification import centroid_class, centroid_dose
from rtmap_assets.dosimetry.probability import displaced_points, probability_inside

PRES = {"low": 0.0, "intermediate": 54.0, "high": 60.0}


def x_gradient() -> sitk.Image:
    """dose = x (Gy per mm) on a 2 mm grid, x ∈ [0, 118] mm."""
    n = 60
    x = 2.0 * np.arange(n, dtype=np.float32)
    img = sitk.GetImageFromArray(np.broadcast_to(x, (n, n, n)).copy())
    img.SetSpacing((2.0, 2.0, 2.0))
    return img


def test_sigma_zero_reproduces_the_hard_centroid_class_exactly():
    d = x_gradient()
    for x in (50.0, 56.9, 57.0, 57.1, 70.0):
        centre = np.array([x, 60.0, 60.0])
        val, _ = centroid_dose(d, centre)
        p = probability_inside(d, centre, 0.0, PRES, 0.95, samples=500, seed=1)
        assert p["high"] == centroid_class(val, 60.0, 0.95)
        assert p["intermediate"] == centroid_class(val, 54.0, 0.95)
        assert p["low"] is None


@pytest.mark.parametrize("offset", [-1.0, 1.0])
def test_probability_converges_to_the_hard_class_as_sigma_shrinks(offset):
    d = x_gradient()
    centre = np.array([57.0 + offset, 60.0, 60.0])  # 1 mm from the 57 Gy isodose of 60 Gy
    hard = centroid_class(centroid_dose(d, centre)[0], 60.0, 0.95)
    gaps = [abs(probability_inside(d, centre, s, PRES, 0.95, samples=4000, seed=0)["high"] - hard)
            for s in (2.0, 1.0, 0.5, 0.2, 0.01)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] == 0.0 and gaps[0] > 0.1


def test_probability_matches_the_normal_cdf_on_a_linear_field():
    d = x_gradient()
    centre = np.array([58.0, 60.0, 60.0])  # 1 mm above the 57 Gy threshold; P = Φ(1/σ)
    for sigma in (1.0, 3.0):
        p = probability_inside(d, centre, sigma, PRES, 0.95, samples=20000, seed=7)["high"]
        assert p == pytest.approx(0.5 * (1 + math.erf(1.0 / sigma / math.sqrt(2))), abs=0.015)


def test_deterministic_for_a_seed_and_ordered_across_levels():
    d = x_gradient()
    centre = np.array([55.0, 60.0, 60.0])
    a = probability_inside(d, centre, 3.0, PRES, 0.95, samples=1000, seed=11)
    b = probability_inside(d, centre, 3.0, PRES, 0.95, samples=1000, seed=11)
    c = probability_inside(d, centre, 3.0, PRES, 0.95, samples=1000, seed=12)
    assert a == b and a != c
    assert a["high"] <= a["intermediate"]  # the same samples for nested isodoses
    np.testing.assert_array_equal(displaced_points(centre, 3.0, 10, 5), displaced_points(centre, 3.0, 10, 5))


def test_samples_leaving_the_grid_count_as_dose_zero():
    d = x_gradient()
    centre = np.array([117.0, 60.0, 0.5])  # on the z edge: about half the samples leave the grid
    p = probability_inside(d, centre, 5.0, PRES, 0.95, samples=4000, seed=0)["high"]
    assert 0.4 < p < 0.6


def test_invalid_arguments():
    with pytest.raises(ValueError):
        displaced_points(np.zeros(3), -1.0, 10, 0)
    with pytest.raises(ValueError):
        displaced_points(np.zeros(3), 1.0, 0, 0)
