"""The one DICOM writer of rtmap: image series (CT / MR), RTSTRUCT, RTDOSE - for the synthetic generator
and for the tests' small hand-made exports (rtmap_assets_tests/dicom_factory.py builds on it).

Only what real readers (pydicom, SimpleITK/GDCM, scikit-rt) need. Geometry is given as a `Grid` in
patient LPS mm (axis-aligned, increasing); the patient position (HFS, HFP, FFS, FFP) decides how a
scanner would lay that grid out in the file: the row/column direction cosines, the first pixel's
corner and the slice order along the slice normal. Anatomy (and contours, which are in patient
coordinates) stays where it is. UIDs are derived deterministically from text keys (pydicom's
`generate_uid` with entropy sources), so the same seed gives the same UIDs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid
from skimage.measure import find_contours

from rtmap_synth.phantom import Grid

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RTDOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RTPLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
_CONTOUR_DATA = Tag(0x3006, 0x0050)
STUDY_COMPONENT_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"  # referenced "SOP class" of a study in RTSTRUCT


def uid(*parts: object) -> str:
    """Deterministic UID from the given parts."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


@dataclass(frozen=True)
class PatientTags:
    patient_id: str
    patient_name: str
    birth_date: str  # YYYYMMDD
    sex: str


@dataclass(frozen=True)
class StudyInfo:
    study_uid: str
    study_date: str  # YYYYMMDD
    study_time: str
    description: str
    study_id: str
    accession: str
    frame_of_reference_uid: str


@dataclass
class SeriesRef:
    """What an RTSTRUCT needs to reference an image series."""

    series_uid: str
    sop_class: str
    sop_uids: list[str] = field(default_factory=list)  # per slice k


def _fmt(v: float) -> str:
    s = f"{v:.4f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _ds(v: float) -> str:
    """DS for geometry: up to 10 significant digits (<= 16 characters), exact for grid values."""
    s = f"{float(v):.10g}"
    return "0" if s == "-0" else s


# Row and column direction cosines a scanner writes for each patient position (DICOM C.7.6.2.1.1):
# supine: rows run to the patient's left (+x) head first, to the right (-x) feet first; prone flips
# both in-plane axes against supine. The slice normal is row x column.
PATIENT_POSITIONS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "HFS": ((1, 0, 0), (0, 1, 0)),
    "HFP": ((-1, 0, 0), (0, -1, 0)),
    "FFS": ((-1, 0, 0), (0, 1, 0)),
    "FFP": ((1, 0, 0), (0, -1, 0)),
}


@dataclass(frozen=True)
class Layout:
    """How a logical (x, y, z increasing) grid is stored for a patient position."""

    position: str = "HFS"

    def __post_init__(self) -> None:
        if self.position not in PATIENT_POSITIONS:
            raise ValueError(f"patient position must be one of {sorted(PATIENT_POSITIONS)}, got {self.position!r}")

    @property
    def row(self) -> tuple[int, int, int]:
        return PATIENT_POSITIONS[self.position][0]

    @property
    def col(self) -> tuple[int, int, int]:
        return PATIENT_POSITIONS[self.position][1]

    @property
    def normal(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in np.cross(self.row, self.col))  # type: ignore[return-value]

    @property
    def iop(self) -> list[str]:
        return [str(v) for v in (*self.row, *self.col)]

    def stored_slice(self, k: int, nz: int) -> int:
        """Index along the slice normal (file order) of logical slice k."""
        return nz - 1 - k if self.normal[2] < 0 else k

    def pixels(self, logical: np.ndarray) -> np.ndarray:
        """(..., ny, nx) logical array -> stored rows/columns."""
        out = logical[..., ::-1, :] if self.col[1] < 0 else logical
        return out[..., :, ::-1] if self.row[0] < 0 else out

    def corner_xy(self, grid: Grid) -> tuple[float, float]:
        """Patient x, y of the first stored pixel (row 0, column 0)."""
        x, y, _ = grid.axes()
        return float(x[-1] if self.row[0] < 0 else x[0]), float(y[-1] if self.col[1] < 0 else y[0])


