"""Deformable registration relapse -> planning behind one interface (rule 4).

`register(fixed, moving, ...)` returns a `RegistrationResult` whose `transform` maps FIXED (planning)
points to MOVING (relapse) points, like ITK and elastix, everywhere in space: inside the planning working
grid and outside it. Every engine starts from the same initial alignment, the translation that makes the
landmark centroids coincide (as the seed does), then runs translation -> rigid -> B-spline (control grid
`bspline_grid_mm`, default 30 mm) with Mattes mutual information, so an MR relapse image works as well as
a CT.

Engines (one module each):
- ``"sitk"`` (default, `sitk_engine`): translation and rigid stages with SimpleITK's
  ImageRegistrationMethod; the B-spline stage is a SimpleITK `BSplineTransform` whose coefficients are
  optimised by scipy's L-BFGS-B on a sparse Mattes-MI gradient (`bspline_mi`), 2-3x faster than elastix.
  Result: CompositeTransform p -> rigid(p + u(p)).
- ``"elastix"`` (`elastix_engine`): the seed's elastix parameter maps run in-process by itk-elastix;
  elastix's result maps are converted exactly: CompositeTransform p -> B(E(T(p))) + t0.
- ``"skrt"`` (`skrt_engine`): the seed's own code path, scikit-rt's `Registration` driving the elastix CLI
  with the same maps; its TransformParameters chain is converted the same way.

`register` sets SimpleITK's global thread count only for its own duration (`threads.sitk_threads`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from rtmap_assets.imaging.registration.bspline_mi import (
    BsplineMiObjective,
    MovingSampler,
    bspline_mi_objective,
    bspline_weight_matrix,
    inside_with_margin,
    laplacian_matrix,
    optimise_bspline_mi,
    refit_bspline,
)
from rtmap_assets.imaging.registration.elastix_engine import (
    UnsupportedElastixTransform,
    elastix_parameter_maps,
    elastix_stage_transform,
    register_elastix,
    transform_from_elastix,
)
from rtmap_assets.imaging.registration.sitk_engine import SitkSettings, register_sitk
from rtmap_assets.imaging.registration.skrt_engine import register_skrt
from rtmap_assets.imaging.registration.threads import restores_sitk_threads, sitk_threads

log = logging.getLogger(__name__)

ENGINES = ("sitk", "elastix", "skrt")

__all__ = [
    "ENGINES", "BsplineMiObjective", "MovingSampler", "RegistrationResult", "SitkSettings",
    "UnsupportedElastixTransform", "bspline_mi_objective", "bspline_weight_matrix", "elastix_parameter_maps",
    "elastix_stage_transform", "inside_with_margin", "laplacian_matrix", "optimise_bspline_mi", "refit_bspline",
    "register", "restores_sitk_threads", "sitk_threads", "transform_from_elastix",
]


@dataclass
class RegistrationResult:
    transform: sitk.Transform  # fixed (planning) point -> moving (relapse) point
    engine: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    final_metric: float | None = None  # Mattes MI of the last stage (lower is better), engine-reported
    initial_translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)


def register(fixed: sitk.Image, moving: sitk.Image, *, fixed_landmark_mm, moving_landmark_mm,
             engine: str = "sitk", bspline_grid_mm: float = 30.0, fixed_mask: sitk.Image | None = None,
             settings: SitkSettings | None = None, threads: int | None = None) -> RegistrationResult:
    """Register relapse (`moving`) to planning (`fixed`); see the module docstring.

    `fixed_mask` (uint8, fixed grid) restricts the metric samples to the body. `threads` defaults to
    the machine's core count (`os.cpu_count()`); SimpleITK's global default is restored on return.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown registration engine {engine!r}; choose one of {ENGINES}")
    threads = threads or os.cpu_count() or 1
    fixed_lm = np.asarray(fixed_landmark_mm, dtype=float)
    t0 = np.asarray(moving_landmark_mm, dtype=float) - fixed_lm
    start = time.perf_counter()
    with sitk_threads(threads):
        if engine == "sitk":
            transform, timings, metric = register_sitk(fixed, moving, t0, fixed_lm, bspline_grid_mm, fixed_mask,
                                                       settings or SitkSettings())
        elif engine == "elastix":
            transform, timings, metric = register_elastix(fixed, moving, t0, bspline_grid_mm, fixed_mask, threads)
        else:
            transform, timings, metric = register_skrt(fixed, moving, t0, bspline_grid_mm)
    timings["registration_total_s"] = time.perf_counter() - start
    log.info("registration %s: %s", engine, {k: round(v, 2) for k, v in timings.items()})
    return RegistrationResult(transform=transform, engine=engine, timings=timings, final_metric=metric,
                              initial_translation_mm=tuple(float(v) for v in t0))
