"""The plan dose as the sum of the RTDOSE objects that make it up (rule 16; docs/DOSE_SUMMATION.md).

Two halves, one rule:

* `select_plan_doses(parts)` — which RTDOSE objects on the planning frame of reference are summed,
  from header facts only (`DosePart`). The manifest calls it on catalog rows; `read_plan_dose` calls
  it again on the files it is given, so the reader can never double count what the manifest would not.
* `read_plan_dose(paths)` — reads each file with `read_rtdose` (Gy = stored value x DoseGridScaling)
  and adds them on one common grid.

Selection rule (DICOM `DoseSummationType`, C.8.8.3):

* Totals: PLAN (one RT Plan) and MULTI_PLAN (several). Parts: BEAM (one or more beams of a plan),
  FRACTION (one fraction group of a plan, all its sessions) and BRACHY (one or more brachy
  application setups). A part's or total's *plan references* are the SOPInstanceUIDs in its
  ReferencedRTPlanSequence.
* A part is *covered* by a total when its plan references are non-empty and all among the total's;
  a PLAN total is covered by a MULTI_PLAN total whose references strictly include its own. Covered
  objects are not added again (the total already holds them); everything else is summed. So: a
  plan's BEAM files alone are summed; a PLAN total next to its own BEAM files is used alone; a main
  PLAN and a boost PLAN, each referencing its own RTPLAN, are summed.
* Refused, never guessed: `DoseUnits` RELATIVE (`RTDOSE_RELATIVE`: there is no Gy to add); session
  and control-point types FRACTION_SESSION, BEAM_SESSION, BRACHY_SESSION, CONTROL_POINT, RECORD
  (`RTDOSE_SUMMATION_TYPE`: the number of sessions is in the RTPLAN, which rtmap does not read); a
  missing DoseSummationType when there is more than one object (`RTDOSE_SUMMATION_TYPE`: a total
  cannot be told from a part); two totals with the same plan references, or a total beside a part or
  total without plan references (`AMBIGUOUS_RTDOSE`: the same plan twice, or unknown whether one is
  inside the other); objects on another frame of reference (`RTDOSE_OTHER_FRAME`); grids with
  different orientations (`RTDOSE_GRID_MISALIGNED`).
* A single RTDOSE object is the plan dose whatever its (non-session) DoseSummationType.

Common grid: the orientation and voxel spacing of the first file given (the manifest lists the
summed files in path order), extended by whole voxels of that lattice to the union of all parts'
extents. A part on the same lattice (same spacing, origin offset by whole voxels) is added voxel for
voxel, unchanged; any other part is resampled by trilinear interpolation. Outside its own grid a part
adds 0 Gy (a TPS writes no dose where it computed none).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from rtmap_assets.dicom.readers import read_rtdose
from rtmap_assets.errors import PatientDataError

log = logging.getLogger(__name__)

TOTAL_TYPES = ("PLAN", "MULTI_PLAN")
PART_TYPES = ("BEAM", "FRACTION", "BRACHY")
SESSION_TYPES = ("FRACTION_SESSION", "BEAM_SESSION", "BRACHY_SESSION", "CONTROL_POINT", "RECORD")
_ORIENTATION_TOL = 1e-3  # direction cosines
_LATTICE_TOL_VOXELS = 1e-3


@dataclass(frozen=True)
class DosePart:
    """Header facts of one RTDOSE object, enough to decide whether it is summed."""

    path: str
    summation_type: str | None  # DoseSummationType, upper case
    units: str | None  # DoseUnits, upper case
    frame_of_reference_uid: str | None
    plan_uids: frozenset[str]  # ReferencedRTPlanSequence SOPInstanceUIDs
    orientation: tuple[float, ...] | None = None  # ImageOrientationPatient

    def describe(self) -> str:
        plans = ",".join(sorted(self.plan_uids)) or "none"
        return f"{self.path} ({self.summation_type or 'no DoseSummationType'}, RTPLAN {plans})"


@dataclass(frozen=True)
class DoseSelection:
    summed: list[DosePart]  # in the order given
    covered: list[tuple[DosePart, DosePart]]  # (left out, the total that already holds it)

    def reason(self, for_uid: str | None) -> str:
        """Which files were summed and why, for the manifest."""
        kinds = sorted({p.summation_type or "untyped" for p in self.summed})
        if len(self.summed) == 1:
            text = f"the single plan dose on the planning frame of reference {for_uid}: {self.summed[0].describe()}"
        else:
            text = (f"sum of {len(self.summed)} RTDOSE objects ({'+'.join(kinds)}) on the planning frame of "
                    f"reference {for_uid}: " + "; ".join(p.describe() for p in self.summed))
        if self.covered:
            text += ("; not added again, already in a plan total: "
                     + "; ".join(f"{p.path} (in {t.path})" for p, t in self.covered))
        return text


def _covers(total: DosePart, other: DosePart) -> bool:
    if total is other or (total.summation_type or "") not in TOTAL_TYPES or not other.plan_uids:
        return False
    if (other.summation_type or "") in TOTAL_TYPES:
        return other.plan_uids < total.plan_uids  # a PLAN inside a MULTI_PLAN
    return other.plan_uids <= total.plan_uids


def select_plan_doses(parts: Sequence[DosePart], planning_for_uid: str | None = None) -> DoseSelection:
    """The RTDOSE objects to sum into the plan dose (module docstring), or a `PatientDataError`."""
    if not parts:
        raise PatientDataError("NO_RTDOSE", "no RTDOSE object to sum")
    first = parts[0].path
    for p in parts:
        if (p.units or "GY") == "RELATIVE":
            raise PatientDataError(
                "RTDOSE_RELATIVE",
                f"{p.path} has DoseUnits RELATIVE (dose relative to a normalisation point, not Gy); "
                "rtmap sums and thresholds absolute dose only", file=p.path)
        if (p.units or "GY") != "GY":
            raise PatientDataError("RTDOSE_UNITS", f"{p.path} has DoseUnits {p.units!r}, not GY", file=p.path)
        if (p.summation_type or "") in SESSION_TYPES:
            raise PatientDataError(
                "RTDOSE_SUMMATION_TYPE",
                f"{p.path} has DoseSummationType {p.summation_type}, a single session's or control point's "
                "dose; the number of sessions is in the RTPLAN, which rtmap does not read", file=p.path)
    ref_for = planning_for_uid or parts[0].frame_of_reference_uid
    other = [p for p in parts if p.frame_of_reference_uid != ref_for]
    if other:
        raise PatientDataError(
            "RTDOSE_OTHER_FRAME",
            f"{len(other)} RTDOSE object(s) are not on the planning frame of reference {ref_for}: "
            + "; ".join(f"{p.path} on {p.frame_of_reference_uid or 'no FoR'}" for p in other)
            + "; a dose on another frame cannot be added without a registration", file=other[0].path)
    _check_orientations(parts)
    if len(parts) == 1:
        return DoseSelection(list(parts), [])

    unknown = [p for p in parts if (p.summation_type or "") not in TOTAL_TYPES + PART_TYPES]
    if unknown:
        raise PatientDataError(
            "RTDOSE_SUMMATION_TYPE",
            f"{len(parts)} RTDOSE objects on the planning frame of reference, and "
            + "; ".join(p.describe() for p in unknown)
            + f" cannot be told a total from a part (known: {', '.join(TOTAL_TYPES + PART_TYPES)})", file=first)
    totals = [p for p in parts if p.summation_type in TOTAL_TYPES]
    for i, a in enumerate(totals):
        for b in totals[i + 1:]:
            if a.plan_uids and a.plan_uids == b.plan_uids:
                raise PatientDataError(
                    "AMBIGUOUS_RTDOSE",
                    f"two dose totals for the same RTPLAN: {a.describe()} and {b.describe()} "
                    "(a recalculation or a second export?)", file=a.path)
    if totals:
        unreferenced = [p for p in parts if not p.plan_uids]
        if unreferenced:
            raise PatientDataError(
                "AMBIGUOUS_RTDOSE",
                f"{len(parts)} RTDOSE objects including the total(s) "
                + "; ".join(t.describe() for t in totals)
                + ", and " + "; ".join(p.describe() for p in unreferenced)
                + " reference(s) no RTPLAN, so whether it is already inside a total cannot be told", file=first)
    summed: list[DosePart] = []
    covered: list[tuple[DosePart, DosePart]] = []
    for p in parts:
        holder = next((t for t in totals if _covers(t, p)), None)
        if holder is None:
            summed.append(p)
        else:
            covered.append((p, holder))
    return DoseSelection(summed, covered)


def _check_orientations(parts: Sequence[DosePart]) -> None:
    ref = next((p for p in parts if p.orientation), None)
    if ref is None:
        return
    for p in parts:
        if p.orientation and np.max(np.abs(np.subtract(p.orientation, ref.orientation))) > _ORIENTATION_TOL:
            raise PatientDataError(
                "RTDOSE_GRID_MISALIGNED",
                f"dose grids to be summed have different orientations: {ref.path} "
                f"{list(ref.orientation)} and {p.path} {list(p.orientation)}", file=p.path)


def part_from_dataset(path: str, ds: pydicom.Dataset) -> DosePart:
    """`DosePart` of an RTDOSE read with pydicom (the reader's own check of the manifest's choice)."""
    plans = frozenset(str(item.ReferencedSOPInstanceUID) for item in getattr(ds, "ReferencedRTPlanSequence", [])
                      if getattr(item, "ReferencedSOPInstanceUID", None))
    iop = getattr(ds, "ImageOrientationPatient", None)
    summation = str(getattr(ds, "DoseSummationType", "") or "").strip().upper() or None
    units = str(getattr(ds, "DoseUnits", "") or "").strip().upper() or None
    for_uid = str(getattr(ds, "FrameOfReferenceUID", "") or "") or None
    return DosePart(path, summation, units, for_uid, plans,
                    tuple(float(v) for v in iop) if iop is not None else None)


# ---------------------------------------------------------------------------------------------- summing


def _index_of(grid: sitk.Image, point: np.ndarray) -> np.ndarray:
    return np.asarray(grid.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in point)))


def common_grid(images: Sequence[sitk.Image]) -> sitk.Image:
    """Zero float32 image: the first image's orientation and spacing, covering every image's extent."""
    first = images[0]
    lo = np.zeros(3)
    hi = np.asarray(first.GetSize(), dtype=float) - 1
    for img in images[1:]:
        size = np.asarray(img.GetSize()) - 1
        for corner in np.array(np.meshgrid(*[[0, s] for s in size], indexing="ij")).reshape(3, -1).T:
            idx = _index_of(first, np.asarray(img.TransformContinuousIndexToPhysicalPoint(tuple(map(float, corner)))))
            lo = np.minimum(lo, idx)
            hi = np.maximum(hi, idx)
    lo = np.floor(lo + _LATTICE_TOL_VOXELS)
    hi = np.ceil(hi - _LATTICE_TOL_VOXELS)
    size = (hi - lo + 1).astype(int)
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing(first.GetSpacing())
    grid.SetDirection(first.GetDirection())
    grid.SetOrigin(first.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in lo)))
    return grid


def _lattice_offset(grid: sitk.Image, img: sitk.Image) -> tuple[int, int, int] | None:
    """Index of `img`'s first voxel in `grid` when `img` lies on `grid`'s lattice, else None."""
    if not np.allclose(grid.GetSpacing(), img.GetSpacing(), rtol=0, atol=1e-4):
        return None
    if not np.allclose(grid.GetDirection(), img.GetDirection(), atol=1e-6):
        return None
    idx = _index_of(grid, np.asarray(img.GetOrigin()))
    if np.max(np.abs(idx - np.round(idx))) > _LATTICE_TOL_VOXELS:
        return None
    return tuple(int(v) for v in np.round(idx))  # type: ignore[return-value]


def sum_on_common_grid(images: Sequence[sitk.Image]) -> sitk.Image:
    """Sum of dose images (Gy) on `common_grid(images)`; 0 Gy outside each image's own grid."""
    grid = common_grid(images)
    total = np.zeros(sitk.GetArrayViewFromImage(grid).shape, dtype=np.float64)
    for img in images:
        offset = _lattice_offset(grid, img)
        if offset is not None:
            i, j, k = offset
            nx, ny, nz = img.GetSize()
            total[k:k + nz, j:j + ny, i:i + nx] += sitk.GetArrayViewFromImage(img)
        else:
            res = sitk.Resample(img, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            total += sitk.GetArrayViewFromImage(res)
    out = sitk.GetImageFromArray(total.astype(np.float32))
    out.CopyInformation(grid)
    return out


def read_plan_dose(paths: Sequence[str | Path], planning_for_uid: str | None = None) -> sitk.Image:
    """The plan dose in Gy: the RTDOSE files `paths` (as listed by the manifest's planning_rtdose row)
    summed on a common grid. Refuses (PatientDataError) relative dose, other frames of reference,
    misaligned grids and a set that holds a plan total together with a part of it."""
    files = [str(p) for p in paths]
    if not files:
        raise PatientDataError("NO_RTDOSE", "no RTDOSE file given")
    parts = [part_from_dataset(f, pydicom.dcmread(f, stop_before_pixels=True)) for f in files]
    selection = select_plan_doses(parts, planning_for_uid)
    if selection.covered:
        p, t = selection.covered[0]
        raise PatientDataError(
            "RTDOSE_DOUBLE_COUNT",
            f"{p.describe()} is part of the plan total {t.describe()}; adding both would count it twice",
            file=p.path)
    images = [read_rtdose(p.path) for p in selection.summed]
    if len(images) == 1:
        return images[0]
    log.info("plan dose: summing %d RTDOSE objects", len(images))
    return sum_on_common_grid(images)
