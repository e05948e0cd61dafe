"""Recurrence classification schemes (docs/RULES.md rules 9–12).

- Centroid class (seed): dose at the mapped-recurrence centroid ≥ 0.95·P -> 1 (inside), else 0.
  The seed read the dose at a truncated voxel index; rtmap interpolates trilinearly at the point in
  mm. A centroid outside the dose grid gets dose 0 and `in_dose_grid = False` (explicit, not hidden).
- Volume class (seed): f = fraction of the sphere's volume with dose ≥ 0.95·P; f ≥ 0.95 -> 1 inside,
  0 < f < 0.95 -> 2 peripheral, f = 0 -> 0 outside. The seed counted voxel centres (4–7 of them for
  a 2 mm sphere on a 2 mm grid); rtmap samples the ball below the voxel size (regions.unit_ball_points)
  against the trilinear dose, points beyond the grid edge with dose 0.
- Dawson: f = fraction of mapped rGTV voxels with dose ≥ 0.95·P; ≥ 0.95 "in-field",
  [0.20, 0.95) "marginal", < 0.20 "outside".
- Mohamed A–E (per patient, not per level): centroid inside the high CTV -> A; else centroid dose
  ≥ 0.95·P_high -> B; else centroid inside an elective CTV (0 < P < P_high) -> C; else centroid dose
  ≥ 0.95·P of an elective level -> D; else E.

Absent levels (P = 0) have no class (None).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import map_coordinates

from rtmap_assets.config import Thresholds
from rtmap_assets.dosimetry.regions import (Sphere, isodose_threshold, mask_array, physical_to_continuous_index,
                                           point_in_mask, points_in_mask)

INSIDE, OUTSIDE, PERIPHERAL = 1, 0, 2
DAWSON_INFIELD, DAWSON_MARGINAL, DAWSON_OUTSIDE = "in-field", "marginal", "outside"


def points_in_grid(image: sitk.Image, points_mm: np.ndarray) -> np.ndarray:
    """Whether each point lies within the grid's voxels (continuous index within [-0.5, n - 0.5])."""
    idx = physical_to_continuous_index(image, points_mm)
    size = np.asarray(image.GetSize(), dtype=float)
    return np.all((idx >= -0.5) & (idx <= size - 0.5), axis=1)


