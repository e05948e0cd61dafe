"""DICOM readers: image series -> SimpleITK image, RTSTRUCT -> contours -> masks, RTDOSE -> Gy image.

All geometry is DICOM patient coordinates (LPS, mm), which is also SimpleITK's physical space.

Conventions (tested in `rtmap_assets_tests/test_readers_*.py`):
- Image series are sorted by position along the slice normal (not by InstanceNumber or file name).
  Any consistent orientation is accepted (axial, sagittal, coronal, oblique): the SimpleITK direction
  matrix carries it, so resampling is exact. Refused with a `PatientDataError` instead of guessed:
  mixed orientations (`series_mixed_orientation`), gantry tilt / sheared stacks where the slice
  positions do not move along the normal (`series_gantry_tilt`), duplicated positions
  (`series_duplicate_slice`), non-uniform slice spacing such as a missing slice
  (`series_nonuniform_spacing`), fewer than two slices (`series_too_few_slices`), differing
  rows/columns/pixel spacing (`series_inconsistent_geometry`).
- Pixel values are float32 after each slice's own RescaleSlope/RescaleIntercept (HU for CT).
- Rasterisation: a voxel belongs to a structure when its centre lies inside the contour polygon
  (skimage.draw.polygon on the target grid). Several contours on one contour plane are combined by
  even-odd (XOR) so an inner contour is a hole, the usual DICOM-RT convention. Each contour plane
  stands for a slab one contour-plane spacing thick: a target slice whose centre lies within the
  structure's z extent (first plane - half spacing .. last plane + half spacing) takes the nearest
  contour plane, and a structure thinner than the slice spacing lands on its nearest slice. So
  contours on planes between target slices go to the nearest slice, and a target grid coarser than
  the contour spacing takes one plane per slice instead of XOR-ing neighbouring planes together.
- RTDOSE: Gy = stored value x DoseGridScaling (uint16 or uint32 frames); DoseUnits RELATIVE is refused
  (`RTDOSE_RELATIVE`). GridFrameOffsetVector may be relative (first value 0, offsets along the normal
  from ImagePositionPatient) or absolute (first value equal to the z of ImagePositionPatient, only
  allowed for axial grids); other forms or non-uniform offsets are refused. Several RTDOSE objects
  of one plan are summed by `dose_sum.read_plan_dose` (rule 16).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from skimage.draw import polygon as draw_polygon

from rtmap_assets.errors import PatientDataError

log = logging.getLogger(__name__)

_ORIENTATION_TOL = 1e-3  # direction cosines
_SPACING_REL_TOL = 0.01  # 1 % of the slice spacing
_SPACING_ABS_TOL_MM = 0.01


def _direction_from_iop(iop: Sequence[float]) -> np.ndarray:
    """3x3 matrix whose columns are the row direction, column direction and slice normal."""
    row = np.asarray(iop[:3], dtype=float)
    col = np.asarray(iop[3:6], dtype=float)
    row /= np.linalg.norm(row)
    col /= np.linalg.norm(col)
    normal = np.cross(row, col)
    return np.column_stack([row, col, normal])


def _uniform_step(positions: np.ndarray, what: str, file: str | None) -> float:
    """The common step of sorted positions along the normal, or a `PatientDataError`."""
    steps = np.diff(positions)
    if np.any(np.abs(steps) < _SPACING_ABS_TOL_MM):
        raise PatientDataError("series_duplicate_slice", f"{what}: two slices share one position", file=file)
    median = float(np.median(steps))
    tol = max(_SPACING_ABS_TOL_MM, _SPACING_REL_TOL * abs(median))
    bad = np.abs(steps - median) > tol
    if np.any(bad):
        i = int(np.argmax(bad))
        raise PatientDataError(
            "series_nonuniform_spacing",
            f"{what}: slice spacing {steps[i]:.3f} mm between positions {positions[i]:.3f} and "
            f"{positions[i + 1]:.3f} differs from the usual {median:.3f} mm (missing slice?)",
            file=file,
        )
    return float(np.mean(steps))


def read_image_series(paths: Iterable[str | Path]) -> sitk.Image:
    """A CT or MR series (one file per slice) as a float32 SimpleITK image, rescaled (HU for CT)."""
    files = [str(p) for p in paths]
    if len(files) < 2:
        raise PatientDataError("series_too_few_slices", f"series has {len(files)} slice(s); need at least 2",
                               file=files[0] if files else None)
    slices = [pydicom.dcmread(f) for f in files]
    first = slices[0]
    if getattr(first, "NumberOfFrames", 1) not in (None, 1, "1", ""):
        raise PatientDataError("series_multiframe", "multi-frame (enhanced) image objects are not supported",
                               file=files[0])
    iop0 = np.asarray(first.ImageOrientationPatient, dtype=float)
    direction = _direction_from_iop(iop0)
    normal = direction[:, 2]
    rows, cols = int(first.Rows), int(first.Columns)
    pix = np.asarray(first.PixelSpacing, dtype=float)  # [row spacing (between rows), column spacing]
    for f, ds in zip(files, slices):
        if np.max(np.abs(np.asarray(ds.ImageOrientationPatient, dtype=float) - iop0)) > _ORIENTATION_TOL:
            raise PatientDataError("series_mixed_orientation", "slices have different ImageOrientationPatient",
                                   file=f)
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols) or np.max(
                np.abs(np.asarray(ds.PixelSpacing, dtype=float) - pix)) > 1e-4:
            raise PatientDataError("series_inconsistent_geometry", "slices differ in size or pixel spacing", file=f)
    ipp = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for ds in slices])
    along = ipp @ normal
    order = np.argsort(along)
    ipp, along = ipp[order], along[order]
    slices = [slices[i] for i in order]
    files = [files[i] for i in order]
    step = _uniform_step(along, "image series", files[0])
    # Gantry tilt (or a sheared stack): consecutive origins move off the normal.
    offsets = np.diff(ipp, axis=0)
    perpendicular = offsets - np.outer(offsets @ normal, normal)
    if np.max(np.linalg.norm(perpendicular, axis=1)) > max(0.01, 0.01 * step):
        raise PatientDataError("series_gantry_tilt",
                               "slice origins do not move along the slice normal (gantry tilt or sheared stack); "
                               "refusing rather than resampling", file=files[0])
    volume = np.empty((len(slices), rows, cols), dtype=np.float32)
    for k, ds in enumerate(slices):
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        volume[k] = ds.pixel_array.astype(np.float32) * slope + intercept
    image = sitk.GetImageFromArray(volume)
    image.SetOrigin(tuple(ipp[0]))
    image.SetSpacing((float(pix[1]), float(pix[0]), step))
    image.SetDirection(tuple(direction.flatten()))
    return image


# ---------------------------------------------------------------------------------------------- RTSTRUCT


@dataclass
class RTStruct:
    """Structures of one RTSTRUCT: name -> list of closed planar contours, each an (N, 3) array in mm."""

    frame_of_reference_uid: str | None
    contours: dict[str, list[np.ndarray]] = field(default_factory=dict)
    referenced_series_uid: str | None = None

    @property
    def names(self) -> list[str]:
        return list(self.contours)


def read_rtstruct(path: str | Path) -> RTStruct:
    """Structure names and their CLOSED_PLANAR contours (POINT/OPEN contours are skipped)."""
    ds = pydicom.dcmread(str(path))
    if getattr(ds, "Modality", "") != "RTSTRUCT":
        raise PatientDataError("rtstruct_not_rtstruct", f"modality is {getattr(ds, 'Modality', None)!r}",
                               file=str(path))
    number_to_name: dict[int, str] = {}
    for roi in getattr(ds, "StructureSetROISequence", []):
        number_to_name[int(roi.ROINumber)] = str(roi.ROIName)
    contours: dict[str, list[np.ndarray]] = {name: [] for name in number_to_name.values()}
    for roi_contour in getattr(ds, "ROIContourSequence", []):
        name = number_to_name.get(int(roi_contour.ReferencedROINumber))
        if name is None:
            log.warning("%s: ROIContour references unknown ROI %s", path, roi_contour.ReferencedROINumber)
            continue
        for c in getattr(roi_contour, "ContourSequence", []):
            if str(getattr(c, "ContourGeometricType", "CLOSED_PLANAR")).upper() != "CLOSED_PLANAR":
                continue
            pts = np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
            if len(pts) >= 3:
                contours[name].append(pts)
    frame = None
    ref_series = None
    for fr in getattr(ds, "ReferencedFrameOfReferenceSequence", []):
        frame = str(fr.FrameOfReferenceUID)
        for study in getattr(fr, "RTReferencedStudySequence", []):
            for series in getattr(study, "RTReferencedSeriesSequence", []):
                ref_series = str(series.SeriesInstanceUID)
    if frame is None and hasattr(ds, "FrameOfReferenceUID"):
        frame = str(ds.FrameOfReferenceUID)
    return RTStruct(frame_of_reference_uid=frame, contours=contours, referenced_series_uid=ref_series)


def _contours_of(source: RTStruct | Sequence[np.ndarray], name: str | None) -> list[np.ndarray]:
    if isinstance(source, RTStruct):
        if name not in source.contours:
            raise PatientDataError("rtstruct_missing_structure", f"structure {name!r} not in RTSTRUCT "
                                   f"(has {sorted(source.contours)})")
        return source.contours[name]
    return list(source)


def contour_bounds_mm(contours: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned (min, max) corners of all contour points, mm."""
    pts = np.concatenate(contours, axis=0)
    return pts.min(axis=0), pts.max(axis=0)


