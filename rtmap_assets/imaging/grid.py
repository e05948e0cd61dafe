"""The working grid (DESIGN.md rule 3): isotropic, axis-aligned, cropped to the body.

Working grids have identity direction and `spacing_mm` (default 2 mm) in every axis. They cover the
body's bounding box plus a margin rather than the whole scanner field of view: for a head-and-neck
CT the field of view is mostly air and couch, and cropping cuts the voxel count (and with it the
registration, resampling and file cost) by 2-4x without touching anything inside the patient. Axial
contours can then be rasterised directly on the working grid (exact and fast) instead of being
rasterised at native resolution and resampled.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

BODY_THRESHOLD_HU = -400.0


def physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) corners in mm of the voxel centres of `image`, for any direction."""
    size = np.asarray(image.GetSize())
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([float(c) for c in (i, j, k)])
        for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)
    ]
    pts = np.asarray(corners)
    return pts.min(axis=0), pts.max(axis=0)


def make_grid(lower_mm: np.ndarray, upper_mm: np.ndarray, spacing_mm: float) -> sitk.Image:
    """An empty (uint8) identity-direction grid of isotropic `spacing_mm` whose voxel centres span the box.

    The origin is snapped to a multiple of the spacing so grids built from overlapping boxes share
    voxel centres.
    """
    lower = np.floor(np.asarray(lower_mm, dtype=float) / spacing_mm) * spacing_mm
    upper = np.asarray(upper_mm, dtype=float)
    size = np.maximum(1, np.ceil((upper - lower) / spacing_mm).astype(int) + 1)
    grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    grid.SetOrigin(tuple(float(v) for v in lower))
    grid.SetSpacing((spacing_mm,) * 3)
    return grid


def body_bounds(image: sitk.Image, threshold: float | None = BODY_THRESHOLD_HU) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box (mm) of the largest connected foreground component, from a coarse copy of `image`.

    `threshold=None` uses Otsu (for MR, whose intensities have no fixed scale).
    """
    coarse = _shrink_to(image, 4.0)
    arr = sitk.GetArrayViewFromImage(coarse)
    thr = float(threshold) if threshold is not None else float(_otsu(arr))
    fg = arr > thr
    labels, n = ndimage.label(fg)
    if n == 0:
        return physical_bounds(image)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    kji = np.argwhere(labels == int(np.argmax(counts)))
    lo_idx, hi_idx = kji.min(axis=0)[::-1], kji.max(axis=0)[::-1]
    pts = np.asarray([
        coarse.TransformContinuousIndexToPhysicalPoint([float(c) for c in (i, j, k)])
        for i in (lo_idx[0] - 0.5, hi_idx[0] + 0.5)
        for j in (lo_idx[1] - 0.5, hi_idx[1] + 0.5)
        for k in (lo_idx[2] - 0.5, hi_idx[2] + 0.5)
    ])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    full_lo, full_hi = physical_bounds(image)
    return np.maximum(lo, full_lo), np.minimum(hi, full_hi)


def _otsu(arr: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(np.asarray(arr)))


def _shrink_to(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    factors = [max(1, int(round(spacing_mm / s))) for s in image.GetSpacing()]
    return sitk.BinShrink(image, factors) if any(f > 1 for f in factors) else image


def working_grid(image: sitk.Image, spacing_mm: float, *, margin_mm: float = 10.0,
                 threshold: float | None = BODY_THRESHOLD_HU,
                 bounds: tuple[np.ndarray, np.ndarray] | None = None) -> sitk.Image:
    """Working grid for `image`: body bounding box (or `bounds`) + margin, clipped to the image."""
    lo, hi = bounds if bounds is not None else body_bounds(image, threshold)
    full_lo, full_hi = physical_bounds(image)
    lo = np.maximum(np.asarray(lo) - margin_mm, full_lo)
    hi = np.minimum(np.asarray(hi) + margin_mm, full_hi)
    return make_grid(lo, hi, spacing_mm)


def resample(image: sitk.Image, reference: sitk.Image, *, transform: sitk.Transform | None = None,
             interpolator: int = sitk.sitkLinear, default_value: float = 0.0,
             pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
    """Resample `image` onto `reference`'s grid; `transform` maps reference points to `image` points."""
    return sitk.Resample(image, reference, transform if transform is not None else sitk.Transform(),
                         interpolator, float(default_value), pixel_type)


def resample_image(image: sitk.Image, reference: sitk.Image, default_value: float = -1000.0) -> sitk.Image:
    """Image intensities onto the working grid (linear; outside the scan = air for CT)."""
    return resample(image, reference, default_value=default_value)


def resample_dose(dose: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Dose (Gy) onto the planning working grid: linear, 0 outside the dose grid."""
    return resample(dose, reference, default_value=0.0)


def resample_mask(mask: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None) -> sitk.Image:
    """A 0/1 mask onto `reference`: linear interpolation of the mask then >= 0.5.

    This keeps the boundary where the interpolated occupancy crosses one half, which follows the
    original surface more closely than nearest-neighbour (no staircase shifts of half a voxel).
    """
    frac = resample(sitk.Cast(mask, sitk.sitkFloat32), reference, transform=transform, default_value=0.0)
    return sitk.Cast(frac >= 0.5, sitk.sitkUInt8)


def body_mask(image: sitk.Image, threshold: float | None = BODY_THRESHOLD_HU) -> sitk.Image:
    """uint8 body mask on `image`'s grid: threshold, largest component, holes filled slice by slice."""
    arr = sitk.GetArrayViewFromImage(image)
    thr = float(threshold) if threshold is not None else _otsu(arr)
    fg = arr > thr
    labels, n = ndimage.label(fg)
    if n:
        counts = np.bincount(labels.ravel())
        counts[0] = 0
        fg = labels == int(np.argmax(counts))
    fg = np.stack([ndimage.binary_fill_holes(s) for s in fg])
    out = sitk.GetImageFromArray(fg.astype(np.uint8))
    out.CopyInformation(image)
    return out
