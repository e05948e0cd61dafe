"""The working grid (rule 3): isotropic, axis-aligned, cropped to the body.

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

from rtmap_assets.imaging.bspline_eval import lattice_displacement

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


# Mapping a 0/1 mask (rule 4) without losing volume. Interpolating the 0/1 mask linearly and cutting
# at 0.5 shrinks convex shapes (the cut surface is pulled in by the curvature, ~h²/R): mapped
# recurrences came out 1-8 % smaller than drawn. A signed distance cut at zero has the same kind of
# bias (linear interpolation of a convex function overestimates it). So the two jobs are split:
# - how much: the integral of the linearly interpolated occupancy. Linear interpolation weights sum
#   to one, so this integral is the source volume for any translation and follows the transform's
#   volume change for rotations and deformations;
# - where: the signed distance, whose ranking places that volume around the mapped surface.
# The mapped mask is the round(volume / voxel) reference voxels with the lowest interpolated signed
# distance. Measured on spheres and ellipsoids of 5-30 mm (rtmap_assets_tests/test_imaging_mask_volume.py).
CROP_PAD_VOXELS = 3  # the crop around the mask: the distance map only needs to be right near the surface
_TIE_SHIFT = 1e-3  # of a voxel: a consistent tie rule (as rasterisers' top-left rule) for surfaces
#                    landing exactly on voxel centres


def signed_distance_mm(mask: sitk.Image) -> sitk.Image:
    """Float32 signed distance of a 0/1 mask, negative inside, with the surface half-way between
    inside and outside voxel centres: distance to the nearest object voxel centre (outside) minus
    distance to the nearest background voxel centre (inside). Maurer's signed map alone puts zero on
    the inside boundary voxels, i.e. half a voxel inside the surface."""
    binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
    kw = dict(insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    to_object = sitk.Clamp(sitk.SignedMaurerDistanceMap(binary, **kw), sitk.sitkFloat32, lowerBound=0.0)
    to_background = sitk.Clamp(sitk.SignedMaurerDistanceMap(1 - binary, **kw), sitk.sitkFloat32, lowerBound=0.0)
    return to_object - to_background


def _crop_to_mask(mask: sitk.Image, pad: int) -> sitk.Image | None:
    kji = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    if len(kji) == 0:
        return None
    size = np.asarray(mask.GetSize())
    lo = np.maximum(kji.min(axis=0)[::-1] - pad, 0)
    hi = np.minimum(kji.max(axis=0)[::-1] + pad, size - 1)
    crop = sitk.RegionOfInterest(mask, [int(v) for v in hi - lo + 1], [int(v) for v in lo])
    # Pad beyond the image edge too, so a mask touching the edge still has a surface there.
    return sitk.ConstantPad(crop, [int(v) for v in pad - (kji.min(axis=0)[::-1] - lo)],
                            [int(v) for v in pad - (hi - kji.max(axis=0)[::-1])], 0)


def _index_matrix(image: sitk.Image) -> np.ndarray:
    """3x3 matrix taking a continuous index (x, y, z) to a physical offset from the origin (mm)."""
    return np.asarray(image.GetDirection(), dtype=float).reshape(3, 3) @ np.diag(image.GetSpacing())


def displacement_field(transform: sitk.Transform, reference: sitk.Image) -> sitk.Image:
    """T(p) - p at every voxel centre p of `reference` (a float64 vector image on its grid).

    The sitk engine's transforms (a B-spline, then rigid) on axis-aligned grids are evaluated by tensor
    products (`bspline_eval.lattice_displacement`, ~5x faster, equal to ~1e-13 mm); any other transform once
    per point by SimpleITK's multi-threaded displacement-field filter (composites of any kind)."""
    fast = lattice_displacement(transform, reference)
    if fast is not None:
        field = sitk.GetImageFromArray(fast, isVector=True)
        field.CopyInformation(reference)
        return field
    lattice = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
    lattice.CopyInformation(reference)
    to_field = sitk.TransformToDisplacementFieldFilter()
    to_field.SetReferenceImage(lattice)
    to_field.SetOutputPixelType(sitk.sitkVectorFloat64)
    return to_field.Execute(transform)


def mapped_positions_mm(lattice: sitk.Image, transform: sitk.Transform | None,
                         field: sitk.Image | None = None) -> np.ndarray:
    """T(p) for every voxel centre p of `lattice`, as a [z, y, x, 3] float64 array of (x, y, z) mm, from
    `field` (`displacement_field` on `lattice`'s grid) when given, else from one evaluation of T per point."""
    size = lattice.GetSize()
    kji = np.indices(size[::-1], dtype=float)  # [3, z, y, x]: k, j, i
    p = np.asarray(lattice.GetOrigin()) + np.moveaxis(kji[::-1], 0, -1) @ _index_matrix(lattice).T
    if field is None and transform is None:
        return p
    return p + sitk.GetArrayFromImage(field if field is not None else displacement_field(transform, lattice))