def rasterise(source: RTStruct | Sequence[np.ndarray], name: str | None, reference: sitk.Image) -> sitk.Image:
    """uint8 0/1 mask of one structure on `reference`'s grid (see module docstring for the conventions).

    The contour planes must be slice planes of `reference` (e.g. axial contours on any grid whose third
    axis is the patient z axis); otherwise `PatientDataError('contour_not_in_slice_plane')`.
    """
    contours = _contours_of(source, name)
    size = reference.GetSize()
    nx, ny, nz = size
    out = np.zeros((nz, ny, nx), dtype=np.uint8)
    if contours:
        origin = np.asarray(reference.GetOrigin())
        spacing = np.asarray(reference.GetSpacing())
        direction = np.asarray(reference.GetDirection()).reshape(3, 3)
        to_index = np.linalg.inv(direction) / spacing[:, None]  # continuous index = to_index @ (p - origin)
        planes: dict[float, list[np.ndarray]] = {}
        for pts in contours:
            idx = (pts - origin) @ to_index.T
            k = idx[:, 2]
            if np.ptp(k) > 0.05:
                raise PatientDataError("contour_not_in_slice_plane",
                                       f"structure {name!r}: a contour is not in a slice plane of the target grid "
                                       f"(spans {np.ptp(k):.2f} slices)")
            planes.setdefault(round(float(k.mean()), 3), []).append(idx[:, :2])
        keys = np.array(sorted(planes))
        half = 0.5 * float(np.median(np.diff(keys))) if len(keys) > 1 else 0.0  # half plane spacing, slices
        reach = max(half, 0.5)  # interior slices always take their nearest plane (no gaps on coarser grids)
        targets = set(range(int(np.ceil(keys[0] - half - 1e-6)), int(np.floor(keys[-1] + half + 1e-6)) + 1))
        if not targets:  # a structure thinner than the target spacing still lands on its nearest slice
            targets = {int(round(k)) for k in keys}
        plane_masks: dict[float, np.ndarray] = {}
        for kz in sorted(t for t in targets if 0 <= t < nz):
            j = int(np.argmin(np.abs(keys - kz)))
            if abs(keys[j] - kz) > reach + 1e-6:
                continue
            key = float(keys[j])
            if key not in plane_masks:
                plane_masks[key] = _fill_plane(planes[key], nx, ny)
            out[kz] = plane_masks[key]
    mask = sitk.GetImageFromArray(out)
    mask.CopyInformation(reference)
    return mask


