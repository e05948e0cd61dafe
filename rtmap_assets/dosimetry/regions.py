"""Geometry on the working grid: centroids, the uncertainty sphere, isodose regions (rules 6–7).

Conventions (docs/DOSIMETRY.md):
- Points are LPS mm; grids are SimpleITK images (numpy arrays from them are indexed [z, y, x]).
- The sphere's *dose fraction* (rule 10) is sub-voxel: a fixed set of `SPHERE_SAMPLES` points
  filling the ball uniformly (`unit_ball_points`, scaled by the radius), each with the trilinear dose
  at the point and an equal share of the ball's volume. Any radius is meaningful, also below one
  voxel (0 gives the centre point alone).
- The sphere's *mask* (overlay, `sphere_voxels_outside_dose_grid`) stays voxel-based: a voxel
  belongs to it when its centre lies within the radius. It is enumerated on the grid's lattice
  *extended beyond the image*: lattice voxels outside the image are counted (`n_outside_grid`).
  Points and voxels beyond the grid edge have dose 0, like the zero-filled dose outside the RTDOSE
  extent, so a sphere crossing the grid edge is not silently shrunk.
- Isodose region of a level with prescription P > 0: dose ≥ isodose_fraction · P. Absent levels
  (P = 0) have no region.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

import numpy as np
import SimpleITK as sitk

from rtmap_assets.errors import PatientDataError
from rtmap_assets.imaging.mapping import mask_centroid_mm  # the one definition (imaging stage)


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


def voxel_volume_cc(image: sitk.Image) -> float:
    a, _ = index_to_physical_matrix(image)
    return float(abs(np.linalg.det(a))) / 1000.0


def point_in_mask(mask: sitk.Image, point_mm: np.ndarray) -> bool:
    """Whether the voxel that contains the point (nearest voxel centre) is in the mask; False off-grid."""
    return bool(points_in_mask(mask, np.atleast_2d(np.asarray(point_mm, dtype=float)))[0])


def points_in_mask(mask: sitk.Image, points_mm: np.ndarray) -> np.ndarray:
    """`point_in_mask` for (N, 3) points at once."""
    idx = np.rint(physical_to_continuous_index(mask, points_mm)).astype(int)
    size = np.asarray(mask.GetSize())
    ok = np.all((idx >= 0) & (idx < size), axis=1)
    out = np.zeros(len(idx), dtype=bool)
    g = idx[ok]
    out[ok] = mask_array(mask)[g[:, 2], g[:, 1], g[:, 0]]
    return out


# Sub-voxel sampling of the sphere (rule 10). An unscrambled (deterministic) Sobol sequence of 2^14
# points in the cube, kept inside the unit ball (8571) and mirrored through the centre (x and -x, so
# the set's centroid is exactly the centre): 17142 points. Measured against the exact cap fraction of
# a plane cutting the ball (203 plane orientations, 401 offsets each), the fraction's error is at most
# 0.0026 (measured 0.00251; a cubic lattice of the same size: 0.023, it moves by whole layers); see
# rtmap_assets_tests/test_dosimetry_regions.py and docs/DOSIMETRY.md.
SPHERE_SAMPLES_LOG2 = 14


# Sobol's construction for the first three dimensions (Joe & Kuo's direction numbers, the ones scipy.stats.qmc
# uses): (primitive polynomial degree s, its inner coefficient bits a, initial m_1..m_s); dimension 0 is
# van der Corput's sequence. Written out here because importing scipy.stats costs ~0.5 s in every process.
_SOBOL_3D = ((0, 0, ()), (1, 0, (1,)), (2, 1, (1, 3)))
_SOBOL_BITS = 30


def sobol_points_3d(log2_n: int) -> np.ndarray:
    """The first 2^log2_n points of the unscrambled 3-D Sobol sequence in [0, 1)^3, in Gray-code order
    (the same points, in the same order, as `scipy.stats.qmc.Sobol(3, scramble=False).random_base2`)."""
    bits = _SOBOL_BITS
    v = np.zeros((3, bits), dtype=np.uint64)
    for d, (s, a, m_init) in enumerate(_SOBOL_3D):
        m = [1] * bits if s == 0 else list(m_init)
        for k in range(len(m), bits):  # m_k = m_{k-s} ^ (m_{k-s} << s) ^ the polynomial's inner terms
            new = m[k - s] ^ (m[k - s] << s)
            for i in range(1, s):
                if (a >> (s - 1 - i)) & 1:
                    new ^= m[k - i] << i
            m.append(new)
        v[d] = [m[k] << (bits - 1 - k) for k in range(bits)]
    i = np.arange(1 << log2_n, dtype=np.uint64)
    gray = i ^ (i >> np.uint64(1))  # point i = XOR of the direction numbers of gray(i)'s set bits
    x = np.zeros((len(i), 3), dtype=np.uint64)
    for b in range(log2_n):
        on = ((gray >> np.uint64(b)) & np.uint64(1)).astype(bool)
        x[on] ^= v[:, b]
    return x.astype(float) / float(1 << bits)


@cache
def unit_ball_points() -> np.ndarray:
    """(N, 3) points filling the unit ball uniformly (read-only; N = SPHERE_SAMPLES)."""
    u = sobol_points_3d(SPHERE_SAMPLES_LOG2) * 2.0 - 1.0
    u = u[np.einsum("ij,ij->i", u, u) <= 1.0]
    pts = np.vstack([u, -u])
    pts.setflags(write=False)
    return pts


def __getattr__(name: str):
    # SPHERE_SAMPLES on first use, not at import: the imaging step imports this module for dose_support_mask
    # only and need not compute the points.
    if name == "SPHERE_SAMPLES":
        return int(unit_ball_points().shape[0])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def sphere_sample_points(centre_mm: np.ndarray | tuple[float, float, float], radius_mm: float) -> np.ndarray:
    """The sub-voxel sample points (mm) of a sphere; each stands for 1/N of its volume."""
    if not radius_mm >= 0:
        raise ValueError(f"sphere radius must be >= 0 mm, got {radius_mm}")
    return np.asarray(centre_mm, dtype=float) + float(radius_mm) * unit_ball_points()


@dataclass(frozen=True)
class Sphere:
    """A sphere: its centre and radius (the sub-voxel dose fraction uses these), and its voxel mask on
    a grid's lattice (voxel-centre occupancy, for the overlay and the voxel counts)."""

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
        """Voxel-count volume of the mask (incl. beyond the grid)."""
        return self.n_voxels * voxel_volume_cc(self.mask)

    @property
    def exact_volume_cc(self) -> float:
        """4/3 π r³: the volume the sub-voxel samples share."""
        return 4.0 / 3.0 * np.pi * self.radius_mm**3 / 1000.0

    def sample_points(self) -> np.ndarray:
        return sphere_sample_points(self.centre_mm, self.radius_mm)


def sphere(reference: sitk.Image, centre_mm: np.ndarray | tuple[float, float, float], radius_mm: float) -> Sphere:
    """Sphere of `radius_mm` around `centre_mm` on the lattice of `reference`.

    Only the sphere's bounding box in index space is enumerated (a clinical grid has ~10^7 voxels).
    """
    if not radius_mm >= 0:
        raise ValueError(f"sphere radius must be >= 0 mm, got {radius_mm}")
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
