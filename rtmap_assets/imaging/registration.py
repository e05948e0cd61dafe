"""Deformable registration relapse -> planning behind one interface (DESIGN.md rule 4).

`register(fixed, moving, ...)` returns a `RegistrationResult` whose `transform` maps FIXED (planning)
points to MOVING (relapse) points, like ITK and elastix. Every engine starts from the same initial
alignment, the translation that makes the landmark centroids coincide (as the seed does), then runs
translation -> rigid -> B-spline (control grid `bspline_grid_mm`, default 30 mm) with Mattes mutual
information, so an MR relapse image works as well as a CT.

Engines:
- ``"sitk"`` (default): translation and rigid stages with SimpleITK's ImageRegistrationMethod
  (Mattes MI, random samples inside the planning body mask, multi-resolution, steps bounded in mm);
  the B-spline stage is a SimpleITK `BSplineTransform` whose coefficients are optimised here by
  scipy's L-BFGS-B on a sparse Mattes-MI gradient (`optimise_bspline_mi`): SimpleITK's own metric
  treats the B-spline Jacobian as dense (cost per sample ~ number of parameters, ~1 s per iteration at
  a 30 mm grid), which is what made the anchors' SimpleITK runs take 20-50 s. Tuned for the bars
  (see benchmarks/RESULTS.md).
- ``"elastix"``: the seed's elastix parameter maps (AdvancedMattesMutualInformation; Translation,
  EulerTransform, BSplineTransform with FinalGridSpacingInPhysicalUnits 30) run in-process by
  itk-elastix. itk-elastix leaves the initial transform out of the transform it returns, so the
  landmark translation is applied by shifting the moving image's origin and added back to the
  displacement field afterwards. The result is converted to a SimpleITK displacement-field transform
  (transformix deformation field on the fixed grid) so mapping code is shared.
- ``"skrt"``: the seed's own code path, scikit-rt's `Registration` driving Debian's elastix CLI with
  the same parameter maps. Only the registration is taken from scikit-rt; its structure transform
  needs a nearest-neighbour resampler that Debian's elastix 5.0.1 lacks (it silently returns an empty
  structure set), so the deformation field is exported with transformix and masks are mapped with
  the shared code.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

log = logging.getLogger(__name__)

ENGINES = ("sitk", "elastix", "skrt")


@dataclass
class RegistrationResult:
    transform: sitk.Transform  # fixed (planning) point -> moving (relapse) point
    engine: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    final_metric: float | None = None  # Mattes MI of the last stage (lower is better), engine-reported
    initial_translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class SitkSettings:
    """Knobs of the SimpleITK engine (defaults tuned on the clinical-size benchmark and a 9-patient cohort)."""

    # 64 bins (elastix's default is 32): soft tissue spans only a few percent of the air-to-bone range, and
    # with 32 bins its texture fell into one or two bins (cohort of 9 x 3 sample seeds: TRE mean 0.79 -> 0.56 mm
    # with the samples and smoothness below, benchmarks/RESULTS.md).
    histogram_bins: int = 64
    translation_shrink: tuple[int, ...] = (4,)
    translation_iterations: int = 60
    rigid_shrink: tuple[int, ...] = (4, 2)
    rigid_smooth_mm: tuple[float, ...] = (4.0, 2.0)
    rigid_iterations: int = 100
    rigid_samples: int = 10000
    # B-spline levels, coarse to fine (as elastix's GridSpacingSchedule): control grid = factor x
    # bspline_grid_mm, Gaussian sigma of both images, samples, L-BFGS-B iterations.
    # (Smoothing the images for the coarse level cost accuracy near the field-of-view ends: sigma 0.)
    bspline_grid_factors: tuple[int, ...] = (2, 1)
    bspline_smooth_mm: tuple[float, ...] = (0.0, 0.0)
    bspline_level_samples: tuple[int, ...] = (20000, 45000)  # 64 x 64 joint histogram: more samples
    bspline_iterations: tuple[int, ...] = (60, 100)
    # Weight of the Laplacian penalty on the coefficients (mm^-2): where the image has little texture the
    # field follows its neighbours instead of the noise (3e-6 -> 3e-5: worst recurrence Dice 0.85 -> 0.87).
    bspline_smoothness: float = 3e-5
    # B-spline samples are kept only where the level's starting transform maps them >= this far inside the moving
    # image: samples that enter/leave the relapse field of view during optimisation bias the field near
    # its ends (the near z-invariant anatomy there lets MI gain by pulling samples inside).
    bspline_moving_margin_mm: float = 10.0
    seed: int = 1
    # ITK's Mattes metric sums per-thread partial histograms in whatever order threads finish, so a
    # multi-threaded translation/rigid stage differs in the last digits run to run and the B-spline
    # stage amplifies that (TRE max +-0.4 mm). One thread makes the result reproducible for ~1 s.
    linear_stage_threads: int = 1


def _sampling_fraction(image: sitk.Image, shrink: int, samples: int, mask: sitk.Image | None) -> float:
    n = float(np.prod(image.GetSize())) / shrink**3
    if mask is not None:
        n *= max(0.05, float(np.mean(sitk.GetArrayViewFromImage(mask))))
    return float(min(1.0, samples / max(n, 1.0)))


def _method(fixed: sitk.Image, bins: int, mask: sitk.Image | None, shrink: tuple[int, ...],
            smooth_mm: tuple[float, ...], fractions: list[float], seed: int) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentagePerLevel(fractions, seed)
    if mask is not None:
        reg.SetMetricFixedMask(mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel(list(smooth_mm))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg


def _execute(reg: sitk.ImageRegistrationMethod, transform: sitk.Transform, fixed: sitk.Image, moving: sitk.Image,
             threads: int, stage: str) -> None:
    """Optimise `transform` in place with `threads` threads (the metric follows only the global default,
    not the method's own thread count), optimizer scales from physical shifts."""
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(transform, inPlace=True)
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    try:
        reg.Execute(fixed, moving)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
    log.debug("%s: %s", stage, reg.GetOptimizerStopConditionDescription())


def _register_sitk(fixed: sitk.Image, moving: sitk.Image, t0: np.ndarray, fixed_landmark: np.ndarray,
                   bspline_grid_mm: float, mask: sitk.Image | None,
                   settings: SitkSettings) -> tuple[sitk.Transform, dict[str, float], float]:
    s = settings
    timings: dict[str, float] = {}
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)

    # Translation (coarse only: the landmark start is already close).
    t = time.perf_counter()
    translation = sitk.TranslationTransform(3, t0.tolist())
    reg = _method(fixed, s.histogram_bins, mask, s.translation_shrink, (4.0,) * len(s.translation_shrink),
                  [_sampling_fraction(fixed, f, s.rigid_samples, mask) for f in s.translation_shrink], s.seed)
    # Steps are bounded in mm (estimated each iteration): a plain learning rate is in parameter units,
    # which lets one rigid step rotate by radians when the translation gradient is small.
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=0.01,
                                                 numberOfIterations=s.translation_iterations,
                                                 relaxationFactor=0.5, estimateLearningRate=reg.EachIteration,
                                                 maximumStepSizeInPhysicalUnits=4.0)
    _execute(reg, translation, fixed, moving, s.linear_stage_threads, "translation")
    timings["translation_s"] = time.perf_counter() - t

    # Rigid, rotating about the planning landmark (the region the study is about).
    t = time.perf_counter()
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(fixed_landmark.tolist())
    rigid.SetTranslation(translation.GetOffset())
    reg = _method(fixed, s.histogram_bins, mask, s.rigid_shrink, s.rigid_smooth_mm,
                  [_sampling_fraction(fixed, f, s.rigid_samples, mask) for f in s.rigid_shrink], s.seed)
    reg.SetOptimizerAsConjugateGradientLineSearch(learningRate=1.0, numberOfIterations=s.rigid_iterations,
                                                  convergenceMinimumValue=1e-6, convergenceWindowSize=10,
                                                  lineSearchUpperLimit=3.0, estimateLearningRate=reg.EachIteration,
                                                  maximumStepSizeInPhysicalUnits=2.0)
    _execute(reg, rigid, fixed, moving, s.linear_stage_threads, "rigid")
    timings["rigid_s"] = time.perf_counter() - t

    # B-spline on a control grid of ~bspline_grid_mm, composed after the rigid transform, optimised by
    # the sparse Mattes-MI L-BFGS-B below (SimpleITK's own metric treats the B-spline Jacobian as dense,
    # O(parameters) per sample, which is ~100x slower at a 30 mm grid).
    t = time.perf_counter()
    extent = np.asarray(fixed.GetSize()) * np.asarray(fixed.GetSpacing())
    bspline = None
    metric = 0.0
    for factor, smooth_mm, samples, iterations in zip(s.bspline_grid_factors, s.bspline_smooth_mm,
                                                      s.bspline_level_samples, s.bspline_iterations):
        mesh = [max(1, int(round(e / (bspline_grid_mm * factor)))) for e in extent]
        level = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
        if bspline is not None:
            refit_bspline(bspline, level, fixed)
        metric = optimise_bspline_mi(fixed, moving, rigid, level, mask, s, smooth_mm=smooth_mm,
                                     n_samples=samples, iterations=iterations)
        bspline = level
    timings["bspline_s"] = time.perf_counter() - t
    # Composite applies the last-added transform first: p -> rigid(bspline(p)).
    composite = sitk.CompositeTransform([rigid, bspline])
    return composite, timings, metric