def new_dataset(sop_class: str, sop_uid: str, modality: str, patient: PatientTags, study: StudyInfo,
                 series_uid: str, series_number: int, series_description: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian = True
    ds.is_implicit_VR = False
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.Manufacturer = "rtmap synthetic"
    ds.InstitutionName = "Synthetic Hospital"
    ds.PatientName = patient.patient_name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.StudyDescription = study.description
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession
    ds.ReferringPhysicianName = "Referrer^Synthetic"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.SeriesDate = study.study_date
    ds.SeriesTime = study.study_time
    ds.ContentDate = study.study_date
    ds.ContentTime = study.study_time
    return ds


class ImageSeriesWriter:
    """Writes one axial image series slice by slice (so callers can generate slab by slab).

    Slices are addressed by their logical index k (increasing z); `position` lays them out as a scanner
    would for that patient position. `grid.slice_z_mm` (if set) gives irregular slice positions.
    """

    def __init__(self, grid: Grid, modality: str, patient: PatientTags, study: StudyInfo, *,
                 series_number: int, description: str, uid_seed: str, position: str = "HFS"):
        self.grid, self.modality, self.patient, self.study = grid, modality, patient, study
        self.series_number, self.description = series_number, description
        self.layout = Layout(position)
        self.sop_class = CT_STORAGE if modality == "CT" else MR_STORAGE
        self.ref = SeriesRef(uid(uid_seed, "series"), self.sop_class,
                             [uid(uid_seed, "slice", k) for k in range(grid.shape[2])])

    def dataset(self, k: int, pixels: np.ndarray) -> FileDataset:
        """pixels: logical (ny, nx) stored values - int16 (CT, HU + 1024) or uint16 (MR)."""
        g, lay = self.grid, self.layout
        ds = new_dataset(self.sop_class, self.ref.sop_uids[k], self.modality, self.patient, self.study,
                         self.ref.series_uid, self.series_number, self.description)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.FrameOfReferenceUID = self.study.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = lay.position
        ds.InstanceNumber = lay.stored_slice(k, g.shape[2]) + 1
        z = g.z_at(k)
        x0, y0 = lay.corner_xy(g)
        ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(z)]
        ds.ImageOrientationPatient = lay.iop
        ds.SliceLocation = _ds(z)
        ds.SliceThickness = _ds(g.spacing[2])
        ds.PixelSpacing = [_ds(g.spacing[1]), _ds(g.spacing[0])]  # row spacing (y), column spacing (x)
        ds.Rows, ds.Columns = int(g.shape[1]), int(g.shape[0])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        if self.modality == "CT":
            ds.PixelRepresentation = 1
            ds.RescaleIntercept = "-1024"
            ds.RescaleSlope = "1"
            ds.RescaleType = "HU"
            ds.KVP = "120"
            ds.WindowCenter, ds.WindowWidth = "40", "400"
            arr = np.ascontiguousarray(lay.pixels(pixels), dtype="<i2")
        else:
            ds.PixelRepresentation = 0
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.RepetitionTime = "600"
            ds.EchoTime = "15"
            ds.MagneticFieldStrength = "1.5"
            ds.WindowCenter, ds.WindowWidth = "500", "1000"
            arr = np.ascontiguousarray(lay.pixels(pixels), dtype="<u2")
        ds.PixelData = arr.tobytes()
        return ds


