"""Rules 6–7: sphere (voxel-centre occupancy, grid edge), isodose regions, centroids, dose support."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from rtmap_assets.dosimetry.regions import (
    dose_support_mask,
    isodose_region,
    isodose_regions,
    mask_array,
    mask_centroid_mm,
    point_in_mask,
    recurrence_centroid,
    SPHERE_SAMPLES,
    sphere,
    unit_ball_points,
)
from rtmap_assets.errors import PatientDataError


def grid(size=(20, 20, 20), spacing=2.0, origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    img = sitk.Image(size, sitk.sitkFloat32)
    img.SetSpacing((spacing,) * 3)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def brute_force_count(ref: sitk.Image, centre, r) -> int:
    n = 0
    for k in range(ref.GetSize()[2]):
        for j in range(ref.GetSize()[1]):
            for i in range(ref.GetSize()[0]):
                p = np.asarray(ref.TransformIndexToPhysicalPoint((i, j, k)))
                n += np.sum((p - centre) ** 2) <= r * r
    return n


def test_sphere_voxel_centre_occupancy_matches_brute_force():
    ref = grid()
    centre = np.array([19.0, 17.3, 21.0])
    s = sphere(ref, centre, 5.0)
    assert s.n_outside_grid == 0
    assert s.n_voxels == int(mask_array(s.mask).sum()) == brute_force_count(ref, centre, 5.0)
    # a sphere through voxel centres: the six neighbours at exactly r are in (≤ r)
    s2 = sphere(ref, np.array([20.0, 20.0, 20.0]), 2.0)
    assert s2.n_voxels == 7
    assert s2.volume_cc == pytest.approx(7 * 0.008)


def test_sphere_with_rotated_direction_matches_brute_force():
    d = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90° about z
    ref = grid(direction=d, origin=(30.0, -5.0, 0.0))
    centre = np.array(ref.TransformContinuousIndexToPhysicalPoint((9.3, 10.1, 8.7)))
    assert sphere(ref, centre, 6.0).n_voxels == brute_force_count(ref, centre, 6.0)


def test_sphere_crossing_the_grid_edge_counts_the_outside_voxels():
    ref = grid()
    inside = sphere(ref, np.array([20.0, 20.0, 20.0]), 5.0).n_voxels
    edge = sphere(ref, np.array([0.0, 20.0, 20.0]), 5.0)  # centred on the first voxel plane
    assert edge.n_voxels == inside  # same lattice shape, nothing lost
    assert 0 < edge.n_outside_grid < edge.n_voxels
    assert edge.n_inside_grid == int(mask_array(edge.mask).sum())
    far = sphere(ref, np.array([-50.0, 20.0, 20.0]), 5.0)  # wholly outside
    assert far.n_outside_grid == far.n_voxels > 0 and not mask_array(far.mask).any()


def test_sphere_rejects_negative_radius_and_accepts_sub_voxel_ones():
    with pytest.raises(ValueError):
        sphere(grid(), np.zeros(3), -0.1)
    tiny = sphere(grid(), np.array([20.0, 20.0, 20.0]), 0.3)  # on a voxel centre: one voxel in the mask
    assert tiny.n_voxels == 1 and tiny.exact_volume_cc == pytest.approx(4 / 3 * np.pi * 0.027 / 1000)
    pts = tiny.sample_points()
    assert np.max(np.linalg.norm(pts - 20.0, axis=1)) <= 0.3 + 1e-12


def test_unit_ball_points_fill_the_ball_uniformly():
    # Deterministic, centred, and the share within radius ρ is ρ³ (uniform in volume).
    pts = unit_ball_points()
    assert pts.shape == (SPHERE_SAMPLES, 3) and SPHERE_SAMPLES > 10_000
    assert np.array_equal(pts, unit_ball_points())
    assert np.allclose(pts.mean(axis=0), 0.0, atol=1e-12)
    r = np.linalg.norm(pts, axis=1)
    assert r.max() <= 1.0
    for rho in (0.25, 0.5, 0.8):
        assert np.mean(r <= rho) == pytest.approx(rho**3, abs=0.003)


def test_sobol_points_are_scipys_without_importing_scipy_stats():
    """rtmap's own 3-D Sobol construction gives scipy.stats.qmc's unscrambled points bit for bit, in the same
    order, and a fresh process computing the sphere samples never loads scipy.stats (~0.5 s per process)."""
    import subprocess
    import sys

    from scipy.stats import qmc

    from rtmap_assets.dosimetry.regions import sobol_points_3d

    for log2_n in (0, 3, 14):
        assert np.array_equal(sobol_points_3d(log2_n), qmc.Sobol(d=3, scramble=False).random_base2(log2_n))
    code = ("import sys; import rtmap_assets.pipeline.imaging_patient, rtmap_assets.dosimetry.regions as r; "
            "print('scipy.stats' in sys.modules, r.SPHERE_SAMPLES == len(r.unit_ball_points()), "
            "'scipy.stats' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "False"]
    with pytest.raises(AttributeError):
        _ = __import__("rtmap_assets.dosimetry.regions", fromlist=["x"]).NO_SUCH_NAME


def test_sub_voxel_cap_error_bound_over_many_planes():
    # The documented bound: over 203 plane orientations × 401 offsets, |sampled − exact cap| ≤ 0.0026 (measured 0.00251).
    pts = unit_ball_points()
    rng = np.random.default_rng(1)
    normals = rng.normal(size=(200, 3))
    normals = np.vstack([normals / np.linalg.norm(normals, axis=1)[:, None], np.eye(3)])
    ts = np.linspace(-0.999, 0.999, 401)
    exact = (1 - ts) ** 2 * (2 + ts) / 4
    worst = 0.0
    for n in normals:
        proj = np.sort(pts @ n)
        frac = 1.0 - np.searchsorted(proj, ts, side="left") / len(pts)
        worst = max(worst, float(np.max(np.abs(frac - exact))))
    assert worst <= 0.0026


def test_isodose_regions_and_absent_levels():
    dose = grid(size=(10, 1, 1))
    arr = np.arange(10, dtype=np.float32).reshape(1, 1, 10) * 10  # 0..90 Gy
    d = sitk.GetImageFromArray(arr)
    d.CopyInformation(dose)
    r = isodose_region(d, 60.0, 0.95)  # ≥ 57 Gy: 60, 70, 80, 90
    assert mask_array(r).sum() == 4
    regions = isodose_regions(d, {"low": 0.0, "intermediate": 40.0, "high": 60.0}, 0.95)
    assert regions["low"] is None and mask_array(regions["intermediate"]).sum() == 6  # ≥ 38


def test_centroid_point_in_mask_and_empty_recurrence():
    m = grid()
    m = sitk.Cast(m, sitk.sitkUInt8)
    m[3, 4, 5] = 1
    m[5, 4, 5] = 1
    assert mask_centroid_mm(m) == pytest.approx([8.0, 8.0, 10.0])
    assert point_in_mask(m, np.array([6.2, 8.4, 9.6])) and not point_in_mask(m, np.array([8.0, 8.0, 10.0]))
    assert not point_in_mask(m, np.array([-10.0, 8.0, 10.0]))
    empty = sitk.Cast(grid(), sitk.sitkUInt8)
    assert mask_centroid_mm(empty) is None
    with pytest.raises(PatientDataError) as err:
        recurrence_centroid(empty, "Rec_CT")
    assert err.value.code == "EMPTY_RECURRENCE"


def test_dose_support_mask_covers_the_native_extent():
    native = grid(size=(5, 10, 10), spacing=3.0, origin=(0.0, 0.0, 0.0))  # voxels span x ∈ [-1.5, 13.5]
    ref = grid(size=(20, 20, 20), spacing=2.0, origin=(-4.0, 0.0, 0.0))  # x centres -4, -2, ..., 34
    sup = mask_array(dose_support_mask(native, ref))
    xs = -4.0 + 2.0 * np.arange(20)
    expected_x = (xs >= -1.5) & (xs <= 13.5)
    assert np.array_equal(sup[5, 5, :], expected_x)
    ys = 2.0 * np.arange(20)
    assert np.array_equal(sup[5, :, 3], ys <= 28.5)
