"""The default engine's sparse B-spline Mattes-MI optimiser checked against ITK and against finite
differences; the exact conversion of elastix's result maps; SimpleITK's global thread count restored.
Small synthetic images, no DICOM."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from rtmap_assets.imaging.registration import (
    SitkSettings,
    UnsupportedElastixTransform,
    bspline_mi_objective,
    bspline_weight_matrix,
    register,
    restores_sitk_threads,
    sitk_threads,
    transform_from_elastix,
)
from rtmap_assets.imaging.registration.elastix_engine import write_parameter_file
from rtmap_assets.imaging.registration.skrt_engine import read_parameter_file, transform_chain


def _rotation(ax_deg: float, az_deg: float) -> np.ndarray:
    a, c = np.deg2rad(ax_deg), np.deg2rad(az_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ rx


def _image(size, spacing, origin, direction=np.eye(3)) -> sitk.Image:
    img = sitk.Image([int(v) for v in size], sitk.sitkFloat32)
    img.SetSpacing([float(v) for v in spacing])
    img.SetOrigin([float(v) for v in origin])
    img.SetDirection(np.asarray(direction, float).ravel().tolist())
    return img


def _transform(t: sitk.Transform, pts: np.ndarray) -> np.ndarray:
    return np.array([t.TransformPoint(p) for p in pts.tolist()])


# ------------------------------------------------------------------------------- (a) weight matrix vs ITK


@pytest.mark.parametrize("direction", [np.eye(3), _rotation(25.0, -40.0)], ids=["axes", "oblique"])
def test_weight_matrix_matches_itk_transform_point_inside_near_and_outside_the_valid_region(direction):
    reference = _image((20, 16, 12), (2.0, 2.5, 3.0), (-20.0, -15.0, 5.0), direction)
    bspline = sitk.BSplineTransformInitializer(reference, [4, 3, 5], 3)
    rng = np.random.default_rng(7)
    coef = rng.normal(0.0, 3.0, bspline.GetNumberOfParameters())
    bspline.SetParameters(coef.tolist())
    grid = bspline.GetCoefficientImages()[0]
    size = np.asarray(grid.GetSize())
    g_origin, g_spacing = np.asarray(grid.GetOrigin()), np.asarray(grid.GetSpacing())
    g_dir = np.asarray(grid.GetDirection()).reshape(3, 3)

    def at(c: np.ndarray) -> np.ndarray:  # continuous coefficient-grid index -> physical point
        return g_origin + (c * g_spacing) @ g_dir.T

    # Valid region of a cubic B-spline: 1 <= c < size - 2 on every axis.
    c_random = rng.uniform(-0.5, size - 0.5, (400, 3))  # outside, near and inside
    # Points 1e-9 either side of each edge; exactly on the edges only for the axis-aligned grid (on an oblique
    # one a point "on" the edge is off it by a rounding error, which decides inside/outside there, as in ITK).
    offsets = (-1e-9, 0.0, 1e-9) if np.allclose(direction, np.eye(3)) else (-1e-9, 1e-9)
    edges = []
    for axis in range(3):
        for value in [edge + d for edge in (1.0, size[axis] - 2.0) for d in offsets]:
            c = rng.uniform(1.2, size - 2.2, 3)
            c[axis] = value
            edges.append(c)
    pts = at(np.vstack([c_random, edges]))
    u = bspline_weight_matrix(bspline, pts) @ coef.reshape(3, -1).T
    itk_u = _transform(bspline, pts) - pts
    assert np.abs(u - itk_u).max() < 1e-9
    moved = np.linalg.norm(itk_u, axis=1) > 0
    assert 50 < moved.sum() < len(pts) - 50  # both sides of the valid-region edge were exercised


# ------------------------------------------------------------------------- (b) analytic MI gradient vs FD


def _blobs(image: sitk.Image, shift_mm=(0.0, 0.0, 0.0)) -> sitk.Image:
    """Smooth intensity pattern (Gaussian blobs, ~8 mm wide) sampled at `image`'s voxels, moved by shift_mm."""
    size = image.GetSize()
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij"), -1)[..., ::-1].reshape(-1, 3)
    pts = np.asarray(image.GetOrigin()) + (idx * np.asarray(image.GetSpacing())) - np.asarray(shift_mm)
    rng = np.random.default_rng(3)
    val = np.zeros(len(pts))
    for _ in range(12):
        c = rng.uniform(-14, 14, 3)
        val += rng.uniform(-200, 300) * np.exp(-np.sum((pts - c) ** 2, 1) / (2 * 8.0**2))
    out = sitk.GetImageFromArray(val.reshape(size[::-1]).astype(np.float32))
    out.CopyInformation(image)
    return out


