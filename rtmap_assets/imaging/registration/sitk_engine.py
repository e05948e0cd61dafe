"""The default ``"sitk"`` engine: translation and rigid stages with SimpleITK's ImageRegistrationMethod
(Mattes MI, random samples inside the planning body mask, multi-resolution, steps bounded in mm), then a
SimpleITK `BSplineTransform` optimised level by level by the sparse Mattes-MI optimiser (`bspline_mi`).
Tuned for the bars (see benchmarks/RESULTS.md)."""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from rtmap_assets.imaging.registration.bspline_mi import (
    MovingSampler,
    compile_kernels,
    optimise_bspline_mi,
    refit_bspline,
)
from rtmap_assets.imaging.registration.threads import sitk_threads

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SitkSettings:
    """Knobs of the SimpleITK engine (defaults tuned on the clinical-size benchmark and a 9-patient cohort)."""

    # 64 bins (elastix's default is 32): soft tissue spans only a few percent of the air-to-bone range, and
    # with 32 bins its texture fell into one or two bins (cohort of 9 x 3 sample seeds: TRE mean 0.79 -> 0.56 mm
    # with the samples and smoothness below, benchmarks/RESULTS.md).
    histogram_bins: int = 64
    translation_shrink: tuple[int, ...] = (4,)
    translation_iterations: int = 60
    # One rigid level (shrink 4, sigma 4 mm) stopping when the metric changes < 1e-5 over 10 iterations: the
    # B-spline stage absorbs what a second, finer rigid level added (shrink (4, 2) and 1e-6 took 2.5x the
    # rigid time for TRE no better on the clinical seeds: benchmarks/SPEED.md).
    rigid_shrink: tuple[int, ...] = (4,)
    rigid_smooth_mm: tuple[float, ...] = (4.0,)
    rigid_iterations: int = 100
    rigid_samples: int = 10000
    rigid_convergence_minimum: float = 1e-5  # ConjugateGradientLineSearch convergence over a 10-iteration window
    rigid_line_search_epsilon: float = 0.01
    # ITK's metric by default filters the whole (smoothed, full-resolution) moving image for its gradient
    # before the first iteration (~0.15 s per stage here); with ~10,000 samples, central differences at the
    # samples cost a fraction of that (12 clinical patients x 2 sampling seeds: registration 0.4 s faster,
    # TRE mean 0.577 -> 0.565 mm, TRE max within the spread a different sampling seed gives; SPEED.md round 5).
    linear_gradient_filter: bool = False
    # B-spline levels, coarse to fine (as elastix's GridSpacingSchedule): control grid = factor x
    # bspline_grid_mm, Gaussian sigma of both images, samples, L-BFGS-B iterations.
    # (Smoothing the images for the coarse level cost accuracy near the field-of-view ends: sigma 0.)
    bspline_grid_factors: tuple[int, ...] = (2, 1)
    bspline_smooth_mm: tuple[float, ...] = (0.0, 0.0)
    bspline_level_samples: tuple[int, ...] = (20000, 45000)  # 64 x 64 joint histogram: more samples
    bspline_iterations: tuple[int, ...] = (60, 100)
    # L-BFGS-B stops when the cost falls by less than this (relative) per iteration. Below ~1e-6 the steps are
    # in the noise of the fixed-sample MI estimate: at 1e-7 the line search spent 50-100 evaluations on
    # 10-20 iterations or gave up, and how many depended on the last bits of the arithmetic (6 clinical
    # patients: 588 evaluations at 3e-6 against 1,041 at 1e-7, TRE mean and max within 0.05 mm;
    # benchmarks/SPEED.md, round 3).
    bspline_ftol: float = 3e-6
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
            smooth_mm: tuple[float, ...], fractions: list[float], seed: int,
            gradient_filter: bool = False) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    reg.SetMetricUseMovingImageGradientFilter(gradient_filter)
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
    with sitk_threads(threads):
        reg.Execute(fixed, moving)
    log.debug("%s: %s", stage, reg.GetOptimizerStopConditionDescription())


@functools.cache
def _load_bspline_code() -> None:
    """Once per process: SciPy's optimiser and the kernels from numba's cache (numba's import, CPU target set-up)."""
    import scipy.optimize  # noqa: F401 - what optimise_bspline_mi imports

    compile_kernels()


