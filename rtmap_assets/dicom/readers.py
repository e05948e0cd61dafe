"""DICOM readers: image series -> SimpleITK image, RTSTRUCT -> contours -> masks, RTDOSE -> Gy image.

All geometry is DICOM patient coordinates (LPS, mm), which is also SimpleITK's physical space.

Conventions (tested in `rtmap_assets_tests/test_readers_*.py`):
- Image series are sorted by position along the slice normal (not by InstanceNumber or file name).
  Any consistent orientation is accepted (axial in HFS/HFP/FFS/FFP, sagittal, coronal, oblique): the
  SimpleITK direction matrix carries it, so resampling is exact. Slice geometry follows rule 15 and
  `rtmap_assets.dicom.slice_geometry` (tolerances from the trial config's `slice_geometry`): jittered
  positions are placed on their lattice, irregular steps are resampled onto a uniform step (linear
  between neighbouring true slices), identical duplicates are kept once. Refused with a
  `PatientDataError` (measured size in the message) instead of guessed: a gap such as a missing slice
  (`series_gap`), duplicated positions with different content (`series_duplicate_position`), mixed
  orientations (`series_mixed_orientation`), gantry tilt / sheared stacks (`series_gantry_tilt`),
  non-orthonormal direction cosines (`series_bad_orientation`), missing IOP/IPP
  (`series_no_geometry`), fewer than two slices (`series_too_few_slices`), differing
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
  Contour planes need not be evenly spaced (they follow real slice positions, rule 15): between two
  planes up to 1.5x the median plane spacing apart each slice takes its nearest plane (midpoint
  rule); across a wider gap (part of the structure not drawn) only slices within half the median
  spacing of a plane are filled.
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

from rtmap_assets.config import SliceGeometry
from rtmap_assets.dicom import slice_geometry as sg
from rtmap_assets.errors import PatientDataError

log = logging.getLogger(__name__)

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


def _slice_geometry_of(ds: pydicom.Dataset, file: str) -> tuple[np.ndarray, np.ndarray]:
    """(IOP, IPP) of one slice, or `SERIES_NO_GEOMETRY` when a tag is missing or malformed."""
    try:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=float)
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=float)
    except (AttributeError, TypeError, ValueError):
        iop = ipp = np.zeros(0)
    if iop.shape != (6,) or ipp.shape != (3,):
        raise PatientDataError("series_no_geometry", "slice lacks a valid ImageOrientationPatient (6 values) or "
                               "ImagePositionPatient (3 values)", file=file)
    return iop, ipp


# Uncompressed little-endian transfer syntaxes (implicit / explicit VR): the pixel bytes are the array.
_NATIVE_LITTLE_ENDIAN = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


def _stored_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """The slice's stored values (rows, columns), as `ds.pixel_array` gives them.

    Uncompressed little-endian greyscale slices are viewed straight from the PixelData bytes (pydicom's
    handler does the same `frombuffer` after ~20 attribute look-ups and checks per slice); anything else
    (compressed, big endian, colour, 1-bit, short data) goes through `pixel_array`."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    bits = int(getattr(ds, "BitsAllocated", 0) or 0)
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if ts in _NATIVE_LITTLE_ENDIAN and bits in (8, 16, 32) and int(getattr(ds, "SamplesPerPixel", 1) or 1) == 1:
        data = ds.get("PixelData")
        if isinstance(data, (bytes, bytearray)) and len(data) >= rows * cols * bits // 8:
            kind = "i" if int(getattr(ds, "PixelRepresentation", 0) or 0) else "u"
            return np.frombuffer(data, dtype=f"<{kind}{bits // 8}", count=rows * cols).reshape(rows, cols)
    return ds.pixel_array


def _rescale_into(ds: pydicom.Dataset, out: np.ndarray) -> None:
    """stored x RescaleSlope + RescaleIntercept in float32, written into `out` (no per-slice temporaries).
    The same float32 operations as `stored.astype(float32) * slope + intercept`, so the same bits."""
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    out[...] = _stored_pixels(ds)  # exact: stored integers are cast to float32 as astype does
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)


def read_image_series(paths: Iterable[str | Path], geometry: SliceGeometry | None = None) -> sitk.Image:
    """A CT or MR series (one file per slice) as a float32 SimpleITK image, rescaled (HU for CT).

    Slice geometry (rule 15) follows `geometry` (the trial config's `slice_geometry`; defaults when
    None): jittered positions are placed on their lattice, irregular steps are resampled onto a
    uniform step along the normal, gaps, conflicting duplicates, tilted or mixed stacks are refused
    (conventions in `rtmap_assets.dicom.slice_geometry`).
    """
    return read_image_series_with_layout(paths, geometry)[0]


