"""Relapse structures -> planning space, and points in both directions (rule 4).

The registration transform T maps planning (fixed) points to relapse (moving) points. A relapse
mask comes to planning space by *resampling* it through T: each planning voxel centre p looks up
the relapse mask at T(p) (`grid.resample_mask`). The mapped mask keeps the drawn volume: as many
voxels as the integral of the linearly interpolated occupancy (the source volume for rigid
transforms, the transform's volume change otherwise), placed where the interpolated signed distance
is lowest. The former 0/1 interpolation cut at 0.5 was off by -11 to +33 % on 5-30 mm shapes
(benchmarks/mask_volume_benchmark.py; docs/DOSIMETRY.md). A relapse *point* q needs the inverse, T^-1(q), found here by
Newton iterations on the forward transform with a finite-difference Jacobian (no inverse field is
ever built).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from rtmap_assets.imaging.grid import CROP_PAD_VOXELS, displacement_field, mapped_positions_mm, resample_mask


def mask_volume_cc(mask: sitk.Image) -> float:
    """Voxel-count volume (cc) of a 0/1 mask (voxel-centre occupancy)."""
    n = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    return n * float(np.prod(mask.GetSpacing())) / 1000.0


def mask_centroid_mm(mask: sitk.Image) -> np.ndarray | None:
    """Centroid (LPS mm) of the mask's voxel centres; None for an empty mask."""
    kji = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    if len(kji) == 0:
        return None
    idx = kji[:, ::-1].mean(axis=0)
    return np.asarray(mask.TransformContinuousIndexToPhysicalPoint(idx.tolist()))


def transform_points(transform: sitk.Transform, pts: np.ndarray) -> np.ndarray:
    """Apply a SimpleITK transform to (N, 3) points."""
    pts = np.atleast_2d(np.asarray(pts, dtype=float))
    return np.array([transform.TransformPoint(p.tolist()) for p in pts]).reshape(pts.shape)


def invert_points(transform: sitk.Transform, moving_pts: np.ndarray, *, tol_mm: float = 1e-3,
                  max_iter: int = 50, step_mm: float = 0.5) -> np.ndarray:
    """Planning points p with T(p) = q for relapse points q (Newton on the forward transform).

    Starts from p = q - (T(q) - q) (the displacement at q, negated), which is exact for translations.
    Raises ValueError if some point does not converge (a folded or non-invertible transform there).
    """
    q = np.atleast_2d(np.asarray(moving_pts, dtype=float))
    p = q - (transform_points(transform, q) - q)
    eye = np.eye(3) * step_mm
    for _ in range(max_iter):
        r = transform_points(transform, p) - q
        if np.max(np.linalg.norm(r, axis=1)) < tol_mm:
            return p
        for n in range(len(p)):
            jac = np.column_stack([
                (np.asarray(transform.TransformPoint((p[n] + eye[d]).tolist()))
                 - np.asarray(transform.TransformPoint((p[n] - eye[d]).tolist()))) / (2 * step_mm)
                for d in range(3)
            ])
            p[n] = p[n] - np.linalg.solve(jac, r[n])
    r = transform_points(transform, p) - q
    if np.max(np.linalg.norm(r, axis=1)) >= tol_mm:
        raise ValueError(f"point inversion did not converge (residual {np.max(np.linalg.norm(r, axis=1)):.3g} mm)")
    return p


