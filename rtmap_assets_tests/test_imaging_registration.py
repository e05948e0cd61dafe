"""Registration, mapping direction, working grid and QC metrics on small synthetic images."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from rtmap_assets.imaging import grid as wg
from rtmap_assets.imaging.mapping import invert_points, map_mask, mask_centroid_mm, mask_volume_cc, transform_points
from rtmap_assets.imaging.qc import ellipsoid_mask, jacobian_stats, landmark_distance_mm, overlap_metrics
from rtmap_assets.imaging.registration import ENGINES, bspline_weight_matrix, inside_with_margin, register

SPACING = 2.0


def _hu(x: np.ndarray, y: np.ndarray, z: np.ndarray, seed: int = 3) -> np.ndarray:
    """CT-like neck block as a function of mm: body ellipse, fat rim, bone, airway, blobs, texture."""
    rng = np.random.default_rng(seed)
    body = (x / 45) ** 2 + (y / 38) ** 2 <= 1
    arr = np.where(body, 30.0, -1000.0)
    arr = np.where(body & ((x / 45) ** 2 + (y / 38) ** 2 > 0.8), -90.0, arr)  # fat rim
    arr = np.where((x / 9) ** 2 + ((y - 14) / 8) ** 2 <= 1, 800.0, arr)  # vertebra
    arr = np.where(((x - 3 * np.sin(z / 15)) / 7) ** 2 + ((y + 12) / 5) ** 2 <= 1, -950.0, arr)  # airway
    for _ in range(14):  # soft-tissue blobs with different contrast
        c = rng.uniform([-30, -25, -45], [30, 25, 45])
        r = rng.uniform(6, 12)
        blob = ((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) <= r * r
        arr = np.where(blob & body & (arr > -100) & (arr < 100), rng.uniform(-60, 120), arr)
    return arr + 8 * np.sin(x / 7 + 1) * np.cos(y / 9) * np.sin(z / 11 + 2) * body


def phantom(size=(56, 56, 40), truth: sitk.Transform | None = None) -> sitk.Image:
    """The neck block sampled on a centred 2 mm grid; with `truth` (fixed -> moving), the moving image

    moving(q) = fixed(truth^-1(q)) is sampled analytically (no resampling, no air slabs at the ends).
    """
    nx, ny, nz = size
    z, y, x = np.meshgrid(*(np.arange(n) * SPACING - (n - 1) * SPACING / 2 for n in (nz, ny, nx)), indexing="ij")
    if truth is not None:
        inv = truth.GetInverse()
        pts = np.array([inv.TransformPoint(p) for p in np.column_stack([x.ravel(), y.ravel(), z.ravel()]).tolist()])
        x, y, z = (pts[:, d].reshape(x.shape) for d in range(3))
    img = sitk.GetImageFromArray(_hu(x, y, z).astype(np.float32))
    img.SetSpacing((SPACING,) * 3)
    img.SetOrigin(tuple(-(n - 1) * SPACING / 2 for n in size))
    return img


def rigid(angles_deg=(2.0, -1.5, 4.0), translation=(5.0, -3.0, 4.0), centre=(0.0, 0.0, 0.0)) -> sitk.Euler3DTransform:
    t = sitk.Euler3DTransform()
    t.SetCenter(centre)
    t.SetRotation(*np.deg2rad(angles_deg).tolist())
    t.SetTranslation(translation)
    return t


def moving_from(fixed: sitk.Image, truth: sitk.Transform) -> sitk.Image:
    """Relapse-like image in which the fixed image's point p appears at truth(p)."""
    return phantom(fixed.GetSize(), truth)


def body_pts(image: sitk.Image, n=60, margin_mm=12.0) -> np.ndarray:
    mask = wg.body_mask(image)
    inner = sitk.BinaryErode(mask, [int(margin_mm / SPACING)] * 3)
    kji = np.argwhere(sitk.GetArrayViewFromImage(inner) > 0)
    pick = kji[np.random.default_rng(0).choice(len(kji), n, replace=False)]
    return np.array([image.TransformIndexToPhysicalPoint([int(v) for v in p[::-1]]) for p in pick])


@pytest.fixture(scope="module")
def fixed() -> sitk.Image:
    return phantom()


def _register(fixed, moving, truth, landmark=(0.0, -12.0, 0.0)):
    lm = np.asarray(landmark)
    return register(fixed, moving, fixed_landmark_mm=lm, moving_landmark_mm=np.asarray(truth.TransformPoint(lm)),
                    fixed_mask=wg.body_mask(fixed), threads=2)