def read_image_series_with_layout(paths: Iterable[str | Path], geometry: SliceGeometry | None = None
                                  ) -> tuple[sitk.Image, sg.SliceLayout]:
    """`read_image_series` and the `SliceLayout` it used (kind uniform/jitter/irregular, duplicates dropped)."""
    cfg = geometry if geometry is not None else SliceGeometry()
    files = [str(p) for p in paths]
    if len(files) < 2:
        raise PatientDataError("series_too_few_slices", f"series has {len(files)} slice(s); need at least 2",
                               file=files[0] if files else None)
    slices = [pydicom.dcmread(f) for f in files]
    first = slices[0]
    if getattr(first, "NumberOfFrames", 1) not in (None, 1, "1", ""):
        raise PatientDataError("series_multiframe", "multi-frame (enhanced) image objects are not supported",
                               file=files[0])
    geo = [_slice_geometry_of(ds, f) for f, ds in zip(files, slices)]
    iops = np.array([g[0] for g in geo])
    ipp = np.array([g[1] for g in geo])
    direction = sg.normal_from_iop(iops[0], file=files[0])
    sg.check_same_orientation(iops, cfg.orientation_tolerance, files)
    normal = direction[:, 2]
    rows, cols = int(first.Rows), int(first.Columns)
    pix = np.asarray(first.PixelSpacing, dtype=float)  # [row spacing (between rows), column spacing]
    for f, ds in zip(files, slices):
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols) or np.max(
                np.abs(np.asarray(ds.PixelSpacing, dtype=float) - pix)) > 1e-4:
            raise PatientDataError("series_inconsistent_geometry",
                                   f"slices differ in size or pixel spacing: {int(ds.Rows)}x{int(ds.Columns)} at "
                                   f"{list(np.asarray(ds.PixelSpacing, dtype=float))} mm vs {rows}x{cols} at "
                                   f"{list(pix)} mm", file=f)
    along = ipp @ normal
    order = np.argsort(along, kind="stable")
    ipp, along = ipp[order], along[order]
    slices = [slices[i] for i in order]
    files = [files[i] for i in order]
    sg.check_not_tilted(ipp, normal, cfg.max_tilt_deg, file=files[0])
    volume = np.empty((len(slices), rows, cols), dtype=np.float32)
    for k, ds in enumerate(slices):
        _rescale_into(ds, volume[k])
    layout = sg.classify_positions(along, cfg, pixels=volume, file=files[0])
    if layout.dropped_duplicates:
        volume = volume[layout.kept]  # (a copy: only when something was dropped)
        log.info("%s: duplicated slice positions with identical content kept once (position, distance mm): %s",
                 files[0], [(round(p, 3), round(d, 3)) for p, d in layout.dropped_duplicates])
    if layout.needs_resampling:
        volume = sg.resample_along_normal(volume, layout.positions_mm, layout.target_positions_mm)
    image = sitk.GetImageFromArray(volume)
    # In-plane origin from the first slice (all origins lie on one line along the normal: tilt checked).
    origin = ipp[0] + (layout.origin_mm - along[0]) * normal
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetSpacing((float(pix[1]), float(pix[0]), float(layout.step_mm)))
    image.SetDirection(tuple(direction.flatten()))
    return image, layout


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


def _contour_points(item: pydicom.Dataset) -> np.ndarray:
    """ContourData of one ContourSequence item as an (N, 3) float array (mm).

    Parsed from the element's raw bytes while pydicom has not converted it: pydicom builds one `DSfloat`
    object per coordinate (~1 s for a 100,000-point planning RTSTRUCT), this takes a twentieth of that.
    Python's `float` on each backslash-separated value is the same conversion `DSfloat` makes, so the
    values are identical to the last bit; anything unusual (already converted, empty, malformed) goes
    through pydicom as before."""
    raw = item.get_item("ContourData") if "ContourData" in item else None
    value = getattr(raw, "value", None)
    if isinstance(value, (bytes, bytearray)) and value.strip(b" \x00"):
        try:
            return np.fromiter(map(float, value.split(b"\\")), dtype=float).reshape(-1, 3)
        except ValueError:
            pass
    return np.asarray(item.ContourData, dtype=float).reshape(-1, 3)


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
            pts = _contour_points(c)
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
            if abs(keys[j] - kz) > _plane_reach(keys, kz, half, reach) + 1e-6:
                continue
            key = float(keys[j])
            if key not in plane_masks:
                plane_masks[key] = _fill_plane(planes[key], nx, ny)
            out[kz] = plane_masks[key]
    mask = sitk.GetImageFromArray(out)
    mask.CopyInformation(reference)
    return mask


def _plane_reach(keys: np.ndarray, kz: float, half: float, reach: float) -> float:
    """How far (slices) target slice `kz` may be from its nearest contour plane and still take it.

    Real contour planes follow real slice positions (rule 15: 2.4-2.6 mm steps on a 2.5 mm series), so
    between two planes up to 1.5x the usual spacing apart a slice takes its nearest plane up to the
    midpoint (no slice is skipped because a local gap exceeds the median); a wider gap (a part of the
    structure not drawn) is filled only within half the usual spacing of each plane.
    """
    i = int(np.searchsorted(keys, kz))
    if 0 < i < len(keys):
        gap = float(keys[i] - keys[i - 1])
        if gap <= 3.0 * half:
            return max(reach, 0.5 * gap)
    return reach


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