def dose_at_points(dose: sitk.Image, points_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear dose (Gy) at points (N, 3) in mm, and whether each point is in the dose grid.

    Within the outer half voxel the edge voxel's value is used (nearest); outside the grid the dose
    is 0 (the same convention as the zero-filled dose beyond the RTDOSE extent).
    """
    pts = np.atleast_2d(np.asarray(points_mm, dtype=float))
    idx = physical_to_continuous_index(dose, pts)
    in_grid = points_in_grid(dose, pts)
    arr = sitk.GetArrayViewFromImage(dose)
    values = np.zeros(len(pts), dtype=float)
    if in_grid.any():
        coords = idx[in_grid][:, ::-1].T  # (z, y, x) rows for the [z, y, x] array
        values[in_grid] = map_coordinates(arr, coords, order=1, mode="nearest", prefilter=False)
    return values, in_grid


def centroid_dose(dose: sitk.Image, point_mm: np.ndarray, support: sitk.Image | None = None) -> tuple[float, bool]:
    """(dose in Gy, in dose grid) at a point; `support` (PatientVolumes.dose_support) narrows "in the
    dose grid" to the RTDOSE's own extent, where the working-grid dose is otherwise a silent 0."""
    point = np.asarray(point_mm, dtype=float)
    values, in_grid = dose_at_points(dose, point[None, :])
    inside = bool(in_grid[0]) and (support is None or point_in_mask(support, point))
    return (float(values[0]) if inside else 0.0), inside


def centroid_class(dose_gy: float, prescription_gy: float, fraction: float) -> int | None:
    """1 inside / 0 outside; None for an absent level."""
    thr = isodose_threshold(prescription_gy, fraction)
    if thr is None:
        return None
    return INSIDE if dose_gy >= thr else OUTSIDE


@dataclass(frozen=True)
class SphereSamples:
    """The sphere's sub-voxel sample points and their trilinear doses (0 beyond the grid)."""

    doses_gy: np.ndarray  # (N,)
    outside_dose_fraction: float  # share of points beyond the grid or outside the dose support
    volume_cc: float  # 4/3 π r³, shared equally by the points


def sphere_samples(dose: sitk.Image, sph: Sphere, support: sitk.Image | None = None) -> SphereSamples:
    pts = sph.sample_points()
    doses, in_grid = dose_at_points(dose, pts)
    if support is not None:
        in_grid &= points_in_mask(support, pts)
    return SphereSamples(doses, float(1.0 - in_grid.mean()), sph.exact_volume_cc)


def sphere_fraction(dose: sitk.Image | SphereSamples, sph: Sphere | None, prescription_gy: float,
                    fraction: float) -> float | None:
    """Fraction of the sphere's volume with dose ≥ fraction·P, by sub-voxel sampling (module docstring).

    `dose` may be the dose image (sampled here) or `SphereSamples` already taken (sph is then unused).
    """
    thr = isodose_threshold(prescription_gy, fraction)
    if thr is None:
        return None
    samples = dose if isinstance(dose, SphereSamples) else sphere_samples(dose, sph)
    return float(np.count_nonzero(samples.doses_gy >= thr)) / samples.doses_gy.size


def volume_class(f: float | None, inside_fraction: float) -> int | None:
    """Seed codes: 1 inside (f ≥ inside_fraction), 2 peripheral (0 < f < inside_fraction), 0 outside (f = 0)."""
    if f is None:
        return None
    if f >= inside_fraction:
        return INSIDE
    return PERIPHERAL if f > 0 else OUTSIDE


def dawson_fraction(dose: sitk.Image, recurrence: sitk.Image, prescription_gy: float, fraction: float) -> float | None:
    """Fraction of mapped rGTV voxels with dose ≥ fraction·P (None for an absent level)."""
    thr = isodose_threshold(prescription_gy, fraction)
    if thr is None:
        return None
    m = mask_array(recurrence)
    n = int(m.sum())
    if n == 0:
        raise ValueError("dawson_fraction: empty recurrence mask (check with recurrence_centroid first)")
    return int(np.count_nonzero(sitk.GetArrayViewFromImage(dose)[m] >= thr)) / n


def dawson_class(f: float | None, thresholds: Thresholds) -> str | None:
    if f is None:
        return None
    if f >= thresholds.dawson_infield:
        return DAWSON_INFIELD
    if f >= thresholds.dawson_marginal:
        return DAWSON_MARGINAL
    return DAWSON_OUTSIDE


@dataclass(frozen=True)
class MohamedResult:
    type: str | None  # "A".."E", None when a CTV the decision needs is missing
    reason: str  # which test decided, or why it could not be decided


def mohamed_type(
    centroid_mm: np.ndarray,
    centroid_dose_gy: float,
    prescriptions: Mapping[str, float],
    ctv_masks: Mapping[str, sitk.Image | None],
    fraction: float,
) -> MohamedResult:
    """Mohamed A–E for one patient (see module docstring); levels are 'low'/'intermediate'/'high'."""
    p_high = prescriptions["high"]
    high_ctv = ctv_masks.get("high")
    if high_ctv is None:
        return MohamedResult(None, "high-risk CTV not found: cannot test A")
    if point_in_mask(high_ctv, centroid_mm):
        return MohamedResult("A", "centroid inside the high-risk CTV")
    if centroid_dose_gy >= fraction * p_high:
        return MohamedResult("B", f"centroid dose {centroid_dose_gy:.2f} Gy ≥ {fraction:g}·{p_high:g} Gy")
    elective = [lvl for lvl, p in prescriptions.items() if 0 < p < p_high]
    missing = [lvl for lvl in elective if ctv_masks.get(lvl) is None]
    if missing:
        return MohamedResult(None, f"elective CTV(s) not found for {missing}: cannot test C")
    for lvl in elective:
        if point_in_mask(ctv_masks[lvl], centroid_mm):
            return MohamedResult("C", f"centroid inside the {lvl} CTV")
    for lvl in elective:
        if centroid_dose_gy >= fraction * prescriptions[lvl]:
            return MohamedResult("D", f"centroid dose {centroid_dose_gy:.2f} Gy ≥ {fraction:g}·{prescriptions[lvl]:g} Gy ({lvl})")
    return MohamedResult("E", "centroid outside every CTV and below every 95 % isodose")
