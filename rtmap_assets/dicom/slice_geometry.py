"""Slice geometry of an image series as real exports write it (rule 15), in small pure functions.

Real CT/MR exports are not perfect stacks: positions jitter by ~0.1 mm around a lattice, steps vary
(2.1-2.8 mm on a 2.5 mm series), and two slices may sit 0.07 mm apart. These functions classify the
true positions and say how to build a regular image from them; `readers.read_image_series` applies
them to planning CT, relapse CT and MR alike.

Conventions
- Orientation: ImageOrientationPatient (IOP) gives the row direction r and the column direction c
  (LPS, unit vectors, orthogonal within `ORTHOGONALITY_TOL`); the slice normal is n = r x c. Any
  orientation with such cosines is accepted: HFS/HFP/FFS/FFP and in-plane rotations only change
  the signs/rotation of r and c, and the SimpleITK direction matrix [r c n] carries them exactly.
  PatientPosition is informational and never used for geometry (IOP/IPP are authoritative in DICOM).
  Cosines that are not unit/orthogonal are refused (`SERIES_BAD_ORIENTATION`); slices whose IOP differ
  by more than `orientation_tol` are refused (`SERIES_MIXED_ORIENTATION`, with the angle).
- Position of a slice = ImagePositionPatient . n (mm). Slices are sorted by it, ascending (never by
  InstanceNumber or file name); the image's third axis points along +n.
- Tilt: consecutive slice origins must move along n. An in-plane offset larger than
  max(0.01 mm, tan(max_tilt_deg) x step) is a gantry tilt or sheared stack: `SERIES_GANTRY_TILT`
  with the measured angle (refused, never resampled: the slices would not be parallel to the grid).
- Duplicates: consecutive positions closer than `duplicate_tolerance_mm` are one position. When the
  slices' rescaled pixel values agree within `duplicate_max_difference` (0 = identical), the first
  (lowest) one is kept; otherwise `SERIES_DUPLICATE_POSITION` with the distance and the difference.
- Nominal step = median of the steps between the kept positions.
- Gap: a step above `max_step_ratio` x nominal (a missing slice gives 2x) is `SERIES_GAP`, with the
  step, the positions around it and the ratio.
- Jitter: all kept positions within `jitter_tolerance_mm` of their least-squares uniform lattice
  p_k = a + k s -> the slices are placed on that lattice (kind "uniform"/"jitter"; no resampling;
  position error <= the tolerance).
- Irregular: otherwise (steps within the limits) -> the stack is resampled onto a uniform lattice
  from the first to the last true position whose step is the one nearest the nominal (median) step
  that spans that extent exactly (extent / round(extent / median): within median / (2 N) of the
  median for N intervals, e.g. 2.49 instead of 2.5 mm; the median itself could leave up to one step
  at the end uncovered); each target slice is the linear interpolation of the two neighbouring true
  slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from rtmap_assets.config import SliceGeometry
from rtmap_assets.errors import PatientDataError

UNIFORM_TOL_MM = 0.005  # below this the lattice fit is exact (decimal rounding of IPP)
ORTHOGONALITY_TOL = 1e-3
MIN_TILT_OFFSET_MM = 0.01


@dataclass(frozen=True)
class SliceLayout:
    """How to build a regular stack from the sorted true positions.

    `kept` indexes the sorted input slices that are used (duplicates dropped). The target lattice is
    `origin_mm + k * step_mm`, k = 0..n_slices-1, along the normal.
    """

    kept: np.ndarray
    positions_mm: np.ndarray  # true positions of the kept slices
    origin_mm: float
    step_mm: float
    n_slices: int
    kind: Literal["uniform", "jitter", "irregular"]
    max_lattice_deviation_mm: float
    max_step_ratio: float
    dropped_duplicates: list[tuple[float, float]] = field(default_factory=list)  # (position, distance) mm

    @property
    def target_positions_mm(self) -> np.ndarray:
        return self.origin_mm + np.arange(self.n_slices) * self.step_mm

    @property
    def needs_resampling(self) -> bool:
        return self.kind == "irregular"


def normal_from_iop(iop: Sequence[float], file: str | None = None) -> np.ndarray:
    """3x3 [row, column, normal] direction matrix from IOP, refusing cosines that are not orthonormal."""
    v = np.asarray(iop, dtype=float)
    if v.shape != (6,) or not np.all(np.isfinite(v)):
        raise PatientDataError("series_bad_orientation", f"ImageOrientationPatient {list(v)} is not 6 numbers",
                               file=file)
    row, col = v[:3], v[3:]
    nr, nc, dot = float(np.linalg.norm(row)), float(np.linalg.norm(col)), float(row @ col)
    if abs(nr - 1) > ORTHOGONALITY_TOL or abs(nc - 1) > ORTHOGONALITY_TOL or abs(dot) > ORTHOGONALITY_TOL:
        raise PatientDataError("series_bad_orientation",
                               f"ImageOrientationPatient is not two orthogonal unit vectors: |row| = {nr:.4f}, "
                               f"|column| = {nc:.4f}, row.column = {dot:.4f}", file=file)
    row, col = row / nr, col / nc
    return np.column_stack([row, col, np.cross(row, col)])


def check_same_orientation(iops: np.ndarray, tol: float, files: Sequence[str] | None = None) -> None:
    """All slices share the first slice's IOP within `tol` (cosines), else `SERIES_MIXED_ORIENTATION`."""
    iops = np.asarray(iops, dtype=float)
    diff = np.max(np.abs(iops - iops[0]), axis=1)
    if np.any(diff > tol):
        i = int(np.argmax(diff))
        n0 = np.cross(iops[0, :3], iops[0, 3:])
        ni = np.cross(iops[i, :3], iops[i, 3:])
        cos = float(np.clip(n0 @ ni / (np.linalg.norm(n0) * np.linalg.norm(ni)), -1, 1))
        raise PatientDataError("series_mixed_orientation",
                               f"slices have different ImageOrientationPatient: cosines differ by up to "
                               f"{diff[i]:.4f}, normals {np.degrees(np.arccos(cos)):.2f} deg apart",
                               file=files[i] if files else None)


