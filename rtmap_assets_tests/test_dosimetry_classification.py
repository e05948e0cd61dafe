"""Rules 9–12: centroid, volume, Dawson and Mohamed classes, with their edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from rtmap_assets.config import Thresholds
from rtmap_assets.dosimetry.classification import (
    centroid_class,
    centroid_dose,
    dawson_class,
    dawson_fraction,
    dose_at_points,
    mohamed_type,
    sphere_fraction,
    volume_class,
)
from rtmap_assets.dosimetry.regions import mask_array, sphere

TH = Thresholds()


def image(arr_zyx: np.ndarray, spacing=2.0, origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(arr_zyx.astype(np.float32))
    img.SetSpacing((spacing,) * 3)
    img.SetOrigin(origin)
    return img


def x_gradient(n=30, slope_gy_per_mm=1.0) -> sitk.Image:
    """dose = slope · x (mm) on a 2 mm grid with voxel centres at x = 0, 2, ..."""
    x = 2.0 * np.arange(n)
    return image(np.broadcast_to(slope_gy_per_mm * x, (n, n, n)).copy())


def test_trilinear_interpolation_is_exact_on_a_linear_field_unlike_the_seeds_truncation():
    d = x_gradient()
    val, inside = centroid_dose(d, np.array([10.9, 20.0, 20.0]))
    assert inside and val == pytest.approx(10.9, abs=1e-5)
    # the seed's truncated index int(10.9 / 2) = 5 -> x = 10 mm -> 10 Gy: for P = 11 Gy (threshold 10.45)
    # the interpolated dose says inside, the truncated one outside
    assert centroid_class(val, 11.0, 0.95) == 1 and centroid_class(10.0, 11.0, 0.95) == 0


def test_outside_the_dose_grid_dose_is_zero_and_flagged():
    d = x_gradient()
    val, inside = centroid_dose(d, np.array([-5.0, 20.0, 20.0]))
    assert (val, inside) == (0.0, False)
    # the outer half voxel is still in the grid (edge value)
    val, inside = centroid_dose(d, np.array([-0.9, 20.0, 20.0]))
    assert inside and val == 0.0
    vals, flags = dose_at_points(d, np.array([[2.0, 2.0, 2.0], [100.0, 2.0, 2.0]]))
    assert vals.tolist() == pytest.approx([2.0, 0.0]) and flags.tolist() == [True, False]


def test_centroid_dose_respects_the_dose_support():
    d = x_gradient()
    support = sitk.Cast(d < 20.0, sitk.sitkUInt8)  # RTDOSE covered x < 20 mm only
    assert centroid_dose(d, np.array([30.0, 20.0, 20.0]), support) == (0.0, False)
    assert centroid_dose(d, np.array([10.0, 20.0, 20.0]), support)[1]


def test_absent_level_has_no_class():
    assert centroid_class(70.0, 0.0, 0.95) is None
    assert volume_class(None, 0.95) is None and dawson_class(None, TH) is None
    d = x_gradient()
    assert sphere_fraction(d, sphere(d, np.array([20.0, 20, 20]), 5.0), 0.0, 0.95) is None


@pytest.mark.parametrize(("f", "cls"), [(1.0, 1), (0.95, 1), (0.9499, 2), (0.01, 2), (0.0, 0)])
def test_volume_class_codes(f, cls):
    assert volume_class(f, 0.95) == cls


@pytest.mark.parametrize(("f", "cls"), [(1.0, "in-field"), (0.95, "in-field"), (0.949, "marginal"), (0.2, "marginal"),
                                        (0.199, "outside"), (0.0, "outside")])
def test_dawson_class_thresholds(f, cls):
    assert dawson_class(f, TH) == cls


def cap_fraction(t_over_r: float) -> float:
    """Exact fraction of a ball's volume beyond a plane at signed distance t (in radii) from its centre."""
    t = float(np.clip(t_over_r, -1.0, 1.0))
    return (1.0 - t) ** 2 * (2.0 + t) / 4.0


def test_sphere_fraction_is_sub_voxel_where_the_seed_counted_voxel_centres():
    # A step edge in x: 60 Gy for x ≤ 22 mm (voxel centres), 0 from x = 24. A 5 mm sphere centred at
    # x = 21 mm holds 70 voxel centres in layers x = 16..26 of 1, 13, 21, 21, 13, 1; the seed's count
    # gives f = 56/70 = 0.8. The trilinear dose crosses 57 Gy at x = 22 + 2·3/60 = 22.1 mm, a plane at
    # 1.1 mm from the centre: the exact hot fraction is 1 − cap(1.1/5) = 0.6623.
    n = 30
    x = 2.0 * np.arange(n)
    d = image(np.broadcast_to(np.where(x <= 23.0, 60.0, 0.0), (n, n, n)).copy())
    centre = np.array([21.0, 20.0, 20.0])
    sph = sphere(d, centre, 5.0)
    f = sphere_fraction(d, sph, 60.0, 0.95)
    assert sph.n_voxels == 70  # the voxel mask (overlay) is unchanged
    assert f == pytest.approx(1.0 - cap_fraction(1.1 / 5.0), abs=0.003)
    assert f == pytest.approx(0.6623, abs=0.003)
    val, _ = centroid_dose(d, centre)
    assert centroid_class(val, 60.0, 0.95) == 1
    assert volume_class(f, 0.95) == 2