def _load_bspline_stage(moving: sitk.Image, smooth_mm: float, out: dict) -> None:
    try:
        _load_bspline_code()
        out["sampler"] = MovingSampler(moving, smooth_mm)  # the first level's (numpy releases the GIL here)
    except Exception:  # noqa: BLE001 - the B-spline stage loads them again and reports any error itself
        log.debug("preloading the B-spline stage failed", exc_info=True)


def register_sitk(fixed: sitk.Image, moving: sitk.Image, t0: np.ndarray, fixed_landmark: np.ndarray,
                  bspline_grid_mm: float, mask: sitk.Image | None,
                  settings: SitkSettings) -> tuple[sitk.Transform, dict[str, float], float]:
    """Translation (from the landmark shift `t0`) -> rigid about `fixed_landmark` -> B-spline levels.

    Returns the composite p -> rigid(p + u(p)) (outside the B-spline grid: the rigid part alone), the
    seconds per stage and the final -MI of the last B-spline level."""
    s = settings
    timings: dict[str, float] = {}
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    # SciPy's optimiser and the compiled kernels (numba; ~0.6 s of mostly Python, once per process) and the moving
    # image's sampler, prepared on a helper thread while the translation and rigid stages run inside ITK without
    # the GIL. The helper gets its own sitk.Image handle on the same pixels: reading the buffer may re-point a
    # handle, never the one ITK is registering with.
    preloaded: dict = {}
    loader = threading.Thread(target=_load_bspline_stage, name="rtmap-bspline-load", daemon=True,
                              args=(sitk.Image(moving), s.bspline_smooth_mm[0], preloaded))
    loader.start()

    # Translation (coarse only: the landmark start is already close).
    t = time.perf_counter()
    translation = sitk.TranslationTransform(3, t0.tolist())
    reg = _method(fixed, s.histogram_bins, mask, s.translation_shrink, (4.0,) * len(s.translation_shrink),
                  [_sampling_fraction(fixed, f, s.rigid_samples, mask) for f in s.translation_shrink], s.seed,
                  s.linear_gradient_filter)
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
                  [_sampling_fraction(fixed, f, s.rigid_samples, mask) for f in s.rigid_shrink], s.seed,
                  s.linear_gradient_filter)
    reg.SetOptimizerAsConjugateGradientLineSearch(learningRate=1.0, numberOfIterations=s.rigid_iterations,
                                                  convergenceMinimumValue=s.rigid_convergence_minimum,
                                                  convergenceWindowSize=10, lineSearchUpperLimit=3.0,
                                                  lineSearchEpsilon=s.rigid_line_search_epsilon,
                                                  estimateLearningRate=reg.EachIteration,
                                                  maximumStepSizeInPhysicalUnits=2.0)
    _execute(reg, rigid, fixed, moving, s.linear_stage_threads, "rigid")
    timings["rigid_s"] = time.perf_counter() - t

    loader.join()
    # B-spline on a control grid of ~bspline_grid_mm, composed after the rigid transform, optimised by
    # the sparse Mattes-MI L-BFGS-B below (SimpleITK's own metric treats the B-spline Jacobian as dense,
    # O(parameters) per sample, which is ~100x slower at a 30 mm grid).
    t = time.perf_counter()
    extent = np.asarray(fixed.GetSize()) * np.asarray(fixed.GetSpacing())
    bspline = None
    sampler = preloaded.get("sampler")
    metric = 0.0
    for factor, smooth_mm, samples, iterations in zip(s.bspline_grid_factors, s.bspline_smooth_mm,
                                                      s.bspline_level_samples, s.bspline_iterations):
        mesh = [max(1, int(round(e / (bspline_grid_mm * factor)))) for e in extent]
        level = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
        if bspline is not None:
            refit_bspline(bspline, level, fixed)
        if sampler is None or sampler.smooth_mm != smooth_mm:  # the moving image and its gradient, once per smoothing
            sampler = MovingSampler(moving, smooth_mm)
        metric = optimise_bspline_mi(fixed, moving, rigid, level, mask, s, smooth_mm=smooth_mm,
                                     n_samples=samples, iterations=iterations, moving_sampler=sampler)
        bspline = level
    timings["bspline_s"] = time.perf_counter() - t
    # Composite applies the last-added transform first: p -> rigid(bspline(p)).
    composite = sitk.CompositeTransform([rigid, bspline])
    return composite, timings, metric