def mask_contours(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed contours (row, col) around the parts of one binary slice, at the 0.5 level.

    The mask is padded so contours touching the border close; vertices lie midway between
    inside and outside voxel centres, so rasterising the polygon gives the mask back.
    """
    padded = np.pad(mask2d.astype(np.float32), 1)
    out = []
    for c in find_contours(padded, 0.5):
        c = c - 1.0
        if len(c) > 1 and np.allclose(c[0], c[-1]):
            c = c[:-1]
        if len(c) >= 3:
            out.append(c)
    return out


class ContourCollector:
    """Collects per-slice contours (patient mm) of several structures while the masks are generated."""

    def __init__(self, grid: Grid):
        self.grid = grid
        self.contours: dict[str, list[tuple[int, np.ndarray]]] = {}

    def add_slab(self, k0: int, masks: dict[str, np.ndarray], i0: int = 0, j0: int = 0) -> None:
        """Masks (nk, ny', nx') of slices k0.. of a crop starting at column i0, row j0."""
        g = self.grid
        for name, m in masks.items():
            lst = self.contours.setdefault(name, [])
            for dk in range(m.shape[0]):
                sl = m[dk]
                if not sl.any():
                    continue
                rows = np.flatnonzero(sl.any(axis=1))
                cols = np.flatnonzero(sl.any(axis=0))
                r0, c0 = rows[0], cols[0]
                crop = sl[r0:rows[-1] + 1, c0:cols[-1] + 1]
                k = k0 + dk
                z = g.z_at(k)
                for c in mask_contours(crop):
                    xmm = g.origin[0] + (c[:, 1] + c0 + i0) * g.spacing[0]
                    ymm = g.origin[1] + (c[:, 0] + r0 + j0) * g.spacing[1]
                    lst.append((k, np.column_stack([xmm, ymm, np.full(len(c), z)])))


@dataclass(frozen=True)
class RoiSpec:
    key: str  # generator key (e.g. "ctv_high")
    name: str  # ROIName written
    interpreted_type: str  # EXTERNAL, CTV, ORGAN, GTV, AVOIDANCE, ...
    colour: tuple[int, int, int]


def rtstruct_dataset(rois: list[RoiSpec], contours: dict[str, list[tuple[int, np.ndarray]]],
                     image: SeriesRef | None, patient: PatientTags, study: StudyInfo, *, uid_seed: str, label: str,
                     reference_series: bool = True) -> FileDataset:
    """An RTSTRUCT: contours[key] = [(slice index k in `image`, (n, 3) points mm), ...] per RoiSpec.key.

    `reference_series=False` (or no `image`) leaves out the RTReferencedStudySequence, so the structure set
    points at its image only through the frame of reference (as some exports do); without `image` the
    contours reference no image slice either.
    """
    ds = new_dataset(RTSTRUCT_STORAGE, uid(uid_seed, "rtstruct"), "RTSTRUCT", patient, study,
                      uid(uid_seed, "rtstruct-series"), 900, label)
    ds.StructureSetLabel = label
    ds.StructureSetName = label
    ds.StructureSetDate = study.study_date
    ds.StructureSetTime = study.study_time
    ds.InstanceNumber = 1

    def contour_image(k: int) -> Dataset:
        ci = Dataset()
        ci.ReferencedSOPClassUID = image.sop_class
        ci.ReferencedSOPInstanceUID = image.sop_uids[k]
        return ci

    rfor = Dataset()
    rfor.FrameOfReferenceUID = study.frame_of_reference_uid
    if image is not None and reference_series:
        rser = Dataset()
        rser.SeriesInstanceUID = image.series_uid
        rser.ContourImageSequence = Sequence([contour_image(k) for k in range(len(image.sop_uids))])
        rstudy = Dataset()
        rstudy.ReferencedSOPClassUID = STUDY_COMPONENT_MANAGEMENT
        rstudy.ReferencedSOPInstanceUID = study.study_uid
        rstudy.RTReferencedSeriesSequence = Sequence([rser])
        rfor.RTReferencedStudySequence = Sequence([rstudy])
    ds.ReferencedFrameOfReferenceSequence = Sequence([rfor])

    ssroi, roic, obs = [], [], []
    for number, roi in enumerate(rois, start=1):
        r = Dataset()
        r.ROINumber = number
        r.ReferencedFrameOfReferenceUID = study.frame_of_reference_uid
        r.ROIName = roi.name
        r.ROIGenerationAlgorithm = "MANUAL"
        ssroi.append(r)
        c = Dataset()
        c.ROIDisplayColor = list(roi.colour)
        c.ReferencedROINumber = number
        seq = []
        for k, pts in contours.get(roi.key, []):
            item = Dataset()
            if image is not None:
                item.ContourImageSequence = Sequence([contour_image(k)])
            item.ContourGeometricType = "CLOSED_PLANAR"
            # Written raw: pydicom's per-value DS validation dominates the run time otherwise.
            text = "\\".join(_fmt(v) for v in pts.ravel()).encode("ascii")
            while len(text) > 0xFFFE:  # explicit-VR DS length limit: thin very long contours
                pts = pts[::2]
                text = "\\".join(_fmt(v) for v in pts.ravel()).encode("ascii")
            if len(text) % 2:
                text += b" "
            item.NumberOfContourPoints = len(pts)
            item[_CONTOUR_DATA] = RawDataElement(_CONTOUR_DATA, "DS", len(text), text, 0, False, True)
            seq.append(item)
        c.ContourSequence = Sequence(seq)
        roic.append(c)
        o = Dataset()
        o.ObservationNumber = number
        o.ReferencedROINumber = number
        o.RTROIInterpretedType = roi.interpreted_type
        o.ROIInterpreter = ""
        obs.append(o)
    ds.StructureSetROISequence = Sequence(ssroi)
    ds.ROIContourSequence = Sequence(roic)
    ds.RTROIObservationsSequence = Sequence(obs)
    ds.ApprovalStatus = "APPROVED"
    return ds


def _ref(sop_class: str, sop_uid: str) -> Dataset:
    d = Dataset()
    d.ReferencedSOPClassUID = sop_class
    d.ReferencedSOPInstanceUID = sop_uid
    return d


def rtdose_dataset(dose_stored: np.ndarray, scaling: str, grid: Grid, patient: PatientTags, study: StudyInfo,
                   *, uid_seed: str, position: str = "HFS", summation: str = "PLAN",
                   description: str = "Planned dose", series_number: int = 901,
                   referenced_plan_uid: str | None = None, referenced_beam_number: int | None = None,
                   referenced_rtstruct_uid: str | None = None) -> FileDataset:
    """dose_stored: logical (nz, ny, nx) uint32; physical dose = stored * float(scaling) Gy.

    Frames follow the slice normal of `position` (GridFrameOffsetVector relative to the first frame,
    increasing along the normal). `referenced_beam_number` adds the plan's fraction group 1 / beam
    reference a per-beam (DoseSummationType BEAM) dose carries.
    """
    lay = Layout(position)
    ds = new_dataset(RTDOSE_STORAGE, uid(uid_seed, "rtdose"), "RTDOSE", patient, study,
                     uid(uid_seed, "rtdose-series"), series_number, description)
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = 1
    nz = int(grid.shape[2])
    x0, y0 = lay.corner_xy(grid)
    ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(grid.z_at(lay.stored_slice(0, nz)))]
    ds.ImageOrientationPatient = lay.iop
    ds.PixelSpacing = [_ds(grid.spacing[1]), _ds(grid.spacing[0])]
    ds.SliceThickness = _ds(grid.spacing[2])
    ds.NumberOfFrames = nz
    ds.FrameIncrementPointer = pydicom.tag.Tag(0x3004, 0x000C)
    ds.GridFrameOffsetVector = [_ds(k * grid.spacing[2]) for k in range(nz)]
    ds.Rows, ds.Columns = int(grid.shape[1]), int(grid.shape[0])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 32
    ds.BitsStored = 32
    ds.HighBit = 31
    ds.PixelRepresentation = 0
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = summation
    ds.DoseGridScaling = scaling
    ds.TissueHeterogeneityCorrection = "IMAGE"
    if referenced_plan_uid:
        plan = _ref(RTPLAN_STORAGE, referenced_plan_uid)
        if referenced_beam_number is not None:
            beam = Dataset()
            beam.ReferencedBeamNumber = int(referenced_beam_number)
            fg = Dataset()
            fg.ReferencedFractionGroupNumber = 1
            fg.ReferencedBeamSequence = Sequence([beam])
            plan.ReferencedFractionGroupSequence = Sequence([fg])
        ds.ReferencedRTPlanSequence = Sequence([plan])
    if referenced_rtstruct_uid:
        ds.ReferencedStructureSetSequence = Sequence([_ref(RTSTRUCT_STORAGE, referenced_rtstruct_uid)])
    stored = dose_stored[::-1] if lay.normal[2] < 0 else dose_stored
    ds.PixelData = np.ascontiguousarray(lay.pixels(stored), dtype="<u4").tobytes()
    return ds


def undefined_lengths(ds: Dataset) -> None:
    """Mark every sequence and item as undefined length (delimiter-terminated), as many vendors write."""
    for elem in ds:
        if elem.VR == "SQ":
            elem.is_undefined_length = True
            for item in elem.value:
                item.is_undefined_length_sequence_item = True
                undefined_lengths(item)


def save(ds: FileDataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), write_like_original=False)
    return path