@pytest.mark.slow
def test_known_rotation_and_translation_recovered_within_one_voxel(fixed):
    truth = rigid()
    result = _register(fixed, moving_from(fixed, truth), truth)
    pts = body_pts(fixed)
    err = np.linalg.norm(transform_points(result.transform, pts) - transform_points(truth, pts), axis=1)
    assert err.mean() < 0.5 * SPACING and err.max() < SPACING
    assert result.engine == "sitk" and result.timings["registration_total_s"] > 0
    assert {"translation_s", "rigid_s", "bspline_s"} <= set(result.timings)


@pytest.mark.slow
def test_mr_like_inverted_contrast_registers_with_mutual_information(fixed):
    truth = rigid(angles_deg=(0.0, 0.0, 3.0), translation=(-4.0, 6.0, -2.0))
    ct_moving = moving_from(fixed, truth)
    arr = sitk.GetArrayFromImage(ct_moving)
    mr = np.where(arr < -500, 0.0, 900.0 - 0.6 * arr)  # air dark, bone dark, soft tissue bright: not monotone
    mr_img = sitk.GetImageFromArray(mr.astype(np.float32))
    mr_img.CopyInformation(ct_moving)
    result = _register(fixed, mr_img, truth)
    pts = body_pts(fixed)
    err = np.linalg.norm(transform_points(result.transform, pts) - transform_points(truth, pts), axis=1)
    assert err.mean() < 0.5 * SPACING and err.max() < SPACING