def resample_with_field(image: sitk.Image, field: sitk.Image, default_value: float = 0.0) -> sitk.Image:
    """`image` linearly interpolated at p + field(p) for every voxel centre p of `field`'s grid, as Float32:
    `resample(image, field's grid, transform=T, default_value=...)` for the T the field was made from
    (`displacement_field`), with the same interpolation and outside conventions, without evaluating T again
    (the Jacobian QC uses the same field)."""
    q = mapped_positions_mm(field, None, field)
    values = _sample_linear(sitk.GetArrayViewFromImage(image), image, q, float(default_value))
    out = sitk.GetImageFromArray(values.astype(np.float32))
    out.CopyInformation(field)
    return out


def _sample_linear(image_arr: np.ndarray, image: sitk.Image, q_mm: np.ndarray, default_value: float) -> np.ndarray:
    """`image_arr` ([z, y, x] of `image`) linearly interpolated at the points `q_mm` ([..., 3] of x, y, z mm),
    with ITK's conventions (those of `resample` with sitkLinear): a point is inside when its continuous index
    lies in [-0.5, size - 0.5) on every axis, and the half voxel beyond the outer voxel centres takes the
    edge value; outside points get `default_value`."""
    ci = (q_mm - np.asarray(image.GetOrigin())) @ np.linalg.inv(_index_matrix(image)).T
    size = np.asarray(image.GetSize(), dtype=float)
    inside = np.all((ci >= -0.5) & (ci < size - 0.5), axis=-1)
    ci = np.clip(ci, 0.0, size - 1.0)
    coords = np.moveaxis(ci[..., ::-1], -1, 0)  # (k, j, i) for the [z, y, x] array
    values = ndimage.map_coordinates(image_arr, coords, order=1, mode="nearest", prefilter=False)
    return np.where(inside, values, default_value)


def _lerp_axis(q: np.ndarray, axis: int, offset: float) -> np.ndarray:
    """Linear interpolation of `q` (padded by one sample at both ends of `axis`) at `offset` (|offset| <= 1/2
    of a sample) from each inner sample, along `axis`: the inner samples' count."""
    n = q.shape[axis] - 2
    here = np.take(q, np.arange(1, n + 1), axis=axis)
    if offset == 0.0:
        return here
    step = 1 if offset > 0 else -1
    there = np.take(q, np.arange(1 + step, n + 1 + step), axis=axis)
    w = abs(offset)
    return (1.0 - w) * here + w * there