def _pullback_points(transform: sitk.Transform, reference: sitk.Image, lo_mm: np.ndarray, hi_mm: np.ndarray,
                     step: int = 2) -> np.ndarray | None:
    """Reference points (every `step`-th voxel, forward transform only) that land in the box [lo, hi] widened
    by the lattice's own spacing; None when there are none. A stand-in for the pulled-back corners of
    `map_mask`'s box when they cannot be inverted: it needs no inverse, only the forward field."""
    coarse = sitk.Image([max(1, -(-int(n) // step)) for n in reference.GetSize()], sitk.sitkUInt8)
    coarse.SetOrigin(reference.GetOrigin())
    coarse.SetSpacing(tuple(float(v) * step for v in reference.GetSpacing()))
    coarse.SetDirection(reference.GetDirection())
    disp = sitk.GetArrayFromImage(displacement_field(transform, coarse)).reshape(-1, 3)  # x, y, z components
    kji = np.indices(coarse.GetSize()[::-1]).reshape(3, -1).T
    a = np.asarray(coarse.GetDirection(), dtype=float).reshape(3, 3) @ np.diag(coarse.GetSpacing())
    p = np.asarray(coarse.GetOrigin()) + kji[:, ::-1] @ a.T
    widen = float(np.max(coarse.GetSpacing()))
    q = p + disp
    inside = np.all((q >= np.asarray(lo_mm) - widen) & (q <= np.asarray(hi_mm) + widen), axis=1)
    return p[inside] if inside.any() else None


def _reaching_part(box: sitk.Image, transform: sitk.Transform, lo_mm: np.ndarray, hi_mm: np.ndarray,
                   step: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Index range [j0, j1] of `box` (x, y, z; inclusive; j1 < j0 when empty) holding every voxel whose mapped
    centre T(p) can lie in [lo_mm, hi_mm], from T on a lattice of every `step`-th voxel (1/step³ of the cost).

    A voxel's nearest lattice point is at most step/2 voxels away per axis, so its mapped centre is within
    m = 1/2 sum_axes max |lattice difference| (per output axis) of that point's, where T is linear over a
    lattice cell; m is doubled for the curvature of T (a B-spline of 30 mm control spacing is near linear over a
    4 mm cell), and the range is widened by step/2 voxels around the lattice points that land within [lo - m,
    hi + m]. On seeds 1-3 the masks were those of the whole box, with 1-2 voxels to spare (benchmarks/SPEED.md)."""
    size = np.asarray(box.GetSize())
    coarse = sitk.Image([int(v) for v in (size - 1) // step + 1 + ((size - 1) % step > 0)], sitk.sitkUInt8)
    coarse.SetOrigin(box.GetOrigin())
    coarse.SetSpacing(tuple(float(v) * step for v in box.GetSpacing()))
    coarse.SetDirection(box.GetDirection())
    q = mapped_positions_mm(coarse, transform)  # [z, y, x, 3]
    m = np.zeros(3)
    for axis in range(3):
        if q.shape[axis] > 1:
            m += np.abs(np.diff(q, axis=axis)).reshape(-1, 3).max(axis=0)
    m = 2 * 0.5 * m
    inside = np.all((q >= np.asarray(lo_mm) - m) & (q <= np.asarray(hi_mm) + m), axis=-1)
    if not inside.any():
        return np.zeros(3, dtype=int), np.full(3, -1)
    kji = np.argwhere(inside)
    j0 = np.maximum(kji.min(axis=0)[::-1] * step - (step + 1) // 2, 0)
    j1 = np.minimum(kji.max(axis=0)[::-1] * step + (step + 1) // 2, size - 1)
    return j0, j1


def map_mask(mask: sitk.Image, transform: sitk.Transform, reference: sitk.Image, *,
             margin_mm: float = 15.0) -> sitk.Image:
    """Relapse mask -> planning grid `reference` through `transform` (planning -> relapse).

    Only a box around the structure is resampled (its bounding box pulled back through the inverse at
    the 8 corners, plus `margin_mm` for the deformation between corners, then cut to the part that can
    reach the structure's crop, `_reaching_part`), then pasted into an empty mask of the full reference
    grid: the cost is that of the structure, not of the whole grid.
    """
    out = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
    out.CopyInformation(reference)
    kji = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    if len(kji) == 0:
        return out
    lo_idx, hi_idx = kji.min(axis=0)[::-1] - 1.0, kji.max(axis=0)[::-1] + 1.0
    corners = np.array([mask.TransformContinuousIndexToPhysicalPoint([float(c) for c in (i, j, k)])
                        for i in (lo_idx[0], hi_idx[0]) for j in (lo_idx[1], hi_idx[1])
                        for k in (lo_idx[2], hi_idx[2])])
    try:
        back = invert_points(transform, corners, tol_mm=0.05)
    except ValueError:
        # Newton fails where the field has a kink, e.g. a corner pulled back onto the edge of the B-spline
        # grid (a spinal cord longer than the planning scan): the whole grid then cost ~4 s per structure.
        # An 8 mm lattice (1/64 of the grid's points) is enough here: `_reaching_part` tightens the box after.
        back = _pullback_points(transform, reference, corners.min(axis=0), corners.max(axis=0), step=4)
        if back is None:
            return resample_mask(mask, reference, transform)
    lo = back.min(axis=0) - margin_mm
    hi = back.max(axis=0) + margin_mm
    ref_lo = np.asarray(reference.GetOrigin())
    spacing = np.asarray(reference.GetSpacing())
    if not np.allclose(np.asarray(reference.GetDirection()), np.eye(3).ravel()):
        return resample_mask(mask, reference, transform)
    size = np.asarray(reference.GetSize())
    i0 = np.clip(np.floor((lo - ref_lo) / spacing).astype(int), 0, size - 1)
    i1 = np.clip(np.ceil((hi - ref_lo) / spacing).astype(int), 0, size - 1)
    if np.any(i1 < i0):
        return out
    box = sitk.Image([int(v) for v in (i1 - i0 + 1)], sitk.sitkUInt8)
    box.SetOrigin(tuple(ref_lo + i0 * spacing))
    box.SetSpacing(tuple(spacing))
    # The 15 mm margin is for the worst case; most of that box maps outside the structure's crop (where the
    # resampled occupancy is 0 and the distance `far`): keep only the part a coarse lattice says can reach it.
    pad = CROP_PAD_VOXELS
    crop_corners = np.array([mask.TransformContinuousIndexToPhysicalPoint([float(c) for c in (i, j, k)])
                             for i in (lo_idx[0] + 1 - pad, hi_idx[0] - 1 + pad)
                             for j in (lo_idx[1] + 1 - pad, hi_idx[1] - 1 + pad)
                             for k in (lo_idx[2] + 1 - pad, hi_idx[2] - 1 + pad)])
    j0, j1 = _reaching_part(box, transform, crop_corners.min(axis=0), crop_corners.max(axis=0))
    if np.any(j1 < j0):
        return out
    i0, i1 = i0 + j0, i0 + j1
    box = sitk.Image([int(v) for v in (i1 - i0 + 1)], sitk.sitkUInt8)
    box.SetOrigin(tuple(ref_lo + i0 * spacing))
    box.SetSpacing(tuple(spacing))
    sub = resample_mask(mask, box, transform)
    return sitk.Paste(out, sub, sub.GetSize(), [0, 0, 0], [int(v) for v in i0])
