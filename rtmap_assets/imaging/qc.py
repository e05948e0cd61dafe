"""Registration quality: landmark distance (rule 5's uncertainty input), overlaps, Jacobian, TRE.

All functions take the registration transform T in its native direction, planning (fixed) point ->
relapse (moving) point, and masks on grids with physical geometry.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from rtmap_assets.imaging.grid import displacement_field
from rtmap_assets.imaging.mapping import transform_points


def landmark_distance_mm(planning_centroid_mm, mapped_centroid_mm) -> float:
    """|planning landmark centroid - mapped landmark centroid| (mm)."""
    return float(np.linalg.norm(np.asarray(planning_centroid_mm, float) - np.asarray(mapped_centroid_mm, float)))


def _surface_distances(a: sitk.Image, b: sitk.Image) -> np.ndarray:
    """Distances (mm) from the surface voxels of `a` to the surface of `b`."""
    a = sitk.Cast(a > 0, sitk.sitkUInt8)
    b = sitk.Cast(b > 0, sitk.sitkUInt8)
    dist_b = sitk.Abs(sitk.SignedMaurerDistanceMap(b, insideIsPositive=False, squaredDistance=False,
                                                   useImageSpacing=True))
    surf_a = sitk.LabelContour(a)
    d = sitk.GetArrayViewFromImage(dist_b)[sitk.GetArrayViewFromImage(surf_a) > 0]
    return np.asarray(d, dtype=float)


def overlap_metrics(a: sitk.Image, b: sitk.Image) -> dict[str, float | None]:
    """Dice, symmetric HD95 and mean surface distance (mm) of two masks on the same grid.

    Surface = voxels of the mask with a background face neighbour; distances are to the other mask's
    boundary (Maurer distance map, image spacing). Empty masks give Dice 0 (or 1 if both empty) and
    null distances.
    """
    aa = sitk.GetArrayViewFromImage(a) > 0
    bb = sitk.GetArrayViewFromImage(b) > 0
    na, nb = int(aa.sum()), int(bb.sum())
    if na + nb == 0:
        return {"dice": 1.0, "hd95_mm": None, "msd_mm": None}
    dice = 2.0 * float(np.logical_and(aa, bb).sum()) / (na + nb)
    if na == 0 or nb == 0:
        return {"dice": dice, "hd95_mm": None, "msd_mm": None}
    # Distance maps on the two masks' joint bounding box + 2 voxels rather than the whole working grid:
    # every surface voxel of both masks is inside it and no mask touches its edge, so the distances are the
    # same (exact Euclidean distance transform) at a fraction of the cost for organ-sized structures.
    kji = np.argwhere(aa | bb)
    lo = np.maximum(kji.min(axis=0) - 2, 0)[::-1]
    hi = np.minimum(kji.max(axis=0) + 3, aa.shape)[::-1]
    a = sitk.RegionOfInterest(a, [int(v) for v in hi - lo], [int(v) for v in lo])
    b = sitk.RegionOfInterest(b, [int(v) for v in hi - lo], [int(v) for v in lo])
    dab = _surface_distances(a, b)
    dba = _surface_distances(b, a)
    both = np.concatenate([dab, dba])
    return {"dice": dice, "hd95_mm": float(max(np.percentile(dab, 95), np.percentile(dba, 95))),
            "msd_mm": float(both.mean())}


def jacobian_stats(transform: sitk.Transform, reference: sitk.Image,
                   body: sitk.Image | None = None, *, field: sitk.Image | None = None) -> tuple[float, float]:
    """(minimum Jacobian determinant, fraction of voxels with det <= 0) over `body` (or the whole grid).

    The displacement field of T on the reference grid (`field` when the caller has it already) is
    differentiated by finite differences.
    """
    if field is None:
        field = displacement_field(transform, reference)
    det = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field))
    region = sitk.GetArrayViewFromImage(body) > 0 if body is not None else np.ones(det.shape, bool)
    vals = det[region]
    if vals.size == 0:
        vals = det.ravel()
    return float(vals.min()), float(np.mean(vals <= 0))


def erode_by_mm(mask: sitk.Image, margin_mm: float) -> sitk.Image:
    """Mask eroded by about `margin_mm`, treating outside the grid as background (so the field-of-view
    ends are eroded too)."""
    f = sitk.BinaryErodeImageFilter()
    f.SetKernelRadius([max(1, int(round(margin_mm / s))) for s in mask.GetSpacing()])
    f.SetForegroundValue(1)
    f.SetBoundaryToForeground(False)
    return f.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))


def body_points(mask: sitk.Image, n: int, rng: np.random.Generator, *, erode_mm: float = 5.0) -> np.ndarray:
    """n random voxel-centre points (mm) at least `erode_mm` inside a body mask and its grid's edges."""
    inner = erode_by_mm(mask, erode_mm)
    kji = np.argwhere(sitk.GetArrayViewFromImage(inner) > 0)
    if len(kji) == 0:
        kji = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    pick = kji[rng.choice(len(kji), size=min(n, len(kji)), replace=False)]
    return np.array([mask.TransformIndexToPhysicalPoint([int(v) for v in idx[::-1]]) for idx in pick])


def target_registration_error(transform: sitk.Transform, relapse_points_mm: np.ndarray, warp) -> np.ndarray:
    """TRE (mm) at relapse points q with the known warp: p = warp.relapse_to_planning(q), |T(p) - q|."""
    q = np.asarray(relapse_points_mm, dtype=float)
    p = warp.relapse_to_planning(q)
    return np.linalg.norm(transform_points(transform, p) - q, axis=1)


def ellipsoid_mask(centre_mm, radii_mm, reference: sitk.Image) -> sitk.Image:
    """0/1 axis-aligned ellipsoid on `reference` (voxel-centre occupancy)."""
    size = reference.GetSize()
    idx = np.indices(size[::-1]).reshape(3, -1)[::-1].T.astype(float)  # (N, 3) i, j, k
    origin = np.asarray(reference.GetOrigin())
    mat = np.asarray(reference.GetDirection()).reshape(3, 3) * np.asarray(reference.GetSpacing())
    pts = origin + idx @ mat.T
    inside = np.sum(((pts - np.asarray(centre_mm, float)) / np.asarray(radii_mm, float)) ** 2, axis=1) <= 1.0
    out = sitk.GetImageFromArray(inside.reshape(size[::-1]).astype(np.uint8))
    out.CopyInformation(reference)
    return out
