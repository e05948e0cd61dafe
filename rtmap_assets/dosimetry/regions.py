"""Geometry on the working grid: centroids, the uncertainty sphere, isodose regions (rules 6–7).

Conventions (docs/DOSIMETRY.md):
- Points are LPS mm; grids are SimpleITK images (numpy arrays from them are indexed [z, y, x]).
- Voxel-centre occupancy: a voxel belongs to a sphere when its centre lies within the radius.
- The sphere is enumerated on the grid's lattice *extended beyond the image*: lattice voxels that
  fall outside the image are counted (`n_outside_grid`) and treated as dose 0, exactly like the
  zero-filled dose outside the RTDOSE extent. A sphere crossing the grid edge is therefore not
  silently shrunk: its outside part counts as "not in the isodose".
- Isodose region of a level with prescription P > 0: dose ≥ isodose_fraction · P. Absent levels
  (P = 0) have no region.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from rtmap_assets.errors import PatientDataError


def index_to_physical_matrix(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(A, origin) with physical = origin + A @ index, index in (x, y, z) order."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    return direction @ np.diag(spacing), np.asarray(image.GetOrigin(), dtype=float)


def physical_to_continuous_index(image: sitk.Image, points_mm: np.ndarray) -> np.ndarray:
    """Continuous (x, y, z) indices of points (N, 3) in mm; vectorised TransformPhysicalPointToContinuousIndex."""
    a, origin = index_to_physical_matrix(image)
    pts = np.atleast_2d(np.asarray(points_mm, dtype=float))
    return np.linalg.solve(a, (pts - origin).T).T


def mask_array(mask: sitk.Image) -> np.ndarray:
    """Boolean [z, y, x] array of a 0/1 mask."""
    return sitk.GetArrayViewFromImage(mask) > 0


def mask_centroid_mm(mask: sitk.Image) -> np.ndarray | None:
    """Mean of the occupied voxel centres in mm (LPS); None for an empty mask."""
    zyx = np.argwhere(mask_array(mask))
    if zyx.size == 0:
        return None
    a, origin = index_to_physical_matrix(mask)
    return origin + a @ zyx[:, ::-1].mean(axis=0)


def voxel_volume_cc(image: sitk.Image) -> float:
    a, _ = index_to_physical_matrix(image)
    return float(abs(np.linalg.det(a))) / 1000.0


def point_in_mask(mask: sitk.Image, point_mm: np.ndarray) -> bool:
    """Whether the voxel that contains the point (nearest voxel centre) is in the mask; False off-grid."""
    idx = np.rint(physical_to_continuous_index(mask, point_mm)[0]).astype(int)
    size = np.asarray(mask.GetSize())
    if np.any(idx < 0) or np.any(idx >= size):
        return False
    return bool(mask_array(mask)[idx[2], idx[1], idx[0]])


@dataclass(frozen=True)
class Sphere:
    """A sphere sampled on a grid's lattice (voxel-centre occupancy)."""

    centre_mm: tuple[float, float, float]
    radius_mm: float
    mask: sitk.Image  # uint8, on the reference grid: lattice voxels inside the image
    n_voxels: int  # all lattice voxels whose centre is within the radius (inside + outside the image)
    n_outside_grid: int  # of those, voxels beyond the image edge (dose 0 by convention)

    @property
    def n_inside_grid(self) -> int:
        return self.n_voxels - self.n_outside_grid

    @property
    def volume_cc(self) -> float:
        return self.n_voxels * voxel_volume_cc(self.mask)