def check_not_tilted(ipp_sorted: np.ndarray, normal: np.ndarray, max_tilt_deg: float,
                     file: str | None = None) -> None:
    """Consecutive slice origins move along the normal, else `SERIES_GANTRY_TILT` (measured angle)."""
    offsets = np.diff(np.asarray(ipp_sorted, dtype=float), axis=0)
    along = offsets @ normal
    perpendicular = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
    limit = np.maximum(MIN_TILT_OFFSET_MM, np.tan(np.radians(max_tilt_deg)) * np.abs(along))
    if np.any(perpendicular > limit):
        i = int(np.argmax(perpendicular - limit))
        angle = float(np.degrees(np.arctan2(perpendicular[i], abs(along[i]))))
        raise PatientDataError("series_gantry_tilt",
                               f"slice origins move {perpendicular[i]:.3f} mm off the slice normal over a "
                               f"{abs(along[i]):.3f} mm step (tilt {angle:.2f} deg, limit {max_tilt_deg:g} deg): "
                               f"gantry tilt or sheared stack, refused rather than resampled", file=file)


def resolve_duplicates(positions_mm: np.ndarray, pixels: Sequence[np.ndarray] | None, cfg: SliceGeometry,
                       file: str | None = None) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Indices of sorted slices to keep, and the (position, distance) of each dropped duplicate.

    Consecutive positions closer than `cfg.duplicate_tolerance_mm` are one position; they are merged
    only when their pixel values agree within `cfg.duplicate_max_difference`.
    """
    p = np.asarray(positions_mm, dtype=float)
    keep = [0]
    dropped: list[tuple[float, float]] = []
    for i in range(1, len(p)):
        j = keep[-1]
        distance = float(p[i] - p[j])
        if distance >= max(cfg.duplicate_tolerance_mm, 1e-3):  # coincident positions are always duplicates
            keep.append(i)
            continue
        difference = (float(np.max(np.abs(np.asarray(pixels[i], np.float64) - np.asarray(pixels[j], np.float64))))
                      if pixels is not None and np.shape(pixels[i]) == np.shape(pixels[j]) else float("inf"))
        if difference > cfg.duplicate_max_difference:
            raise PatientDataError("series_duplicate_position",
                                   f"two slices {distance:.3f} mm apart (positions {p[j]:.3f} and {p[i]:.3f} mm, "
                                   f"duplicate below {cfg.duplicate_tolerance_mm:g} mm) have different content "
                                   f"(max pixel difference {difference:g}, allowed {cfg.duplicate_max_difference:g})",
                                   file=file)
        dropped.append((float(p[i]), distance))
    return np.asarray(keep, dtype=int), dropped


def fit_lattice(positions_mm: np.ndarray) -> tuple[float, float, float]:
    """Least-squares uniform lattice p_k = a + k s: (a, s, max |p_k - lattice_k|) in mm."""
    p = np.asarray(positions_mm, dtype=float)
    k = np.arange(len(p), dtype=float)
    s, a = np.polyfit(k, p, 1)
    return float(a), float(s), float(np.max(np.abs(p - (a + k * s))))


def check_no_gap(positions_mm: np.ndarray, nominal_mm: float, cfg: SliceGeometry, file: str | None = None) -> float:
    """Largest step / nominal step; a step above `cfg.max_step_ratio` x nominal is `SERIES_GAP`."""
    p = np.asarray(positions_mm, dtype=float)
    ratios = np.diff(p) / nominal_mm
    i = int(np.argmax(ratios))
    if ratios[i] > cfg.max_step_ratio:
        missing = int(round(ratios[i])) - 1
        raise PatientDataError("series_gap",
                               f"slice step {p[i + 1] - p[i]:.3f} mm between positions {p[i]:.3f} and {p[i + 1]:.3f} mm "
                               f"is {ratios[i]:.2f}x the nominal {nominal_mm:.3f} mm (limit {cfg.max_step_ratio:g}x): "
                               f"a gap of about {max(missing, 1)} missing slice(s)", file=file)
    return float(ratios[i])


def classify_positions(positions_mm: np.ndarray, cfg: SliceGeometry, pixels: Sequence[np.ndarray] | None = None,
                       file: str | None = None) -> SliceLayout:
    """Classify sorted true positions (mm along the normal) into a `SliceLayout`, or refuse (module docstring)."""
    p = np.asarray(positions_mm, dtype=float)
    if len(p) < 2:
        raise PatientDataError("series_too_few_slices", f"series has {len(p)} slice(s); need at least 2", file=file)
    if np.any(np.diff(p) < 0):
        raise ValueError("positions must be sorted ascending")
    kept, dropped = resolve_duplicates(p, pixels, cfg, file)
    q = p[kept]
    if len(q) < 2:
        raise PatientDataError("series_too_few_slices",
                               f"series has {len(q)} distinct slice position(s) after merging duplicates; need at "
                               f"least 2", file=file)
    nominal = float(np.median(np.diff(q)))
    ratio = check_no_gap(q, nominal, cfg, file)
    a, s, deviation = fit_lattice(q)
    if deviation <= max(cfg.jitter_tolerance_mm, UNIFORM_TOL_MM):
        kind: Literal["uniform", "jitter", "irregular"] = "uniform" if deviation <= UNIFORM_TOL_MM else "jitter"
        return SliceLayout(kept, q, a, s, len(q), kind, deviation, ratio, dropped)
    # The uniform step nearest the median that spans the true extent exactly, so the first and last
    # true slices stay in the image (the median itself could leave up to one step uncovered).
    intervals = max(1, int(round((q[-1] - q[0]) / nominal)))
    step = float((q[-1] - q[0]) / intervals)
    return SliceLayout(kept, q, float(q[0]), step, intervals + 1, "irregular", deviation, ratio, dropped)


def resample_along_normal(volume_zyx: np.ndarray, positions_mm: np.ndarray, targets_mm: np.ndarray) -> np.ndarray:
    """Slices at `targets_mm` by linear interpolation between the two neighbouring true slices.

    `volume_zyx[k]` lies at `positions_mm[k]` (ascending); targets must lie within the positions.
    """
    p = np.asarray(positions_mm, dtype=float)
    t = np.asarray(targets_mm, dtype=float)
    if t.min() < p[0] - 1e-6 or t.max() > p[-1] + 1e-6:
        raise ValueError("target positions outside the true slice positions")
    upper = np.clip(np.searchsorted(p, t, side="right"), 1, len(p) - 1)
    lower = upper - 1
    w = np.clip((t - p[lower]) / (p[upper] - p[lower]), 0.0, 1.0).astype(np.float32)
    out = np.empty((len(t), *volume_zyx.shape[1:]), dtype=np.float32)
    for k in range(len(t)):
        out[k] = (1 - w[k]) * volume_zyx[lower[k]] + w[k] * volume_zyx[upper[k]]
    return out