def _ramp(image: sitk.Image) -> sitk.Image:
    """An affine intensity ramp: its trilinear interpolant, central-difference gradient and true gradient agree."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*[np.arange(n, dtype=float) for n in size[::-1]], indexing="ij")
    x, y, z = (np.asarray(image.GetOrigin())[d] + (i, j, k)[d] * image.GetSpacing()[d] for d in range(3))
    out = sitk.GetImageFromArray((100.0 + 3.0 * x - 2.0 * y + 1.5 * z).astype(np.float32))
    out.CopyInformation(image)
    return out


def _objective(smoothness: float, moving_kind: str = "blobs"):
    grid = _image((18, 18, 18), (2.0, 2.0, 2.0), (-17.0, -17.0, -17.0))
    fixed = _blobs(grid)
    moving_grid = _image((22, 22, 22), (2.0, 2.0, 2.0), (-21.0, -21.0, -21.0))
    moving = _blobs(moving_grid, shift_mm=(1.5, -1.0, 0.5)) if moving_kind == "blobs" else _ramp(moving_grid)
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter((0.0, 0.0, 0.0))
    rigid.SetRotation(0.02, -0.01, 0.03)
    rigid.SetTranslation((0.5, -0.3, 0.2))
    bspline = sitk.BSplineTransformInitializer(fixed, [2, 2, 2], 3)
    x0 = np.random.default_rng(5).normal(0.0, 0.5, bspline.GetNumberOfParameters())
    bspline.SetParameters(x0.tolist())
    obj = bspline_mi_objective(fixed, moving, rigid, bspline, None, histogram_bins=16, smoothness=smoothness,
                               moving_margin_mm=2.0, seed=1, smooth_mm=0.0, n_samples=3000)
    return obj, x0


def _finite_difference_check(smoothness: float, moving_kind: str = "blobs",
                             eps_mm: float = 1e-3) -> tuple[float, float]:
    """(max |analytic - FD| / max |FD|, max relative error of the components > 10% of the largest) over the
    12 largest gradient components and 12 others."""
    obj, x0 = _objective(smoothness, moving_kind)
    value, grad = obj.value_and_grad(x0)
    assert np.isfinite(value) and grad.shape == x0.shape
    order = np.argsort(-np.abs(grad))
    coords = np.concatenate([order[:12], np.random.default_rng(0).choice(order[12:], 12, replace=False)])
    fd = np.empty(len(coords))
    for n, k in enumerate(coords):
        step = np.zeros_like(x0)
        step[k] = eps_mm
        fd[n] = (obj.value_and_grad(x0 + step)[0] - obj.value_and_grad(x0 - step)[0]) / (2 * eps_mm)
    an = grad[coords]
    scale = np.abs(fd).max()
    big = np.abs(fd) > 0.1 * scale
    return float(np.abs(an - fd).max() / scale), float(np.max(np.abs(an - fd)[big] / np.abs(fd)[big]))


def test_moving_sampler_matches_simpleitk_linear_interpolation_and_a_ramp_gradient():
    """The one-gather trilinear sampler gives SimpleITK's linear interpolation at any point (oblique grid too),
    the exact gradient of a linear ramp, and flags points outside the grid."""
    from rtmap_assets.imaging.registration.bspline_mi import MovingSampler

    rng = np.random.default_rng(3)
    img = _image((17, 13, 11), (1.5, 2.0, 2.5), (-10.0, 4.0, 7.0), _rotation(10.0, 20.0))
    arr = rng.normal(0.0, 50.0, (11, 13, 17)).astype(np.float32)
    noisy = sitk.GetImageFromArray(arr)
    noisy.CopyInformation(img)
    idx = rng.uniform(1.0, [15.0, 11.0, 9.0], (300, 3))
    pts = np.array([noisy.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in idx])
    val, _, inside = MovingSampler(noisy, 0.0)(pts)
    expected = np.array([noisy.EvaluateAtPhysicalPoint(p.tolist(), sitk.sitkLinear) for p in pts])
    assert inside.all()
    np.testing.assert_allclose(val, expected, rtol=1e-5, atol=1e-3)

    slope = np.array([0.5, -1.25, 2.0])  # HU per mm along physical x, y, z
    origin = np.asarray(img.GetOrigin())
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in img.GetSize()], indexing="ij"), -1).reshape(-1, 3)
    phys = origin + (grid * np.asarray(img.GetSpacing())) @ np.asarray(img.GetDirection()).reshape(3, 3).T
    ramp = sitk.GetImageFromArray((phys @ slope).reshape(img.GetSize()).transpose(2, 1, 0).astype(np.float32))
    ramp.CopyInformation(img)
    val, grad, inside = MovingSampler(ramp, 0.0)(np.vstack([pts, origin - 50.0]))
    np.testing.assert_allclose(grad[:-1], np.broadcast_to(slope, grad[:-1].shape), atol=1e-4)
    np.testing.assert_allclose(val[:-1], (pts - origin) @ slope + float(origin @ slope), atol=1e-3)
    assert inside[:-1].all() and not inside[-1]


def test_mi_gradient_matches_central_finite_differences_exactly_where_the_image_model_is_exact():
    """Moving image an affine ramp: the sampler's interpolated central-difference gradient is the true
    gradient, so analytic and finite-difference gradients agree up to the float32 sampler's rounding
    (measured: 2.5e-5 of the largest component at a 0.1 mm step)."""
    err_global, err_big = _finite_difference_check(smoothness=0.0, moving_kind="ramp", eps_mm=0.1)
    assert err_global < 2e-4 and err_big < 5e-4, (err_global, err_big)


def test_mi_gradient_matches_central_finite_differences_on_a_textured_image():
    """Smooth blobs: the analytic gradient uses the moving image's central-difference gradient interpolated
    trilinearly, the finite difference sees the derivative of the trilinear interpolant itself; on a
    ~8 mm texture at 2 mm voxels these differ by ~1.5% (measured 0.015 of the largest component)."""
    err_global, err_big = _finite_difference_check(smoothness=0.0, eps_mm=1e-2)
    assert err_global < 3e-2 and err_big < 5e-2, (err_global, err_big)


def test_mi_plus_smoothness_gradient_matches_central_finite_differences():
    err_global, err_big = _finite_difference_check(smoothness=2e-3, eps_mm=1e-2)
    assert err_global < 5e-3 and err_big < 5e-3, (err_global, err_big)


def test_smoothness_penalty_adds_its_exact_gradient():
    plain, x0 = _objective(0.0)
    smooth, _ = _objective(2e-3)
    (v0, g0), (v1, g1) = plain.value_and_grad(x0), smooth.value_and_grad(x0)
    coef = x0.reshape(3, -1).T
    lc = smooth.laplacian @ coef
    assert v1 - v0 == pytest.approx(2e-3 * np.sum(lc * lc), rel=1e-9)
    assert g1 - g0 == pytest.approx((2 * 2e-3 * (smooth.laplacian.T @ lc)).T.reshape(-1), abs=1e-12)


# ----------------------------------------------------------------------- elastix result maps -> SimpleITK


def _colmajor(m: np.ndarray) -> list[str]:  # elastix writes direction matrices column by column
    return [repr(float(v)) for v in np.asarray(m).T.ravel()]


def _fmt(values) -> list[str]:
    return [repr(float(v)) for v in values]


def elastix_maps(image: sitk.Image, grid_direction: np.ndarray, seed: int = 0) -> list[dict[str, list[str]]]:
    """Result parameter maps as elastix writes them: translation, Euler about a centre, cubic B-spline."""
    base = {"FixedImageDimension": ["3"], "MovingImageDimension": ["3"], "FixedInternalImagePixelType": ["float"],
            "MovingInternalImagePixelType": ["float"], "UseDirectionCosines": ["true"],
            "HowToCombineTransforms": ["Compose"], "Size": [str(v) for v in image.GetSize()], "Index": ["0"] * 3,
            "Spacing": _fmt(image.GetSpacing()), "Origin": _fmt(image.GetOrigin()),
            "Direction": _colmajor(np.asarray(image.GetDirection()).reshape(3, 3)),
            "ResampleInterpolator": ["FinalBSplineInterpolator"], "Resampler": ["DefaultResampler"],
            "FinalBSplineInterpolationOrder": ["3"], "DefaultPixelValue": ["0"], "ResultImagePixelType": ["float"]}
    grid_size = (6, 5, 5)
    coef = np.random.default_rng(seed).normal(0.0, 2.0, 3 * int(np.prod(grid_size)))
    return [
        dict(base, Transform=["TranslationTransform"], NumberOfParameters=["3"], TransformParameters=_fmt([2, -1, 3])),
        dict(base, Transform=["EulerTransform"], NumberOfParameters=["6"], CenterOfRotationPoint=_fmt([1, 2, 3]),
             ComputeZYX=["false"], TransformParameters=_fmt([0.05, -0.1, 0.2, 1.0, 2.0, -3.0])),
        dict(base, Transform=["BSplineTransform"], NumberOfParameters=[str(len(coef))],
             GridSize=[str(v) for v in grid_size], GridIndex=["0"] * 3, GridSpacing=_fmt([12.0, 10.0, 14.0]),
             GridOrigin=_fmt([-31.0, -21.3, -25.7]), GridDirection=_colmajor(grid_direction),
             BSplineTransformSplineOrder=["3"], UseCyclicTransform=["false"], TransformParameters=_fmt(coef)),
    ]


def test_elastix_chain_outside_the_grid_is_the_landmark_shift_and_rigid_part_not_identity():
    image = _image((12, 10, 8), (3.0, 2.5, 4.0), (-10.0, -5.0, -7.3))
    maps = elastix_maps(image, _rotation(10.0, 20.0))
    t0 = np.array([7.0, -4.0, 12.0])
    transform = transform_from_elastix(maps, t0)
    translation, euler, bspline = (transform_from_elastix([m], np.zeros(3)) for m in maps)
    far = np.array([[400.0, -300.0, 250.0], [-500.0, 0.0, 0.0], [0.0, 0.0, 900.0]])  # far outside any grid
    linear = _transform(euler, _transform(translation, far)) + t0
    assert _transform(transform, far) == pytest.approx(linear, abs=1e-9)
    assert np.linalg.norm(_transform(transform, far) - far, axis=1).min() > 5.0  # not the identity
    # inside: the B-spline acts on the rigid output (elastix "Compose"), then the landmark shift
    inside = np.array([[0.0, 0.0, 0.0], [5.0, -3.0, 4.0]])
    rigid_out = _transform(euler, _transform(translation, inside))
    expected = _transform(bspline, rigid_out) + t0
    assert _transform(transform, inside) == pytest.approx(expected, abs=1e-9)
    assert np.linalg.norm(expected - (rigid_out + t0), axis=1).min() > 0.1  # the B-spline does act there


def test_unsupported_elastix_maps_are_refused():
    image = _image((12, 10, 8), (3.0, 2.5, 4.0), (-10.0, -5.0, -7.3))
    maps = elastix_maps(image, np.eye(3))
    with pytest.raises(UnsupportedElastixTransform, match="AffineTransform"):
        transform_from_elastix([dict(maps[1], Transform=["AffineTransform"])], np.zeros(3))
    with pytest.raises(UnsupportedElastixTransform, match="Add"):
        transform_from_elastix([dict(maps[0], HowToCombineTransforms=["Add"])], np.zeros(3))
    with pytest.raises(UnsupportedElastixTransform, match="GridIndex"):
        transform_from_elastix([dict(maps[2], GridIndex=["1", "0", "0"])], np.zeros(3))
    with pytest.raises(UnsupportedElastixTransform, match="no transform"):
        transform_from_elastix([], np.zeros(3))


def test_elastix_transform_parameter_files_are_followed_back_through_their_initial_transforms(tmp_path: Path):
    """The skrt engine reads elastix CLI output: TransformParameters files linked by -t0."""
    image = _image((12, 10, 8), (3.0, 2.5, 4.0), (-10.0, -5.0, -7.3))
    maps = elastix_maps(image, _rotation(0.0, 30.0))
    previous = "NoInitialTransform"
    for k, m in enumerate(maps):
        path = tmp_path / f"step{k}" / "TransformParameters.0.txt"
        path.parent.mkdir()
        write_parameter_file({**m, "InitialTransformParametersFileName": [previous]}, path)
        previous = str(path)
    chain = transform_chain(Path(previous))
    assert [c["Transform"] for c in chain] == [["TranslationTransform"], ["EulerTransform"], ["BSplineTransform"]]
    assert read_parameter_file(Path(previous))["GridDirection"] == maps[2]["GridDirection"]
    t0 = np.array([1.0, 2.0, 3.0])
    pts = np.random.default_rng(2).uniform(-30, 30, (50, 3))
    assert _transform(transform_from_elastix(chain, t0), pts) == pytest.approx(
        _transform(transform_from_elastix(maps, t0), pts), abs=1e-9)


@pytest.mark.slow  # itk-elastix's import alone takes 10-70 s here
def test_converted_elastix_chain_equals_transformix_deformation_field(tmp_path: Path, monkeypatch):
    itk = pytest.importorskip("itk")
    monkeypatch.chdir(tmp_path)  # transformix writes deformationField.* into the working directory
    image = _image((12, 10, 8), (3.0, 2.5, 4.0), (-10.0, -5.0, -7.3), _rotation(15.0, -20.0))
    maps = elastix_maps(image, _rotation(10.0, 20.0))
    pobj = itk.ParameterObject.New()
    for m in maps:
        pobj.AddParameterMap(m)
    itk_image = itk.GetImageFromArray(np.zeros(image.GetSize()[::-1], np.float32))
    itk_image.SetOrigin(image.GetOrigin())
    itk_image.SetSpacing(image.GetSpacing())
    itk_image.SetDirection(itk.matrix_from_array(np.asarray(image.GetDirection()).reshape(3, 3)))
    field = itk.GetArrayFromImage(itk.transformix_deformation_field(itk_image, pobj)).astype(float)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in image.GetSize()], indexing="ij"), -1).reshape(-1, 3)
    pts = np.array([image.TransformIndexToPhysicalPoint([int(v) for v in i]) for i in idx])
    theirs = pts + field[idx[:, 2], idx[:, 1], idx[:, 0]]
    ours = _transform(transform_from_elastix(maps, np.zeros(3)), pts)
    assert np.abs(ours - theirs).max() < 1e-5  # transformix's field is float32
    assert np.abs(theirs - pts).max() > 3.0


# ----------------------------------------------------------------------------------- global thread count


def test_sitk_threads_restores_the_global_default_also_on_error():
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    with sitk_threads(before + 3) as inside:
        assert inside == before + 3 == sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before
    with pytest.raises(RuntimeError), sitk_threads(before + 2):
        raise RuntimeError("boom")
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before

    seen = []

    @restores_sitk_threads
    def step(*, threads: int | None = None) -> None:
        seen.append(sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before + 5)  # even a step that changes it

    step(threads=before + 1)
    step()
    assert seen == [before + 1, before] and sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before


def test_register_leaves_the_global_thread_count_as_it_found_it():
    grid = _image((16, 16, 16), (2.0, 2.0, 2.0), (-15.0, -15.0, -15.0))
    fixed, moving = _blobs(grid), _blobs(grid, shift_mm=(2.0, -1.0, 1.0))
    quick = SitkSettings(translation_iterations=3, rigid_shrink=(2,), rigid_smooth_mm=(1.0,), rigid_iterations=3,
                         rigid_samples=1000, bspline_grid_factors=(1,), bspline_smooth_mm=(0.0,),
                         bspline_level_samples=(1000,), bspline_iterations=(3,), bspline_moving_margin_mm=2.0)
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous + 1)
    try:
        result = register(fixed, moving, fixed_landmark_mm=(0, 0, 0), moving_landmark_mm=(2.0, -1.0, 1.0),
                          settings=quick, threads=previous + 2, bspline_grid_mm=15.0)
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == previous + 1
        assert result.initial_translation_mm == (2.0, -1.0, 1.0)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


@pytest.mark.slow  # itk-elastix import / elastix CLI + a (shortened) elastix registration: 15-150 s here
@pytest.mark.parametrize("engine", ["elastix", "skrt"])
def test_elastix_engines_transform_is_right_outside_the_working_grid(engine, monkeypatch):
    from rtmap_assets.imaging import grid as wg
    from rtmap_assets.imaging.registration import elastix_engine, skrt_engine
    from rtmap_assets_tests.test_imaging_registration import body_pts, moving_from, phantom, rigid

    if engine == "elastix":
        pytest.importorskip("itk")
    elif shutil.which("elastix") is None:
        pytest.skip("the skrt engine needs Debian's elastix command-line program (RTMAP_SYSTEM_PACKAGES=1)")
    full = elastix_engine.elastix_parameter_maps

    def quick(bspline_grid_mm: float = 30.0) -> list[dict[str, list[str]]]:
        maps = full(bspline_grid_mm)
        for m in maps:
            m.update(NumberOfResolutions=["2"], MaximumNumberOfIterations=["80"])
        maps[2]["GridSpacingSchedule"] = ["2", "1"]
        return maps

    monkeypatch.setattr(elastix_engine, "elastix_parameter_maps", quick)
    monkeypatch.setattr(skrt_engine, "elastix_parameter_maps", quick)
    fixed = phantom()
    truth = rigid(angles_deg=(0.0, 0.0, 3.0), translation=(5.0, -3.0, 4.0))
    landmark = np.array([0.0, -12.0, 0.0])
    moving_landmark = np.asarray(truth.TransformPoint(landmark.tolist())) + np.array([1.5, 0.0, -1.0])  # off by 1.8 mm
    result = register(fixed, moving_from(fixed, truth), fixed_landmark_mm=landmark, moving_landmark_mm=moving_landmark,
                      engine=engine, fixed_mask=wg.body_mask(fixed), threads=2)
    transform = result.transform
    assert isinstance(transform, sitk.CompositeTransform) and transform.GetNumberOfTransforms() == 4
    t0 = np.asarray(result.initial_translation_mm)
    assert np.asarray(transform.GetNthTransform(0).GetParameters()) == pytest.approx(t0)
    # inside the body: close to the truth
    pts = body_pts(fixed)
    err = np.linalg.norm(_transform(transform, pts) - _transform(truth, pts), axis=1)
    assert err.mean() < 1.0, err.mean()
    # far outside the working grid: the landmark shift and the rigid stages (translation, Euler), not identity
    far = np.array([[300.0, 0.0, 0.0], [0.0, -250.0, 120.0]])
    linear = far.copy()
    for k in (3, 2):  # translation stage, then Euler stage (CompositeTransform lists them last-applied first)
        linear = _transform(transform.GetNthTransform(k), linear)
    assert _transform(transform, far) == pytest.approx(linear + t0, abs=1e-9)
    # ... which is the truth up to the registration error (a 300 mm lever arm on the rotation)
    assert np.linalg.norm(_transform(transform, far) - _transform(truth, far), axis=1).max() < 5.0
    assert np.linalg.norm(_transform(transform, far) - far, axis=1).min() > 5.0