# ----------------------------------------------------------------------------- sparse B-spline Mattes MI


def _cubic_bspline(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    out = np.where(ax < 1, (4 - 6 * ax**2 + 3 * ax**3) / 6, 0.0)
    return np.where((ax >= 1) & (ax < 2), (2 - ax) ** 3 / 6, out)


def _cubic_bspline_derivative(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    sgn = np.sign(x)
    out = np.where(ax < 1, (-12 * ax + 9 * ax**2) / 6, 0.0)
    out = np.where((ax >= 1) & (ax < 2), -3 * (2 - ax) ** 2 / 6, out)
    return out * sgn


def bspline_weight_matrix(bspline: sitk.BSplineTransform, points: np.ndarray):
    """Sparse (N, nodes) matrix A with displacement u(points) = A @ coefficients (nodes, 3).

    Reproduces ITK's cubic BSplineTransform evaluation (support start = floor(c - 1), weights
    B3(c - node)) so the optimised coefficients can be handed back to SimpleITK unchanged.
    Points outside the transform's valid region get an empty row (ITK leaves them unmoved).
    """
    from scipy import sparse

    coeff = bspline.GetCoefficientImages()[0]
    size = np.asarray(coeff.GetSize())
    origin = np.asarray(coeff.GetOrigin())
    spacing = np.asarray(coeff.GetSpacing())
    direction = np.asarray(coeff.GetDirection()).reshape(3, 3)
    c = ((points - origin) @ direction) / spacing  # continuous index (i, j, k)
    start = np.floor(c - 1).astype(np.int64)
    valid = np.all((start >= 0) & (start + 3 < size), axis=1)
    offs = np.arange(4)
    w = [_cubic_bspline(c[:, d, None] - (start[:, d, None] + offs[None])) for d in range(3)]  # (N,4) each
    ix = start[:, 0, None] + offs  # (N,4)
    iy = start[:, 1, None] + offs
    iz = start[:, 2, None] + offs
    # ITK flattens coefficient images x-fastest.
    flat = (iz[:, :, None, None] * size[1] + iy[:, None, :, None]) * size[0] + ix[:, None, None, :]
    weights = w[2][:, :, None, None] * w[1][:, None, :, None] * w[0][:, None, None, :]
    weights = np.where(valid[:, None, None, None], weights, 0.0)
    n = len(points)
    flat = np.clip(flat, 0, int(np.prod(size)) - 1)
    rows = np.repeat(np.arange(n), 64)
    return sparse.csr_matrix((weights.reshape(-1), (rows, flat.reshape(-1))), shape=(n, int(np.prod(size))))


def _laplacian_matrix(size: np.ndarray):
    """Sparse discrete Laplacian on the coefficient grid (x-fastest), for a small smoothness penalty."""
    from scipy import sparse

    def second_diff(n: int):
        if n < 3:
            return sparse.csr_matrix((0, n))
        return sparse.diags([1.0, -2.0, 1.0], [0, 1, 2], shape=(n - 2, n))

    nx, ny, nz = (int(v) for v in size)
    ix, iy, iz = sparse.identity(nx), sparse.identity(ny), sparse.identity(nz)
    ops = [sparse.kron(sparse.kron(iz, iy), second_diff(nx)),
           sparse.kron(sparse.kron(iz, second_diff(ny)), ix),
           sparse.kron(sparse.kron(second_diff(nz), iy), ix)]
    return sparse.vstack(ops).tocsr()


class _MovingSampler:
    """Trilinear interpolation of a moving image and its gradient at physical points.

    Value and the three gradient images are stacked into one (z, y, x, 4) array so each evaluation is a
    single gather of the 8 corner voxels (several times faster than four scipy map_coordinates calls).
    """

    def __init__(self, image: sitk.Image, smooth_mm: float):
        from scipy import ndimage

        arr = sitk.GetArrayFromImage(image).astype(np.float32)
        self.spacing = np.asarray(image.GetSpacing())
        if smooth_mm > 0:
            arr = ndimage.gaussian_filter(arr, sigma=(smooth_mm / self.spacing)[::-1])
        self.arr = arr
        grads = [np.gradient(arr, axis=a) / np.float32(self.spacing[2 - a]) for a in (2, 1, 0)]  # d/dx, d/dy, d/dz
        self.stack = np.stack([arr, *grads], axis=-1).reshape(-1, 4)
        self.origin = np.asarray(image.GetOrigin())
        self.direction = np.asarray(image.GetDirection()).reshape(3, 3)
        self.shape = np.asarray(arr.shape[::-1])  # (nx, ny, nz)

    def __call__(self, pts: np.ndarray):
        c = ((pts - self.origin) @ self.direction) / self.spacing
        inside = np.all((c >= 0) & (c <= self.shape - 1), axis=1)
        c = np.clip(c, 0, self.shape - 1.000001)
        i0 = np.floor(c).astype(np.int64)
        f = (c - i0).astype(np.float32)
        nx, ny = int(self.shape[0]), int(self.shape[1])
        base = (i0[:, 2] * ny + i0[:, 1]) * nx + i0[:, 0]
        out = np.zeros((len(pts), 4), dtype=np.float32)
        for dz in (0, 1):
            wz = f[:, 2] if dz else 1 - f[:, 2]
            for dy in (0, 1):
                wy = f[:, 1] if dy else 1 - f[:, 1]
                for dx in (0, 1):
                    wx = f[:, 0] if dx else 1 - f[:, 0]
                    out += (wz * wy * wx)[:, None] * self.stack[base + (dz * ny + dy) * nx + dx]
        grad = out[:, 1:].astype(np.float64) @ self.direction.T
        return out[:, 0].astype(np.float64), grad, inside


def refit_bspline(source: sitk.BSplineTransform, target: sitk.BSplineTransform, reference: sitk.Image,
                  step: int = 3) -> None:
    """Set `target`'s coefficients to the least-squares fit of `source`'s displacement (coarse -> fine
    control grid), sampled every `step` voxels of `reference`."""
    from scipy import sparse
    from scipy.sparse.linalg import spsolve

    size = reference.GetSize()
    idx = np.stack(np.meshgrid(*[np.arange(0, n, step) for n in size], indexing="ij"), -1).reshape(-1, 3)
    pts = np.asarray(reference.GetOrigin()) + (idx * np.asarray(reference.GetSpacing())) @ np.asarray(
        reference.GetDirection()).reshape(3, 3).T
    a_src = bspline_weight_matrix(source, pts)
    u = a_src @ np.asarray(source.GetParameters()).reshape(3, a_src.shape[1]).T
    a = bspline_weight_matrix(target, pts)
    normal = (a.T @ a + 1e-6 * sparse.identity(a.shape[1])).tocsc()
    coef = np.column_stack([spsolve(normal, a.T @ u[:, d]) for d in range(3)])
    target.SetParameters(tuple(float(v) for v in coef.T.reshape(-1)))


def inside_with_margin(points_mm: np.ndarray, image: sitk.Image, margin_mm: float) -> np.ndarray:
    """Which physical points lie at least `margin_mm` inside `image`'s grid (voxel centres span the grid)."""
    spacing = np.asarray(image.GetSpacing())
    c = ((np.asarray(points_mm, float) - np.asarray(image.GetOrigin())) @
         np.asarray(image.GetDirection()).reshape(3, 3)) / spacing
    margin = margin_mm / spacing
    return np.all((c >= margin) & (c <= np.asarray(image.GetSize()) - 1 - margin), axis=1)


def optimise_bspline_mi(fixed: sitk.Image, moving: sitk.Image, rigid: sitk.Euler3DTransform,
                        bspline: sitk.BSplineTransform, mask: sitk.Image | None, s: "SitkSettings", *,
                        smooth_mm: float, n_samples: int, iterations: int) -> float:
    """Optimise `bspline` (in place) for Mattes MI of fixed vs moving(rigid(p + u(p))); returns final -MI.

    Mattes' estimator as in ITK/elastix: fixed intensities in box bins, moving intensities in cubic
    B-spline Parzen windows, a fixed random sample of body voxels per level; the gradient is sparse
    (each sample touches 64 control points), so one evaluation is a few sparse products. A small
    Laplacian penalty on the coefficients keeps the field smooth where the image has no contrast.
    """
    from scipy import ndimage, optimize

    rng = np.random.default_rng(s.seed)
    farr = sitk.GetArrayFromImage(fixed).astype(np.float32)
    marr = sitk.GetArrayViewFromImage(mask).astype(bool) if mask is not None else np.ones(farr.shape, bool)
    kji = np.flatnonzero(marr.ravel())
    a_mat = np.asarray(rigid.GetMatrix()).reshape(3, 3)
    centre = np.asarray(rigid.GetCenter())
    trans = np.asarray(rigid.GetTranslation())
    coeff_size = np.asarray(bspline.GetCoefficientImages()[0].GetSize())
    lap = _laplacian_matrix(coeff_size)
    n_nodes = int(np.prod(coeff_size))
    params = np.asarray(bspline.GetParameters(), dtype=float)
    bins = s.histogram_bins
    pad = 2
    f_level = ndimage.gaussian_filter(farr, smooth_mm / np.asarray(fixed.GetSpacing())[::-1]) if smooth_mm > 0 \
        else farr
    moving_sampler = _MovingSampler(moving, smooth_mm)
    # Oversample, then keep the samples that the starting transform maps at least
    # `bspline_moving_margin_mm` inside the moving image (a fixed sample set that does not change with
    # the field, so the optimiser cannot gain by pulling samples into the relapse field of view).
    pick = rng.choice(kji, size=min(3 * n_samples, len(kji)), replace=False)
    k, j, i = np.unravel_index(pick, farr.shape)
    idx = np.stack([i, j, k], 1).astype(float) + rng.uniform(-0.5, 0.5, (len(pick), 3))
    pts = np.asarray(fixed.GetOrigin()) + (idx * np.asarray(fixed.GetSpacing())) @ np.asarray(
        fixed.GetDirection()).reshape(3, 3).T
    amat = bspline_weight_matrix(bspline, pts)
    start = (pts + amat @ params.reshape(3, n_nodes).T - centre) @ a_mat.T + centre + trans
    keep = np.flatnonzero(inside_with_margin(start, moving, s.bspline_moving_margin_mm))
    if len(keep) < min(n_samples, len(pick)) // 4:  # tiny overlap: better a biased metric than none
        keep = np.arange(len(pick))
    keep = keep[:n_samples]
    idx, pts, amat = idx[keep], pts[keep], amat[keep]
    fvals = ndimage.map_coordinates(f_level, idx[:, ::-1].T, order=1, mode="nearest")
    amat_t = amat.T.tocsr()
    flo, fhi = np.percentile(fvals, [0.5, 99.5])
    fvals = np.clip(fvals, flo, fhi)
    fbin = np.clip(((fvals - flo) / max(fhi - flo, 1e-6) * (bins - 1)).astype(np.int64) + pad, pad, pad + bins - 1)
    mlo, mhi = np.percentile(moving_sampler.arr[::4, ::4, ::4], [0.5, 99.5])
    mwidth = max(mhi - mlo, 1e-6) / (bins - 1)
    nb = bins + 2 * pad
    lam = s.bspline_smoothness
    offs = np.arange(-1, 3)

    def value_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
        coef = x.reshape(3, n_nodes).T  # ITK parameter order: all x, then all y, then all z
        u = amat @ coef
        m = (pts + u - centre) @ a_mat.T + centre + trans
        mval, mgrad, inside = moving_sampler(m)
        t = (np.clip(mval, mlo, mhi) - mlo) / mwidth + pad
        t0 = np.floor(t).astype(np.int64)
        jb = t0[:, None] + offs[None]  # (N,4) moving bins touched
        arg = jb - t[:, None]
        w = _cubic_bspline(arg) * inside[:, None]
        nin = max(int(inside.sum()), 1)
        joint = np.bincount((fbin[:, None] * nb + jb).ravel(), weights=w.ravel(), minlength=nb * nb)
        joint = joint.reshape(nb, nb) / nin
        pm = joint.sum(0)
        pf = joint.sum(1)
        eps = 1e-12
        nz = joint > eps
        mi = float(np.sum(joint[nz] * np.log(joint[nz] / (pf[:, None] * pm[None, :])[nz])))
        logratio = np.log(np.maximum(joint, eps)) - np.log(np.maximum(pm, eps))[None, :]
        # d joint / d t_s = -B3'(jb - t)/N ; dMI/dt_s = sum_j that * logratio
        dw = -_cubic_bspline_derivative(arg) * inside[:, None]
        dmi_dt = np.sum(dw * logratio[fbin[:, None], jb], axis=1) / nin
        in_range = (mval > mlo) & (mval < mhi)
        dmi_dm = (dmi_dt * in_range / mwidth)[:, None] * mgrad  # (N,3) d MI / d moving point
        dmi_du = dmi_dm @ a_mat  # chain through the rigid matrix
        grad_coef = amat_t @ dmi_du  # (nodes, 3)
        cost = -mi
        grad = -grad_coef
        if lam > 0:
            lc = lap @ coef
            cost += lam * float(np.sum(lc * lc))
            grad = grad + 2 * lam * (lap.T @ lc)
        return cost, grad.T.reshape(-1)

    res = optimize.minimize(value_and_grad, params, jac=True, method="L-BFGS-B",
                            options={"maxiter": iterations, "maxcor": 7, "ftol": 1e-7, "gtol": 1e-7})
    params = res.x
    log.debug("bspline level smooth=%s: %s iterations, -MI %.4f (%s)", smooth_mm, res.nit, res.fun, res.message)
    bspline.SetParameters(tuple(float(v) for v in params))
    return float(res.fun)


# --------------------------------------------------------------------------------------------- elastix maps


def elastix_parameter_maps(bspline_grid_mm: float = 30.0) -> list[dict[str, list[str]]]:
    """The seed's three elastix stages as plain dicts (usable by itk-elastix and written for the CLI)."""
    common = {
        "FixedInternalImagePixelType": ["float"], "MovingInternalImagePixelType": ["float"],
        "FixedImageDimension": ["3"], "MovingImageDimension": ["3"],
        "UseDirectionCosines": ["true"],
        "Registration": ["MultiResolutionRegistration"],
        "Interpolator": ["BSplineInterpolator"], "ResampleInterpolator": ["FinalBSplineInterpolator"],
        "Resampler": ["DefaultResampler"],
        "FixedImagePyramid": ["FixedSmoothingImagePyramid"], "MovingImagePyramid": ["MovingSmoothingImagePyramid"],
        "Optimizer": ["AdaptiveStochasticGradientDescent"],
        "Metric": ["AdvancedMattesMutualInformation"], "NumberOfHistogramBins": ["32"],
        "ImageSampler": ["RandomCoordinate"], "NumberOfSpatialSamples": ["2048"],
        "NewSamplesEveryIteration": ["true"], "CheckNumberOfSamples": ["false"],
        "BSplineInterpolationOrder": ["1"], "FinalBSplineInterpolationOrder": ["3"],
        "DefaultPixelValue": ["-1000"], "WriteResultImage": ["false"],
        "ResultImagePixelType": ["float"], "ResultImageFormat": ["nii"],
        "HowToCombineTransforms": ["Compose"], "AutomaticTransformInitialization": ["false"],
    }
    translation = dict(common, Transform=["TranslationTransform"], NumberOfResolutions=["3"],
                       MaximumNumberOfIterations=["250"], AutomaticScalesEstimation=["true"])
    rigid = dict(common, Transform=["EulerTransform"], NumberOfResolutions=["3"],
                 MaximumNumberOfIterations=["250"], AutomaticScalesEstimation=["true"],
                 AutomaticTransformInitialization=["false"])
    bspline = dict(common, Transform=["BSplineTransform"], NumberOfResolutions=["3"],
                   MaximumNumberOfIterations=["500"],
                   FinalGridSpacingInPhysicalUnits=[f"{bspline_grid_mm:g}"],
                   GridSpacingSchedule=["4", "2", "1"])
    return [translation, rigid, bspline]


def _write_parameter_file(params: dict[str, list[str]], path: Path) -> None:
    lines = []
    for key, values in params.items():
        vals = " ".join(v if _is_number(v) else f'"{v}"' for v in values)
        lines.append(f"({key} {vals})")
    path.write_text("\n".join(lines) + "\n")


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _shifted(image: sitk.Image, t0: np.ndarray) -> sitk.Image:
    """Copy of `image` moved by -t0 in physical space, so the landmark start becomes the identity."""
    out = sitk.Image(image)
    out.SetOrigin(tuple(np.asarray(image.GetOrigin()) - t0))
    return out


def _field_transform(field: sitk.Image, t0: np.ndarray) -> sitk.Transform:
    """Displacement-field transform p -> p + u(p) + t0 (the landmark translation added back)."""
    arr = sitk.GetArrayFromImage(field).astype(np.float64) + t0[None, None, None, :]
    f = sitk.GetImageFromArray(arr, isVector=True)
    f.CopyInformation(field)
    return sitk.DisplacementFieldTransform(sitk.Cast(f, sitk.sitkVectorFloat64))


def _sitk_to_itk(image: sitk.Image):
    import itk

    out = itk.GetImageFromArray(np.ascontiguousarray(sitk.GetArrayViewFromImage(image), dtype=np.float32))
    out.SetOrigin(image.GetOrigin())
    out.SetSpacing(image.GetSpacing())
    out.SetDirection(itk.matrix_from_array(np.asarray(image.GetDirection()).reshape(3, 3)))
    return out


def _register_elastix(fixed: sitk.Image, moving: sitk.Image, t0: np.ndarray, bspline_grid_mm: float,
                      mask: sitk.Image | None, threads: int) -> tuple[sitk.Transform, dict[str, float], float | None]:
    import itk

    timings: dict[str, float] = {}
    t = time.perf_counter()
    fixed_itk = _sitk_to_itk(fixed)
    moving_itk = _sitk_to_itk(_shifted(moving, t0))
    pobj = itk.ParameterObject.New()
    for params in elastix_parameter_maps(bspline_grid_mm):
        pobj.AddParameterMap(params)
    kwargs = {}
    if mask is not None:
        m = itk.GetImageFromArray(np.ascontiguousarray(sitk.GetArrayViewFromImage(mask), dtype=np.uint8))
        m.SetOrigin(mask.GetOrigin())
        m.SetSpacing(mask.GetSpacing())
        m.SetDirection(itk.matrix_from_array(np.asarray(mask.GetDirection()).reshape(3, 3)))
        kwargs["fixed_mask"] = m
    with tempfile.TemporaryDirectory(prefix="rtmap_elastix_") as tmp:
        _, result_params = itk.elastix_registration_method(
            fixed_itk, moving_itk, parameter_object=pobj, log_to_console=False,
            number_of_threads=threads, output_directory=tmp, **kwargs)
    timings["elastix_s"] = time.perf_counter() - t
    t = time.perf_counter()
    field = itk.transformix_deformation_field(moving_itk, result_params)
    # transformix returns the field on the fixed grid (from the parameter maps' Size/Origin/Spacing).
    arr = itk.GetArrayFromImage(field)
    f = sitk.GetImageFromArray(np.asarray(arr, dtype=np.float64), isVector=True)
    f.SetOrigin(tuple(field.GetOrigin()))
    f.SetSpacing(tuple(field.GetSpacing()))
    f.SetDirection(tuple(np.asarray(field.GetDirection()).flatten()))
    transform = _field_transform(f, t0)
    timings["field_s"] = time.perf_counter() - t
    return transform, timings, None


def _register_skrt(fixed: sitk.Image, moving: sitk.Image, t0: np.ndarray,
                   bspline_grid_mm: float) -> tuple[sitk.Transform, dict[str, float], float | None]:
    """scikit-rt Registration with the elastix CLI; deformation field exported with the transformix CLI."""
    from skrt import Image as SkrtImage
    from skrt.registration import Registration

    if shutil.which("elastix") is None or shutil.which("transformix") is None:
        raise RuntimeError("engine 'skrt' needs the elastix and transformix command-line programs")
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="rtmap_skrt_") as tmp:
        tmpdir = Path(tmp)
        t = time.perf_counter()
        fpath, mpath = tmpdir / "fixed.nii.gz", tmpdir / "moving.nii.gz"
        sitk.WriteImage(fixed, str(fpath))
        sitk.WriteImage(_shifted(moving, t0), str(mpath))
        pfiles = {}
        for name, params in zip(("translation", "rigid", "bspline"), elastix_parameter_maps(bspline_grid_mm)):
            p = tmpdir / f"{name}.txt"
            # scikit-rt reads each step's result image back (result.0.nii), as in the seed
            _write_parameter_file({**params, "WriteResultImage": ["true"]}, p)
            pfiles[name] = str(p)
        reg = Registration(str(tmpdir / "reg"), fixed=SkrtImage(str(fpath)), moving=SkrtImage(str(mpath)),
                           pfiles=pfiles, overwrite=True, capture_output=True, log_level="WARNING")
        reg.register()
        timings["skrt_register_s"] = time.perf_counter() - t
        t = time.perf_counter()
        # The last step's TransformParameters file chains to the earlier steps; transformix writes the
        # field in physical (LPS) coordinates of the image grid skrt handed to elastix.
        tfile = Path(reg.tfiles[reg.steps[-1]])
        out = tmpdir / "field"
        out.mkdir()
        subprocess.run(["transformix", "-def", "all", "-out", str(out), "-tp", str(tfile)], check=True,
                       capture_output=True)
        field_file = next(out.glob("deformationField.*"))
        f = sitk.ReadImage(str(field_file), sitk.sitkVectorFloat64)
        transform = _field_transform(f, t0)
        timings["field_s"] = time.perf_counter() - t
    return transform, timings, None


def register(fixed: sitk.Image, moving: sitk.Image, *, fixed_landmark_mm, moving_landmark_mm,
             engine: str = "sitk", bspline_grid_mm: float = 30.0, fixed_mask: sitk.Image | None = None,
             settings: SitkSettings | None = None, threads: int | None = None) -> RegistrationResult:
    """Register relapse (`moving`) to planning (`fixed`); see the module docstring.

    `fixed_mask` (uint8, fixed grid) restricts the metric samples to the body. `threads` defaults to
    the machine's core count (`os.cpu_count()`).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown registration engine {engine!r}; choose one of {ENGINES}")
    threads = threads or os.cpu_count() or 1
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    fixed_lm = np.asarray(fixed_landmark_mm, dtype=float)
    t0 = np.asarray(moving_landmark_mm, dtype=float) - fixed_lm
    start = time.perf_counter()
    if engine == "sitk":
        transform, timings, metric = _register_sitk(fixed, moving, t0, fixed_lm, bspline_grid_mm, fixed_mask,
                                                    settings or SitkSettings())
    elif engine == "elastix":
        transform, timings, metric = _register_elastix(fixed, moving, t0, bspline_grid_mm, fixed_mask, threads)
    else:
        transform, timings, metric = _register_skrt(fixed, moving, t0, bspline_grid_mm)
    timings["registration_total_s"] = time.perf_counter() - start
    log.info("registration %s: %s", engine, {k: round(v, 2) for k, v in timings.items()})
    return RegistrationResult(transform=transform, engine=engine, timings=timings, final_metric=metric,
                              initial_translation_mm=tuple(float(v) for v in t0))