@pytest.mark.parametrize("radius_mm", [0.2, 0.5, 1.0, 2.0, 5.0, 12.0])
@pytest.mark.parametrize("offset_in_radii", [-0.9, -0.5, -0.1, 0.0, 0.3, 0.7])
def test_sphere_fraction_matches_the_exact_cap_on_a_planar_isodose(radius_mm, offset_in_radii):
    # dose = 2 Gy/mm · (x − 0.7 y + 0.4 z) on the grid is linear, so its trilinear interpolation is exact
    # and the 95 % isodose of P is a plane at an oblique angle: the hot part of the sphere is a spherical cap.
    n = 30
    z, y, x = np.meshgrid(*(2.0 * np.arange(n),) * 3, indexing="ij")
    g = np.array([1.0, -0.7, 0.4])
    d = image(2.0 * (g[0] * x + g[1] * y + g[2] * z) + 100.0)
    centre = np.array([29.3, 30.1, 28.7])
    unit = g / np.linalg.norm(g)
    thr_point = centre + offset_in_radii * radius_mm * unit  # the isodose plane passes here
    p = float(2.0 * g @ thr_point + 100.0) / 0.95
    f = sphere_fraction(d, sphere(d, centre, radius_mm), p, 0.95)
    assert f == pytest.approx(cap_fraction(offset_in_radii), abs=0.003)


def test_zero_radius_sphere_is_the_centre_point():
    d = x_gradient()
    centre = np.array([21.0, 20.0, 20.0])  # 21 Gy
    assert sphere_fraction(d, sphere(d, centre, 0.0), 21.0 / 0.95 - 0.01, 0.95) == 1.0
    assert sphere_fraction(d, sphere(d, centre, 0.0), 21.0 / 0.95 + 0.01, 0.95) == 0.0


def test_sphere_fraction_counts_the_part_beyond_the_grid_as_dose_zero():
    # Uniform 70 Gy on a grid whose voxels span x ∈ [−1, 19] mm; a 5 mm sphere centred at x = 0 has the
    # part x < −1 mm (a cap beyond a plane 1 mm from the centre) beyond the grid: f = 1 − cap(0.2) = 0.648.
    d = image(np.full((10, 10, 10), 70.0))
    edge = sphere(d, np.array([0.0, 10.0, 10.0]), 5.0)
    f = sphere_fraction(d, edge, 60.0, 0.95)
    assert f == pytest.approx(1.0 - cap_fraction(0.2), abs=0.003)
    assert volume_class(f, 0.95) == 2


def test_dawson_fraction():
    n = 30
    x = 2.0 * np.arange(n)
    d = image(np.broadcast_to(np.where(x <= 23.0, 60.0, 0.0), (n, n, n)).copy())
    rec = sitk.Image(n, n, n, sitk.sitkUInt8)
    for i in range(8, 18):  # x = 16 .. 34 mm: 4 of 10 columns hot (16, 18, 20, 22)
        rec[i, 10, 10] = 1
    assert dawson_fraction(d, rec, 60.0, 0.95) == pytest.approx(0.4)
    assert dawson_class(0.4, TH) == "marginal"
    assert dawson_fraction(d, rec, 0.0, 0.95) is None
    with pytest.raises(ValueError):
        dawson_fraction(d, rec * 0, 60.0, 0.95)


def _shell_phantom():
    """CTV_high r ≤ 6, CTV_int r ≤ 14 (voxels); dose shells 66 / 58 Gy out to r 10 / 18 mm."""
    n = 30
    c = 2.0 * np.arange(n) - 29.0
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    d = image(np.where(r <= 10, 66.0, np.where(r <= 18, 58.0, 0.0)), origin=(-29.0,) * 3)
    ctv_high = sitk.Cast(image((r <= 6).astype(float), origin=(-29.0,) * 3), sitk.sitkUInt8)
    ctv_int = sitk.Cast(image((r <= 14).astype(float), origin=(-29.0,) * 3), sitk.sitkUInt8)
    return d, {"low": None, "intermediate": ctv_int, "high": ctv_high}


@pytest.mark.parametrize(
    ("point", "expected"),
    [((1.0, 1.0, 1.0), "A"),       # inside CTV_high
     ((9.0, 1.0, 1.0), "B"),       # outside CTV_high, dose 66 ≥ 0.95·65
     ((13.0, 1.0, 1.0), "C"),      # inside CTV_int, dose 58 < 61.75
     ((17.0, 1.0, 1.0), "D"),      # outside CTVs, dose 58 ≥ 0.95·60 = 57
     ((25.0, 1.0, 1.0), "E")],     # nothing
)
def test_mohamed_types(point, expected):
    d, ctvs = _shell_phantom()
    p = np.array(point)
    val, _ = centroid_dose(d, p)
    res = mohamed_type(p, val, {"low": 0.0, "intermediate": 60.0, "high": 65.0}, ctvs, 0.95)
    assert res.type == expected, res.reason


def test_mohamed_undecided_when_a_needed_ctv_is_missing():
    d, ctvs = _shell_phantom()
    pres = {"low": 0.0, "intermediate": 60.0, "high": 65.0}
    assert mohamed_type(np.array([1.0, 1, 1]), 66.0, pres, {"high": None}, 0.95).type is None
    # C needs the elective CTV; B is still decidable without it
    assert mohamed_type(np.array([9.0, 1, 1]), 66.0, pres, {"high": ctvs["high"]}, 0.95).type == "B"
    res = mohamed_type(np.array([13.0, 1, 1]), 58.0, pres, {"high": ctvs["high"]}, 0.95)
    assert res.type is None and "intermediate" in res.reason
    # a single-level arm has no elective level: outside the high isodose -> E
    assert mohamed_type(np.array([25.0, 1, 1]), 0.0, {"low": 0, "intermediate": 0, "high": 50.0},
                        {"high": ctvs["high"]}, 0.95).type == "E"
    assert mask_array(ctvs["high"]).any()