def test_mask_shifted_by_known_amount_maps_back_to_planning_position():
    """Direction test: relapse anatomy sits at planning + d, so T(p) = p + d; masks resample through T."""
    ref = wg.make_grid(np.array([-40.0] * 3), np.array([40.0] * 3), 2.0)
    d = np.array([6.0, -4.0, 10.0])
    planning_centre = np.array([3.0, 2.0, -5.0])
    relapse_mask = ellipsoid_mask(planning_centre + d, (9.0, 9.0, 9.0), ref)
    transform = sitk.TranslationTransform(3, d.tolist())  # planning point -> relapse point
    mapped = map_mask(relapse_mask, transform, ref)
    assert mask_centroid_mm(mapped) == pytest.approx(planning_centre, abs=0.3)
    assert mask_volume_cc(mapped) == pytest.approx(4 / 3 * np.pi * 0.9**3, rel=0.1)
    # points need the inverse: the relapse centre comes back to the planning centre
    assert invert_points(transform, (planning_centre + d)[None])[0] == pytest.approx(planning_centre, abs=1e-6)
    # the wrong direction would have moved it by 2d
    wrong = sitk.Resample(relapse_mask, ref, transform.GetInverse(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    assert np.linalg.norm(mask_centroid_mm(wrong) - planning_centre) == pytest.approx(2 * np.linalg.norm(d), abs=0.5)


@pytest.mark.slow
def test_registered_transform_maps_masks_and_points_consistently(fixed):
    truth = rigid(angles_deg=(0, 0, 2.0), translation=(4.0, 2.0, -6.0))
    result = _register(fixed, moving_from(fixed, truth), truth)
    centre = np.array([10.0, -5.0, 4.0])
    relapse_centre = np.asarray(truth.TransformPoint(centre.tolist()))
    relapse_mask = ellipsoid_mask(relapse_centre, (8.0, 8.0, 8.0), fixed)
    mapped = map_mask(relapse_mask, result.transform, fixed)
    assert np.linalg.norm(mask_centroid_mm(mapped) - centre) < SPACING
    back = invert_points(result.transform, relapse_centre[None])[0]
    assert np.linalg.norm(back - centre) < SPACING
    assert np.linalg.norm(transform_points(result.transform, back[None])[0] - relapse_centre) < 1e-2


def test_sparse_bspline_weights_match_simpleitk():
    img = wg.make_grid(np.array([-30.0, -20, -10]), np.array([30.0, 40, 50]), 2.0)
    b = sitk.BSplineTransformInitializer(img, [3, 4, 2], 3)
    rng = np.random.default_rng(1)
    params = rng.normal(0, 2.0, b.GetNumberOfParameters())
    b.SetParameters(params.tolist())
    pts = rng.uniform([-30, -20, -10], [30, 40, 50], (100, 3))
    a = bspline_weight_matrix(b, pts)
    u = a @ params.reshape(3, -1).T
    assert u == pytest.approx(transform_points(b, pts) - pts, abs=1e-9)


@pytest.mark.slow
def test_registration_is_reproducible_with_two_threads(fixed):
    """Same inputs, same transform to the last bit (ITK's threaded metric sums are kept single-threaded)."""
    truth = rigid(angles_deg=(1.0, 0.0, -2.0), translation=(3.0, 1.0, -2.0))
    moving = moving_from(fixed, truth)
    first = _register(fixed, moving, truth).transform
    second = _register(fixed, moving, truth).transform
    for k in range(first.GetNumberOfTransforms()):
        assert first.GetNthTransform(k).GetParameters() == second.GetNthTransform(k).GetParameters()


def test_bspline_samples_are_kept_only_well_inside_the_relapse_field():
    image = sitk.Image([10, 10, 20], sitk.sitkFloat32)  # voxel centres span x, y 0..18 mm, z 0..38 mm
    image.SetSpacing((2.0, 2.0, 2.0))
    pts = np.array([[9.0, 9.0, 19.0],  # centre
                    [2.0, 9.0, 19.0],  # exactly 2 mm from the x = 0 edge
                    [1.9, 9.0, 19.0],  # just under 2 mm
                    [9.0, 9.0, 36.5],  # 1.5 mm from the superior edge
                    [9.0, 9.0, -4.0],  # outside
                    ])
    assert inside_with_margin(pts, image, 2.0).tolist() == [True, True, False, False, False]
    assert inside_with_margin(pts, image, 0.0).tolist() == [True, True, True, True, False]
    # direction cosines are honoured: a grid flipped in z runs from its origin towards -z
    image.SetOrigin((0.0, 0.0, 38.0))
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
    assert inside_with_margin(pts, image, 2.0).tolist() == [True, True, False, False, False]


def test_unknown_engine_rejected(fixed):
    assert ENGINES == ("sitk", "elastix", "skrt")
    with pytest.raises(ValueError):
        register(fixed, fixed, fixed_landmark_mm=(0, 0, 0), moving_landmark_mm=(0, 0, 0), engine="ants")


# ------------------------------------------------------------------------------------------- grid / QC


def test_working_grid_crops_to_body_and_dose_is_zero_outside():
    img = phantom((70, 60, 20))  # field 140 x 120 mm
    ref = wg.working_grid(img, 2.0, margin_mm=10.0)
    assert ref.GetSpacing() == (2.0, 2.0, 2.0)
    # body half-axes 45 x 38 mm + 10 mm margin -> about 110 x 96 mm instead of the 140 x 120 mm field
    extent = np.asarray(ref.GetSize()) * 2.0
    assert 100 <= extent[0] <= 116 and 88 <= extent[1] <= 102
    dose = sitk.Image([5, 5, 5], sitk.sitkFloat32) + 10.0
    dose.SetOrigin((-4.0, -4.0, -4.0))
    dose.SetSpacing((2.0, 2.0, 2.0))
    on_grid = sitk.GetArrayFromImage(wg.resample_dose(dose, ref))
    assert on_grid.max() == pytest.approx(10.0) and on_grid.min() == 0.0


def test_overlap_metrics_of_shifted_spheres():
    ref = wg.make_grid(np.array([-30.0] * 3), np.array([30.0] * 3), 1.0)
    a = ellipsoid_mask((0, 0, 0), (10, 10, 10), ref)
    b = ellipsoid_mask((4, 0, 0), (10, 10, 10), ref)
    m = overlap_metrics(a, b)
    # Dice of two unit spheres at distance d: 1 - 3d/(4r) + d^3/(16 r^3)
    assert m["dice"] == pytest.approx(1 - 3 * 0.4 / 4 + 0.4**3 / 16, abs=0.02)
    assert 3.0 <= m["hd95_mm"] <= 5.0 and 0.5 < m["msd_mm"] < 3.0
    assert overlap_metrics(a, a)["dice"] == 1.0 and overlap_metrics(a, a)["hd95_mm"] == 0.0
    assert landmark_distance_mm((0, 0, 0), (3, 4, 0)) == 5.0


def test_jacobian_of_translation_and_of_a_fold():
    ref = wg.make_grid(np.array([-20.0] * 3), np.array([20.0] * 3), 2.0)
    jmin, folding = jacobian_stats(sitk.TranslationTransform(3, (3.0, 1.0, 2.0)), ref)
    assert jmin == pytest.approx(1.0, abs=1e-6) and folding == 0.0
    field = np.zeros(tuple(reversed(ref.GetSize())) + (3,))
    x = np.arange(ref.GetSize()[0]) * 2.0 - 20.0
    field[..., 0] = -2.0 * x * (np.abs(x) < 8)  # d(u_x)/dx = -2 in the centre: det = -1 there
    f = sitk.GetImageFromArray(field, isVector=True)
    f.CopyInformation(ref)
    jmin, folding = jacobian_stats(sitk.DisplacementFieldTransform(f), ref)
    assert jmin < 0 and 0.1 < folding < 0.6