def _pad_linear(q: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """`q` extended by one sample at both ends of each axis in `axes`, extrapolating linearly from the two
    outer samples (by copying the edge when an axis has a single sample)."""
    for axis in axes:
        first, last = np.take(q, [0], axis=axis), np.take(q, [-1], axis=axis)
        if q.shape[axis] > 1:
            first = 2 * first - np.take(q, [1], axis=axis)
            last = 2 * last - np.take(q, [-2], axis=axis)
        q = np.concatenate([first, q, last], axis=axis)
    return q


def _mapped_voxels(occupancy: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None,
                   centres_mm: np.ndarray | None = None) -> float:
    """Volume of the mapped mask in reference voxels: the linearly interpolated occupancy integrated
    over the reference grid, sampled k³ times per reference voxel: k = 2, or more when the source is
    finer still (k = ratio of spacings, at most 4), so the quadrature sees the source's detail (one
    sample per voxel gave +6 % for a 5 mm sphere under a 1.1x scaling, 2³ gives -2 %: one voxel).

    `occupancy` is 0/1 with a zero border (`_crop_to_mask`). The transform is evaluated once per reference
    voxel (`centres_mm`: T at the reference voxel centres, computed here when not given); T at the sub-samples
    is the trilinear interpolation of those mapped centres (extrapolated linearly over the half voxel beyond
    the outer centres). Exact for linear transforms; for the B-spline registrations (control points 30 mm
    apart, reference voxels 2 mm) the interpolated sub-sample positions were within 0.004 mm of T's and the
    integral within 0.1 voxel of the per-sub-sample evaluation (benchmarks/SPEED.md, "Round 3: mapping").
    Voxels whose sub-samples all see occupancy 0 (or all 1) are counted without sampling (`_uniform_voxels`)."""
    ratio = max(reference.GetSpacing()) / min(occupancy.GetSpacing())
    k = int(min(4, max(2, np.ceil(ratio - 1e-6))))
    q = centres_mm if centres_mm is not None else mapped_positions_mm(reference, transform)
    q = _pad_linear(q, (0, 1, 2))
    offsets = [(j - (k - 1) / 2.0) / k for j in range(k)]  # sub-voxel centres, in voxels, centred in each voxel
    reach_mm = max(abs(o) for o in offsets) * sum(
        float(np.linalg.norm(np.diff(q, axis=axis), axis=-1).max(initial=0.0)) for axis in range(3))
    empty, full = _uniform_voxels(occupancy, q[1:-1, 1:-1, 1:-1], reach_mm)
    shell = ~(empty | full)
    occ = sitk.GetArrayViewFromImage(occupancy)
    total = float(np.count_nonzero(full)) * k**3
    for ox in offsets:
        qx = _lerp_axis(q, 2, ox)
        for oy in offsets:
            qxy = _lerp_axis(qx, 1, oy)
            for oz in offsets:
                values = _sample_linear(occ, occupancy, _lerp_axis(qxy, 0, oz)[shell], 0.0)
                total += float(values.sum(dtype=np.float64))
    return total / k**3


def _uniform_voxels(occupancy: sitk.Image, centres_mm: np.ndarray, reach_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """([z, y, x] bool, same) reference voxels whose sub-samples, all within `reach_mm` of their mapped centre
    `centres_mm`, see a linearly interpolated occupancy of exactly 0 (resp. 1): no (resp. only) occupied source
    voxels within r = ceil(1.5 + reach / spacing) voxels (Chebyshev) of the source voxel nearest the mapped
    centre. (A sub-sample's interpolation corners lie within 1 voxel of it, it within reach/spacing voxels of
    the mapped centre, that within 1/2 voxel of its nearest source voxel.)"""
    r = int(np.ceil(1.5 + reach_mm / min(occupancy.GetSpacing())))
    occ = np.pad(sitk.GetArrayViewFromImage(occupancy) > 0, r + 1)
    near = ndimage.maximum_filter(occ, size=2 * r + 1, mode="constant", cval=False)
    only = ndimage.minimum_filter(occ, size=2 * r + 1, mode="constant", cval=False)
    ci = (centres_mm - np.asarray(occupancy.GetOrigin())) @ np.linalg.inv(_index_matrix(occupancy)).T
    idx = np.rint(ci[..., ::-1]).astype(np.int64) + (r + 1)  # (k, j, i) in the padded arrays
    inside = np.all((idx >= 0) & (idx < np.asarray(occ.shape)), axis=-1)
    idx = np.where(inside[..., None], idx, 0)
    flat = np.ravel_multi_index(tuple(np.moveaxis(idx, -1, 0)), occ.shape)
    empty = ~inside | ~near.ravel()[flat]
    full = inside & only.ravel()[flat]
    return empty, full


def resample_mask(mask: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None) -> sitk.Image:
    """A 0/1 mask onto `reference` through `transform` (reference point -> mask point), keeping its volume.

    Volume = the sum of the linearly interpolated occupancy over the reference voxels (rounded to whole
    voxels); shape = the voxels with the lowest linearly interpolated signed distance
    (`signed_distance_mm`, on a crop around the mask). See the comment above for why. The transform is
    evaluated once per reference voxel and both are sampled from those mapped centres (`_mapped_voxels`).
    """
    out = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
    out.CopyInformation(reference)
    crop = _crop_to_mask(mask, CROP_PAD_VOXELS)
    if crop is None:
        return out
    phi = signed_distance_mm(crop)
    far = float(np.max(np.asarray(crop.GetSize()) * np.asarray(crop.GetSpacing())))
    shifted = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
    shifted.CopyInformation(reference)
    shifted.SetOrigin(tuple(np.asarray(reference.GetOrigin()) + _index_matrix(reference) @ np.full(3, _TIE_SHIFT)))
    centres_mm = mapped_positions_mm(shifted, transform)
    distance = _sample_linear(sitk.GetArrayViewFromImage(phi), phi, centres_mm, far).astype(np.float32)
    occupancy = sitk.Cast(crop > 0, sitk.sitkFloat32)
    n = int(round(_mapped_voxels(occupancy, shifted, transform, centres_mm)))
    arr = np.zeros(distance.shape, dtype=np.uint8)
    if n > 0:
        flat = distance.ravel()
        n = min(n, flat.size)
        keep = np.argpartition(flat, n - 1)[:n] if n < flat.size else np.arange(flat.size)
        arr.ravel()[keep] = 1
    result = sitk.GetImageFromArray(arr)
    result.CopyInformation(reference)
    return result


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