def _fill_plane(polys: list[np.ndarray], nx: int, ny: int) -> np.ndarray:
    """Even-odd fill of polygons given in continuous (i, j) index coordinates."""
    plane = np.zeros((ny, nx), dtype=np.uint8)
    for poly in polys:
        rr, cc = draw_polygon(poly[:, 1], poly[:, 0], shape=(ny, nx))
        plane[rr, cc] ^= 1
    return plane


# ---------------------------------------------------------------------------------------------- RTDOSE


def read_rtdose(path: str | Path) -> sitk.Image:
    """RTDOSE grid as a float32 image in Gy (see module docstring for frame-offset handling)."""
    path = str(path)
    ds = pydicom.dcmread(path)
    if getattr(ds, "Modality", "") != "RTDOSE":
        raise PatientDataError("rtdose_not_rtdose", f"modality is {getattr(ds, 'Modality', None)!r}", file=path)
    units = str(getattr(ds, "DoseUnits", "GY")).strip().upper()
    if units == "RELATIVE":
        raise PatientDataError("RTDOSE_RELATIVE", "DoseUnits RELATIVE (relative to a normalisation point), not Gy; "
                               "rtmap uses absolute dose only", file=path)
    if units != "GY":
        raise PatientDataError("rtdose_units", f"DoseUnits {units!r} is not GY", file=path)
    scaling = float(getattr(ds, "DoseGridScaling", 1.0) or 1.0)
    arr = ds.pixel_array.astype(np.float32) * np.float32(scaling)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if arr.ndim == 2:
        arr = arr[None]
    direction = _direction_from_iop([float(v) for v in ds.ImageOrientationPatient])
    ipp = np.asarray(ds.ImagePositionPatient, dtype=float)
    pix = np.asarray(ds.PixelSpacing, dtype=float)
    if frames > 1:
        offsets = np.asarray(ds.GridFrameOffsetVector, dtype=float)
        if len(offsets) != frames:
            raise PatientDataError("rtdose_frame_offsets",
                                   f"GridFrameOffsetVector has {len(offsets)} values for {frames} frames", file=path)
        if abs(offsets[0]) < 1e-6:
            relative = offsets
        elif abs(offsets[0] - ipp[2]) < 1e-3 and abs(abs(direction[2, 2]) - 1) < 1e-6:
            relative = (offsets - offsets[0]) * np.sign(direction[2, 2])  # absolute z -> along the normal
        else:
            raise PatientDataError("rtdose_frame_offsets",
                                   f"GridFrameOffsetVector starts at {offsets[0]} which is neither 0 (relative) nor "
                                   f"the ImagePositionPatient z {ipp[2]} (absolute)", file=path)
        order = np.argsort(relative)
        if np.any(order != np.arange(frames)):
            arr = arr[order]
            relative = relative[order]
        step = _uniform_step(relative, "RTDOSE frames", path)
        origin = ipp + relative[0] * direction[:, 2]
    else:
        step = float(getattr(ds, "SliceThickness", 0) or 1.0)
        origin = ipp
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    image.SetOrigin(tuple(origin))
    image.SetSpacing((float(pix[1]), float(pix[0]), step))
    image.SetDirection(tuple(direction.flatten()))
    return image
