"""Small, valid DICOM / DICOM-RT files written with pydicom, for catalog and manifest tests.

Images are tiny (8x8 pixels, a few slices) so a whole patient is a few kB. Every dataset carries
identifying tags (PatientName, BirthDate, institution, physicians) on purpose: the catalog must
never copy them. UIDs are deterministic (derived from a text key), so tests are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
RT_STRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"

# ImageOrientationPatient that scanners write for axial slices in each patient position.
AXIAL_IOP = {
    "HFS": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "HFP": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
    "FFS": (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "FFP": (1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
}

IDENTIFYING = {
    "PatientName": "Doe^Jane",
    "PatientBirthDate": "19500101",
    "PatientAddress": "1 Secret Street",
    "OtherPatientIDs": "HOSP-123456",
    "InstitutionName": "General Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "OperatorsName": "Op^Erator",
}


def uid(key: str) -> str:
    """Deterministic UID for a text key."""
    return generate_uid(entropy_srcs=[key])


def _base(path: Path, sop_class: str, sop_uid: str, patient_id: str, study_uid: str,
          study_date: str, modality: str, series_uid: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian = True
    ds.is_implicit_VR = False
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.ContentDate = study_date
    ds.Modality = modality
    ds.PatientID = patient_id
    for k, v in IDENTIFYING.items():
        setattr(ds, k, v)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    return ds


def undefined_lengths(ds: Dataset) -> None:
    """Mark every sequence and item as undefined length (delimiter-terminated), as many vendors write."""
    for elem in ds:
        if elem.VR == "SQ":
            elem.is_undefined_length = True
            for item in elem.value:
                item.is_undefined_length_sequence_item = True
                undefined_lengths(item)


def _save(ds: FileDataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), write_like_original=False)
    return path


@dataclass
class SeriesInfo:
    modality: str
    study_uid: str
    series_uid: str
    for_uid: str
    study_date: str
    paths: list[Path]
    sop_uids: list[str]
    z_positions: list[float]


def write_image_series(folder: Path, key: str, patient_id: str, study_uid: str, for_uid: str,
                       study_date: str, *, modality: str = "CT", n_slices: int = 4,
                       shape: tuple[int, int] = (8, 8), spacing: float = 2.0,
                       slice_thickness: float = 2.5, file_names: list[str] | None = None,
                       shuffle_instance_numbers: bool = True,
                       description: str | None = None, patient_position: str = "HFS",
                       iop: tuple[float, ...] | None = None,
                       pixel_fn: Callable[[np.ndarray], np.ndarray] | None = None) -> SeriesInfo:
    """A CT or MR series, one file per slice. Instance numbers are reversed relative to position
    by default, so a test can tell "sorted by position" from "sorted by instance number".

    `patient_position` sets PatientPosition and the usual axial IOP for it (`iop` overrides the
    cosines); whatever the cosines, every slice covers the same LPS square (x, y from -8 mm) at
    z = -10 + i x slice_thickness. `pixel_fn` maps an (rows, cols, 3) array of LPS points (mm) to
    pixel values (HU for CT) so a test can put content at a known physical place."""
    sop_class = CT_IMAGE if modality == "CT" else MR_IMAGE
    series_uid = uid(f"{key}/series")
    paths, sops, zs = [], [], []
    for i in range(n_slices):
        sop = uid(f"{key}/sop/{i}")
        name = file_names[i] if file_names else f"{modality}{i:03d}.dcm"
        path = folder / name
        ds = _base(path, sop_class, sop, patient_id, study_uid, study_date, modality, series_uid)
        ds.SeriesDescription = description or f"{modality} {key}"
        ds.FrameOfReferenceUID = for_uid
        ds.InstanceNumber = (n_slices - i) if shuffle_instance_numbers else i + 1
        z = -10.0 + i * slice_thickness
        cosines = np.asarray(iop if iop is not None else AXIAL_IOP[patient_position], dtype=float)
        row_dir, col_dir = cosines[:3], cosines[3:]
        # Same field of view whatever the cosines: centre of the HFS square at x, y = -8 mm.
        centre = np.array([-8.0 + (shape[1] - 1) * spacing / 2, -8.0 + (shape[0] - 1) * spacing / 2, z])
        ipp = centre - (shape[1] - 1) / 2 * spacing * row_dir - (shape[0] - 1) / 2 * spacing * col_dir
        ds.ImagePositionPatient = [round(float(v), 4) for v in ipp]
        ds.ImageOrientationPatient = [float(v) for v in cosines]
        ds.PatientPosition = patient_position
        ds.PixelSpacing = [spacing, spacing]
        ds.SliceThickness = slice_thickness
        ds.Rows, ds.Columns = shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        if modality == "CT":
            ds.RescaleIntercept = -1024
            ds.RescaleSlope = 1
        if pixel_fn is None:
            ds.PixelData = (np.full(shape, 1000 + i, dtype=np.int16)).tobytes()
        else:
            jj, ii = np.mgrid[0:shape[0], 0:shape[1]]
            pts = (ipp + ii[..., None] * spacing * row_dir + jj[..., None] * spacing * col_dir)
            stored = np.asarray(pixel_fn(pts), dtype=float) - float(getattr(ds, "RescaleIntercept", 0))
            ds.PixelData = np.round(stored).astype(np.int16).tobytes()
        _save(ds, path)
        paths.append(path)
        sops.append(sop)
        zs.append(z)
    return SeriesInfo(modality, study_uid, series_uid, for_uid, study_date, paths, sops, zs)


def write_rtstruct(path: Path, key: str, patient_id: str, study_uid: str, study_date: str,
                   roi_names: list[str], *, referenced: SeriesInfo | None = None,
                   ref_for_uid: str | None = None, reference_series: bool = True,
                   contour_points: int = 40, undefined_length: bool = False,
                   contour_centre_xy: tuple[float, float] = (0.0, 0.0), contour_radius: float = 4.0,
                   contour_z: list[float] | None = None) -> str:
    """An RTSTRUCT with one closed contour per ROI on every referenced slice (or on `contour_z`): a
    circle of `contour_radius` mm about `contour_centre_xy` (LPS mm).

    `reference_series=False` leaves out the RTReferencedSeriesSequence, so the structure set points
    at its image only through the frame of reference (as some exports do).
    """
    sop = uid(f"{key}/rtstruct")
    ds = _base(path, RT_STRUCT, sop, patient_id, study_uid, study_date, "RTSTRUCT",
               uid(f"{key}/rtstruct-series"))
    ds.SeriesDescription = f"Structures {key}"
    ds.StructureSetLabel = "RTSTRUCT"
    ds.StructureSetDate = study_date
    for_uid = ref_for_uid or (referenced.for_uid if referenced else uid(f"{key}/for"))
    ref_for = Dataset()
    ref_for.FrameOfReferenceUID = for_uid
    if referenced is not None and reference_series:
        ser = Dataset()
        ser.SeriesInstanceUID = referenced.series_uid
        ser.ContourImageSequence = Sequence([_ref(CT_IMAGE if referenced.modality == "CT" else MR_IMAGE, s)
                                             for s in referenced.sop_uids])
        st = Dataset()
        st.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        st.ReferencedSOPInstanceUID = referenced.study_uid
        st.RTReferencedSeriesSequence = Sequence([ser])
        ref_for.RTReferencedStudySequence = Sequence([st])
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref_for])
    rois, contours = [], []
    zs = contour_z if contour_z is not None else (referenced.z_positions if referenced else [0.0])
    for n, name in enumerate(roi_names, start=1):
        roi = Dataset()
        roi.ROINumber = n
        roi.ReferencedFrameOfReferenceUID = for_uid
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "MANUAL"
        rois.append(roi)
        rc = Dataset()
        rc.ReferencedROINumber = n
        rc.ROIDisplayColor = [255, 0, 0]
        items = []
        for z in zs:
            c = Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            ang = np.linspace(0, 2 * np.pi, contour_points, endpoint=False)
            cx, cy = contour_centre_xy
            pts = np.stack([cx + contour_radius * np.cos(ang), cy + contour_radius * np.sin(ang),
                            np.full_like(ang, z)], axis=1)
            c.NumberOfContourPoints = contour_points
            c.ContourData = [f"{v:.2f}" for v in pts.ravel()]
            items.append(c)
        rc.ContourSequence = Sequence(items)
        contours.append(rc)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(contours)
    obs = []
    for n, name in enumerate(roi_names, start=1):
        o = Dataset()
        o.ObservationNumber = n
        o.ReferencedROINumber = n
        o.RTROIInterpretedType = "CTV" if "ctv" in name.lower() else "ORGAN"
        obs.append(o)
    ds.RTROIObservationsSequence = Sequence(obs)
    if undefined_length:
        undefined_lengths(ds)
    _save(ds, path)
    return sop


def _ref(sop_class: str, sop_uid: str) -> Dataset:
    d = Dataset()
    d.ReferencedSOPClassUID = sop_class
    d.ReferencedSOPInstanceUID = sop_uid
    return d


def write_rtdose(path: Path, key: str, patient_id: str, study_uid: str, study_date: str,
                 for_uid: str, *, rtplan_sop: str | None = None, rtstruct_sop: str | None = None,
                 summation: str = "PLAN", shape: tuple[int, int, int] = (3, 6, 6)) -> str:
    """A multi-frame RTDOSE grid (Gy) on `for_uid`."""
    sop = uid(f"{key}/rtdose")
    ds = _base(path, RT_DOSE, sop, patient_id, study_uid, study_date, "RTDOSE",
               uid(f"{key}/rtdose-series"))
    ds.FrameOfReferenceUID = for_uid
    nz, ny, nx = shape
    ds.NumberOfFrames = nz
    ds.Rows, ds.Columns = ny, nx
    ds.PixelSpacing = [3.0, 3.0]
    ds.ImagePositionPatient = [-9.0, -9.0, -10.0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.GridFrameOffsetVector = [2.5 * i for i in range(nz)]
    ds.FrameIncrementPointer = 0x3004000C
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = summation
    ds.DoseGridScaling = 0.001
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 32
    ds.BitsStored = 32
    ds.HighBit = 31
    ds.PixelRepresentation = 0
    if rtplan_sop:
        ds.ReferencedRTPlanSequence = Sequence([_ref(RT_PLAN, rtplan_sop)])
    if rtstruct_sop:
        ds.ReferencedStructureSetSequence = Sequence([_ref(RT_STRUCT, rtstruct_sop)])
    ds.PixelData = np.full(shape, 60000, dtype=np.uint32).tobytes()
    _save(ds, path)
    return sop


@dataclass
class PatientFiles:
    """What `write_patient` wrote, for assertions."""

    patient_id: str
    root: Path
    planning_ct: SeriesInfo | None = None
    planning_rtstruct: Path | None = None
    planning_rtdose: Path | None = None
    relapse_image: SeriesInfo | None = None
    relapse_rtstruct: Path | None = None
    extra: dict[str, object] = field(default_factory=dict)


def write_patient(export_dir: Path, patient_id: str, *, planning_date: str = "20200110",
                  relapse_date: str | None = "20211020", relapse_modality: str = "CT",
                  with_dose: bool = True, ctv_names: tuple[str, ...] = ("CTV_65", "CTV_60", "CTV_54"),
                  organ_names: tuple[str, ...] = ("BODY", "thyroid_cartilage", "SpinalCord"),
                  recurrence_name: str = "Rec_CT", n_slices: int = 4) -> PatientFiles:
    """One patient export: planning CT + RTSTRUCT (CTVs) + RTDOSE, relapse CT/MR + RTSTRUCT.

    Study/series folders are nested like a PACS export: <export>/<study>/<series>/<file>.
    """
    pf = PatientFiles(patient_id, export_dir)
    k = f"{patient_id}"
    plan_study = uid(f"{k}/plan-study")
    plan_for = uid(f"{k}/plan-for")
    pdir = export_dir / "planning"
    pf.planning_ct = write_image_series(pdir / "ct", f"{k}/plan-ct", patient_id, plan_study, plan_for,
                                        planning_date, n_slices=n_slices)
    pf.planning_rtstruct = pdir / "rs" / "RS.dcm"
    rs_sop = write_rtstruct(pf.planning_rtstruct, f"{k}/plan", patient_id, plan_study, planning_date,
                            [*ctv_names, *organ_names], referenced=pf.planning_ct)
    if with_dose:
        pf.planning_rtdose = pdir / "rd" / "RD.dcm"
        write_rtdose(pf.planning_rtdose, f"{k}/plan", patient_id, plan_study, planning_date, plan_for,
                     rtplan_sop=uid(f"{k}/rtplan"), rtstruct_sop=rs_sop)
    if relapse_date is not None:
        rel_study = uid(f"{k}/rel-study")
        rel_for = uid(f"{k}/rel-for")
        rdir = export_dir / "relapse"
        pf.relapse_image = write_image_series(rdir / "img", f"{k}/rel-img", patient_id, rel_study, rel_for,
                                              relapse_date, modality=relapse_modality, n_slices=n_slices)
        pf.relapse_rtstruct = rdir / "rs" / "RS.dcm"
        write_rtstruct(pf.relapse_rtstruct, f"{k}/rel", patient_id, rel_study, relapse_date,
                       [recurrence_name, "thyroid_cartilage"], referenced=pf.relapse_image)
    return pf