def sphere(reference: sitk.Image, centre_mm: np.ndarray | tuple[float, float, float], radius_mm: float) -> Sphere:
    """Sphere of `radius_mm` around `centre_mm` on the lattice of `reference`.

    Only the sphere's bounding box in index space is enumerated (a clinical grid has ~10^7 voxels).
    """
    if not radius_mm > 0:
        raise ValueError(f"sphere radius must be > 0 mm, got {radius_mm}")
    a, origin = index_to_physical_matrix(reference)
    centre = np.asarray(centre_mm, dtype=float)
    c_idx = physical_to_continuous_index(reference, centre)[0]
    # Half-extent in index units along each axis: |A^-1| row norms bound the index change per mm.
    half = radius_mm * np.linalg.norm(np.linalg.inv(a), axis=1)
    lo = np.floor(c_idx - half).astype(int)
    hi = np.ceil(c_idx + half).astype(int)
    ix, iy, iz = (np.arange(lo[k], hi[k] + 1) for k in range(3))
    gx, gy, gz = np.meshgrid(ix, iy, iz, indexing="ij")
    idx = np.stack([gx.ravel(), gy.ravel(), gz.ravel()], axis=1)
    pts = origin + idx @ a.T
    inside = np.sum((pts - centre) ** 2, axis=1) <= radius_mm**2
    idx = idx[inside]
    size = np.asarray(reference.GetSize())
    in_grid = np.all((idx >= 0) & (idx < size), axis=1)
    arr = np.zeros(tuple(size[::-1]), dtype=np.uint8)
    g = idx[in_grid]
    arr[g[:, 2], g[:, 1], g[:, 0]] = 1
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(reference)
    return Sphere(
        centre_mm=tuple(float(v) for v in centre),
        radius_mm=float(radius_mm),
        mask=mask,
        n_voxels=int(idx.shape[0]),
        n_outside_grid=int((~in_grid).sum()),
    )


def isodose_threshold(prescription_gy: float, fraction: float) -> float | None:
    """Dose threshold of a level's isodose region; None for an absent level (P = 0)."""
    return fraction * prescription_gy if prescription_gy > 0 else None


def isodose_region(dose: sitk.Image, prescription_gy: float, fraction: float) -> sitk.Image | None:
    """uint8 mask of dose ≥ fraction·P on the dose grid; None when the level is absent (P = 0)."""
    thr = isodose_threshold(prescription_gy, fraction)
    if thr is None:
        return None
    arr = (sitk.GetArrayViewFromImage(dose) >= thr).astype(np.uint8)
    region = sitk.GetImageFromArray(arr)
    region.CopyInformation(dose)
    return region


def isodose_regions(dose: sitk.Image, prescriptions: Mapping[str, float], fraction: float) -> dict[str, sitk.Image | None]:
    """Level -> isodose region (None for absent levels)."""
    return {level: isodose_region(dose, p, fraction) for level, p in prescriptions.items()}


def dose_support_mask(native_dose: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """uint8 mask of `reference` voxels whose centre lies within the native RTDOSE grid's voxels.

    The dose resampled onto the working grid is 0 beyond the RTDOSE extent; this mask says where
    that 0 means "not computed" rather than "no dose" (for PatientVolumes.dose_support). Computed
    one reference slice at a time to keep memory flat on clinical grids.
    """
    a_ref, o_ref = index_to_physical_matrix(reference)
    a_nat, o_nat = index_to_physical_matrix(native_dose)
    to_native = np.linalg.solve(a_nat, a_ref)  # reference index -> native continuous index (linear part)
    offset = np.linalg.solve(a_nat, o_ref - o_nat)
    nx, ny, nz = reference.GetSize()
    hi = np.asarray(native_dose.GetSize(), dtype=float) - 0.5
    ii, jj = np.meshgrid(np.arange(nx), np.arange(ny), indexing="xy")  # (ny, nx)
    plane = np.stack([ii.ravel(), jj.ravel(), np.zeros(ii.size)], axis=1) @ to_native.T + offset
    out = np.zeros((nz, ny, nx), dtype=np.uint8)
    for k in range(nz):
        idx = plane + k * to_native[:, 2]
        out[k] = np.all((idx >= -0.5) & (idx <= hi), axis=1).reshape(ny, nx)
    mask = sitk.GetImageFromArray(out)
    mask.CopyInformation(reference)
    return mask


def recurrence_centroid(mask: sitk.Image, structure_name: str) -> np.ndarray:
    """Centroid of the mapped recurrence; an empty mapped recurrence is a patient data error."""
    c = mask_centroid_mm(mask)
    if c is None:
        raise PatientDataError(
            "empty_recurrence",
            f"mapped recurrence '{structure_name}' has no voxels on the planning grid "
            "(drawn outside the registered field of view, or lost in mapping)",
            stage="dosimetry",
        )
    return c
