"""Small, valid DICOM / DICOM-RT files for catalog and manifest tests, written with the generator's
DICOM writer (rtmap_synth.dicom_write: one writer for the synthetic cohort and the tests).

Images are tiny (8x8 pixels, a few slices) so a whole patient is a few kB. Every dataset carries
identifying tags (PatientName, BirthDate, institution, physicians) on purpose: the catalog must
never copy them. UIDs are deterministic (derived from a text key), so tests are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset

from rtmap_synth.dicom_write import (
    CT_STORAGE as CT_IMAGE, MR_STORAGE as MR_IMAGE, RTDOSE_STORAGE as RT_DOSE, RTPLAN_STORAGE as RT_PLAN,
    RTSTRUCT_STORAGE as RT_STRUCT, ImageSeriesWriter, PatientTags, RoiSpec, SeriesRef, StudyInfo, rtdose_dataset,
    rtstruct_dataset, save, undefined_lengths, uid,
)
from rtmap_synth.phantom import Grid

__all__ = ["CT_IMAGE", "MR_IMAGE", "RT_DOSE", "RT_PLAN", "RT_STRUCT", "IDENTIFYING", "PatientFiles", "SeriesInfo",
           "uid", "undefined_lengths", "write_image_series", "write_patient", "write_rtdose", "write_rtstruct"]

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


def _patient(patient_id: str) -> PatientTags:
    return PatientTags(patient_id, IDENTIFYING["PatientName"], IDENTIFYING["PatientBirthDate"], "F")


def _study(study_uid: str, study_date: str, for_uid: str) -> StudyInfo:
    return StudyInfo(study_uid=study_uid, study_date=study_date, study_time="120000", description="",
                     study_id="1", accession="", frame_of_reference_uid=for_uid)


def _identify(ds: FileDataset) -> FileDataset:
    for k, v in IDENTIFYING.items():
        setattr(ds, k, v)
    return ds


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
    """A CT or MR series, one file per slice, written by the generator's image writer. Instance numbers
    are reversed relative to position by default, so a test can tell "sorted by position" from "sorted by
    instance number".

    `patient_position` sets PatientPosition and the usual axial IOP for it (`iop` overrides the
    cosines); whatever the cosines, every slice covers the same LPS square (x, y from -8 mm) at
    z = -10 + i x slice_thickness. `pixel_fn` maps an (rows, cols, 3) array of LPS points (mm) to
    pixel values (HU for CT) so a test can put content at a known physical place."""
    rows, cols = shape
    grid = Grid((cols, rows, n_slices), (spacing, spacing, slice_thickness), (-8.0, -8.0, -10.0))
    writer = ImageSeriesWriter(grid, modality, _patient(patient_id), _study(study_uid, study_date, for_uid),
                               series_number=1, description=description or f"{modality} {key}", uid_seed=key)
    paths, zs = [], []
    for i in range(n_slices):
        ds = _identify(writer.dataset(i, np.full(shape, 1000 + i, dtype=np.int16)))
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
        if pixel_fn is not None:
            jj, ii = np.mgrid[0:shape[0], 0:shape[1]]
            pts = (ipp + ii[..., None] * spacing * row_dir + jj[..., None] * spacing * col_dir)
            stored = np.asarray(pixel_fn(pts), dtype=float) - float(getattr(ds, "RescaleIntercept", 0))
            ds.PixelData = np.round(stored).astype("<i2" if modality == "CT" else "<u2").tobytes()
        paths.append(save(ds, folder / (file_names[i] if file_names else f"{modality}{i:03d}.dcm")))
        zs.append(z)
    return SeriesInfo(modality, study_uid, writer.ref.series_uid, for_uid, study_date, paths,
                      list(writer.ref.sop_uids), zs)


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
    for_uid = ref_for_uid or (referenced.for_uid if referenced else uid(f"{key}/for"))
    image = None
    if referenced is not None:
        image = SeriesRef(referenced.series_uid, CT_IMAGE if referenced.modality == "CT" else MR_IMAGE,
                          list(referenced.sop_uids))
    slice_zs = referenced.z_positions if referenced else [0.0]
    zs = contour_z if contour_z is not None else slice_zs
    ang = np.linspace(0, 2 * np.pi, contour_points, endpoint=False)
    cx, cy = contour_centre_xy
    # (index of the nearest referenced slice, points): the writer references that image from the contour
    circle = [(int(np.argmin(np.abs(np.asarray(slice_zs) - z))),
               np.stack([cx + contour_radius * np.cos(ang), cy + contour_radius * np.sin(ang), np.full_like(ang, z)],
                        axis=1)) for z in zs]
    rois = [RoiSpec(name, name, "CTV" if "ctv" in name.lower() else "ORGAN", (255, 0, 0)) for name in roi_names]
    ds = rtstruct_dataset(rois, {name: circle for name in roi_names}, image, _patient(patient_id),
                          _study(study_uid, study_date, for_uid), uid_seed=key, label="RTSTRUCT",
                          reference_series=reference_series)
    ds.SeriesDescription = f"Structures {key}"
    if undefined_length:
        undefined_lengths(ds)
    save(_identify(ds), path)
    return ds.SOPInstanceUID


def write_rtdose(path: Path, key: str, patient_id: str, study_uid: str, study_date: str,
                 for_uid: str, *, rtplan_sop: str | None = None, rtstruct_sop: str | None = None,
                 summation: str = "PLAN", shape: tuple[int, int, int] = (3, 6, 6),
                 dose_gy: np.ndarray | None = None, origin: tuple[float, float, float] = (-9.0, -9.0, -10.0),
                 spacing: tuple[float, float, float] = (3.0, 3.0, 2.5),
                 orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0), units: str = "GY",
                 scaling: float = 0.001, bits: int = 32, absolute_offsets: bool = False) -> str:
    """A multi-frame RTDOSE grid (Gy) on `for_uid`, written by the generator's RTDOSE writer.

    Default: 60 Gy everywhere on a (3, 6, 6) grid. `dose_gy` (z, y, x) gives the values instead;
    `spacing` is (x, y, z) mm; `bits` 16 or 32 is the stored integer type; `absolute_offsets`
    writes GridFrameOffsetVector as z positions instead of offsets from the first frame;
    `orientation` and `units` override what the writer puts in those tags.
    """
    if dose_gy is not None:
        shape = tuple(int(v) for v in dose_gy.shape)  # type: ignore[assignment]
    nz, ny, nx = shape
    stored = np.full(shape, 60000) if dose_gy is None else np.round(np.asarray(dose_gy) / scaling)
    grid = Grid((nx, ny, nz), tuple(float(v) for v in spacing), tuple(float(v) for v in origin))
    ds = rtdose_dataset(stored.astype(np.uint32), f"{scaling:g}", grid, _patient(patient_id),
                        _study(study_uid, study_date, for_uid), uid_seed=key, summation=summation,
                        series_number=1, referenced_plan_uid=rtplan_sop, referenced_rtstruct_uid=rtstruct_sop)
    ds.ImagePositionPatient = [float(v) for v in origin]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    offsets = [spacing[2] * i for i in range(nz)]
    ds.GridFrameOffsetVector = [origin[2] + o for o in offsets] if absolute_offsets else offsets
    ds.DoseUnits = units
    if bits == 16:
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelData = stored.astype(np.uint16).tobytes()
    save(_identify(ds), path)
    return ds.SOPInstanceUID


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
