"""DICOM readers: series geometry checks, RTDOSE scaling/frame offsets, RTSTRUCT rasterisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from rtmap_assets.dicom.readers import RTStruct, rasterise, read_image_series, read_rtdose, read_rtstruct
from rtmap_assets.errors import PatientDataError

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
DOSE_CLASS = "1.2.840.10008.5.1.4.1.1.481.2"
RS_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


def _dataset(path: Path, sop_class: str, modality: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.FrameOfReferenceUID = "1.2.3.4"
    return ds


def write_ct(folder: Path, volume_zyx: np.ndarray, *, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0),
             z_positions=None, iop=(1, 0, 0, 0, 1, 0), slope=1.0, intercept=-1024.0, shear=None) -> list[Path]:
    """One file per slice, written in shuffled order; stored = (HU - intercept) / slope."""
    folder.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = volume_zyx.shape
    zs = z_positions if z_positions is not None else [origin[2] + k * spacing[2] for k in range(nz)]
    paths = []
    for k in np.random.default_rng(0).permutation(nz):
        p = folder / f"slice_{k:03d}.dcm"
        ds = _dataset(p, CT_CLASS, "CT")
        ipp = [origin[0], origin[1], zs[k]]
        if shear is not None:
            ipp[0] += shear * k
        ds.ImagePositionPatient = [float(v) for v in ipp]
        ds.ImageOrientationPatient = list(iop)
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.InstanceNumber = int(nz - k)
        ds.PixelData = np.round((volume_zyx[k] - intercept) / slope).astype(np.uint16).tobytes()
        ds.save_as(str(p), write_like_original=False)
        paths.append(p)
    return paths


def write_dose(path: Path, dose_gy_zyx: np.ndarray, *, scaling: float, origin, spacing, offsets) -> Path:
    ds = _dataset(path, DOSE_CLASS, "RTDOSE")
    nz, ny, nx = dose_gy_zyx.shape
    ds.ImagePositionPatient = [float(v) for v in origin]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [spacing[1], spacing[0]]
    ds.Rows, ds.Columns, ds.NumberOfFrames = ny, nx, nz
    ds.GridFrameOffsetVector = [float(v) for v in offsets]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 32
    ds.HighBit, ds.PixelRepresentation = 31, 0
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN"
    ds.DoseGridScaling = f"{scaling:g}"
    ds.PixelData = np.round(dose_gy_zyx / scaling).astype(np.uint32).tobytes()
    ds.save_as(str(path), write_like_original=False)
    return path


def write_rtstruct(path: Path, structures: dict[str, list[np.ndarray]]) -> Path:
    ds = _dataset(path, RS_CLASS, "RTSTRUCT")
    from pydicom.sequence import Sequence
    from pydicom.dataset import Dataset

    rois, roi_contours = [], []
    for number, (name, contours) in enumerate(structures.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, "1.2.3.4"
        rois.append(roi)
        rc = Dataset()
        rc.ReferencedROINumber = number
        seq = []
        for pts in contours:
            c = Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(pts)
            c.ContourData = [f"{v:.4f}" for v in np.asarray(pts).ravel()]
            seq.append(c)
        rc.ContourSequence = Sequence(seq)
        roi_contours.append(rc)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(roi_contours)
    fr = Dataset()
    fr.FrameOfReferenceUID = "1.2.3.4"
    ds.ReferencedFrameOfReferenceSequence = Sequence([fr])
    ds.save_as(str(path), write_like_original=False)
    return path


def circle(cx: float, cy: float, r: float, z: float, n: int = 128) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t), np.full(n, z)])


def sphere_contours(centre, radius: float, z_planes) -> list[np.ndarray]:
    out = []
    for z in z_planes:
        d = abs(z - centre[2])
        if d < radius:
            out.append(circle(centre[0], centre[1], np.sqrt(radius**2 - d**2), z))
    return out


def grid(size, spacing, origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    img = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    return img


# ----------------------------------------------------------------------------------------- series


def test_series_sorted_by_position_and_rescaled(tmp_path):
    vol = np.stack([np.full((6, 5), 100.0 * k - 1000.0) for k in range(8)]).astype(np.float32)
    files = write_ct(tmp_path, vol, spacing=(0.8, 0.9, 2.5), origin=(-10.0, 5.0, 30.0), slope=2.0, intercept=-1024.0)
    img = read_image_series(files)
    assert img.GetSize() == (5, 6, 8)
    assert img.GetSpacing() == pytest.approx((0.8, 0.9, 2.5))
    assert img.GetOrigin() == pytest.approx((-10.0, 5.0, 30.0))
    arr = sitk.GetArrayViewFromImage(img)
    assert arr.dtype == np.float32
    assert arr[:, 0, 0] == pytest.approx(vol[:, 0, 0])  # slice order follows z, HU after slope/intercept


@pytest.mark.parametrize("form", ["uint16 slope 1", "int16 slope 0.37", "int32 implicit VR", "12 of 16 bits signed",
                                  "8 bits", "RLE compressed"])
def test_series_pixels_equal_pydicoms_pixel_array_rescaled(tmp_path, form):
    """The series reader views uncompressed little-endian pixel bytes directly and rescales in place: the
    volume equals the former `pixel_array.astype(float32) * slope + intercept` bit for bit, for signed,
    unsigned, 8/16/32-bit, implicit-VR and (through pydicom's handler) compressed slices."""
    from pydicom.uid import ImplicitVRLittleEndian, RLELossless

    from rtmap_assets.dicom.readers import _stored_pixels

    rng = np.random.default_rng(5)
    bits, signed, slope, intercept = {
        "uint16 slope 1": (16, 0, 1.0, -1024.0), "int16 slope 0.37": (16, 1, 0.37, -10.25),
        "int32 implicit VR": (32, 1, 1.5, 3.0), "12 of 16 bits signed": (16, 1, 1.0, 0.0),
        "8 bits": (8, 0, 4.0, -512.0), "RLE compressed": (16, 1, 0.5, -1000.0)}[form]
    files = write_ct(tmp_path, np.zeros((4, 6, 5), np.float32), slope=slope, intercept=intercept)
    expected = {}
    for p in files:
        ds = pydicom.dcmread(str(p))
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed else (0, 2**bits)
        if form == "12 of 16 bits signed":
            lo, hi = -2048, 2048
        stored = rng.integers(lo, hi, size=(6, 5)).astype(f"{'i' if signed else 'u'}{bits // 8}")
        stored_bits = 12 if "12" in form else bits
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, stored_bits, stored_bits - 1
        ds.PixelRepresentation = signed
        ds.PixelData = stored.tobytes()
        if form == "int32 implicit VR":
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            ds.is_implicit_VR = True
        if form == "RLE compressed":
            ds.compress(RLELossless)
        ds.save_as(str(p), write_like_original=False)
        ds = pydicom.dcmread(str(p))
        assert np.array_equal(_stored_pixels(ds), ds.pixel_array) and _stored_pixels(ds).dtype == ds.pixel_array.dtype
        z = float(ds.ImagePositionPatient[2])
        expected[z] = ds.pixel_array.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    got = sitk.GetArrayFromImage(read_image_series(files))
    want = np.stack([expected[z] for z in sorted(expected)])
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert len(np.unique(got)) > 20  # real, varied values were compared


def test_missing_slice_is_a_clear_error(tmp_path):
    vol = np.zeros((6, 4, 4), np.float32)
    zs = [0.0, 2.0, 4.0, 8.0, 10.0, 12.0]  # 6.0 is missing
    files = write_ct(tmp_path, vol, z_positions=zs)
    with pytest.raises(PatientDataError) as err:
        read_image_series(files)
    assert err.value.code == "SERIES_GAP"  # was SERIES_NONUNIFORM_SPACING before rule 15
    assert "4.000 mm between positions 4.000 and 8.000" in err.value.message
    assert "missing slice" in err.value.message


def test_gantry_tilt_and_mixed_orientation_refused(tmp_path):
    vol = np.zeros((5, 4, 4), np.float32)
    with pytest.raises(PatientDataError) as err:
        read_image_series(write_ct(tmp_path / "tilt", vol, shear=0.5))
    assert err.value.code == "SERIES_GANTRY_TILT"
    files = write_ct(tmp_path / "mixed", vol)
    ds = pydicom.dcmread(str(files[0]))
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9, 0.43589]
    ds.save_as(str(files[0]))
    with pytest.raises(PatientDataError) as err:
        read_image_series(files)
    assert err.value.code == "SERIES_MIXED_ORIENTATION"


def test_sagittal_series_keeps_its_direction(tmp_path):
    vol = np.zeros((4, 6, 5), np.float32)
    # rows along -z, columns along +y, normal = row x col = (0,1,0)x(0,0,-1) = (-1,0,0)
    files = write_ct(tmp_path, vol, iop=(0, 1, 0, 0, 0, -1), spacing=(1.0, 1.0, 3.0))
    for k, f in enumerate(sorted(files)):
        ds = pydicom.dcmread(str(f))
        ds.ImagePositionPatient = [-3.0 * k, 0.0, 0.0]
        ds.save_as(str(f))
    img = read_image_series(files)
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    assert direction[:, 2] == pytest.approx([-1, 0, 0])
    assert img.GetSpacing()[2] == pytest.approx(3.0)


# ----------------------------------------------------------------------------------------- RTDOSE


@pytest.mark.parametrize("form", ["relative", "absolute"])
def test_dose_scaling_and_frame_offsets(tmp_path, form):
    dose = np.random.default_rng(1).uniform(0, 70, (5, 4, 3))
    origin = (-5.0, 2.0, 40.0)
    rel = np.arange(5) * 2.5
    offsets = rel if form == "relative" else rel + origin[2]
    img = read_rtdose(write_dose(tmp_path / "rd.dcm", dose, scaling=1e-4, origin=origin, spacing=(3.0, 2.0),
                                 offsets=offsets))
    assert img.GetSpacing() == pytest.approx((3.0, 2.0, 2.5))
    assert img.GetOrigin() == pytest.approx(origin)
    assert sitk.GetArrayViewFromImage(img) == pytest.approx(dose, abs=1e-4)


def test_dose_bad_offsets_refused(tmp_path):
    dose = np.ones((3, 2, 2))
    with pytest.raises(PatientDataError) as err:
        read_rtdose(write_dose(tmp_path / "rd.dcm", dose, scaling=1e-3, origin=(0, 0, 10.0), spacing=(1, 1),
                               offsets=[5.0, 7.0, 9.0]))
    assert err.value.code == "RTDOSE_FRAME_OFFSETS"
    with pytest.raises(PatientDataError) as err:
        read_rtdose(write_dose(tmp_path / "rd2.dcm", dose, scaling=1e-3, origin=(0, 0, 10.0), spacing=(1, 1),
                               offsets=[0.0, 2.0, 5.0]))
    assert err.value.code == "SERIES_NONUNIFORM_SPACING"


# ----------------------------------------------------------------------------------------- RTSTRUCT


def test_rtstruct_roundtrip_and_sphere_rasterisation(tmp_path):
    centre, radius = (1.3, -2.1, 0.7), 15.0
    planes = np.arange(-30.0, 30.1, 2.0)
    path = write_rtstruct(tmp_path / "rs.dcm", {"Sphere": sphere_contours(centre, radius, planes), "Empty": []})
    rs = read_rtstruct(path)
    assert rs.names == ["Sphere", "Empty"] and rs.frame_of_reference_uid == "1.2.3.4"
    ref = grid((40, 40, 31), (1.0, 1.0, 2.0), (-20.0, -20.0, -30.0))
    mask = rasterise(rs, "Sphere", ref)
    arr = sitk.GetArrayViewFromImage(mask).astype(bool)
    true_volume = 4 / 3 * np.pi * radius**3
    assert arr.sum() * 2.0 == pytest.approx(true_volume, rel=0.05)
    # boundary within one voxel: voxels inside r-1 are set, voxels outside r+1 are not
    k, j, i = np.indices(arr.shape)
    pts = np.stack([-20 + i * 1.0, -20 + j * 1.0, -30 + k * 2.0], -1)
    d = np.linalg.norm(pts - np.asarray(centre), axis=-1)
    # (a slab of 2 mm stands for one plane, so the z-boundary may move by one plane = 2 mm)
    assert arr[d < radius - 2.0].all()
    assert not arr[d > radius + 2.0].any()
    assert rasterise(rs, "Empty", ref).GetSize() == ref.GetSize()
    assert sitk.GetArrayFromImage(rasterise(rs, "Empty", ref)).sum() == 0
    with pytest.raises(PatientDataError):
        rasterise(rs, "Nope", ref)


@pytest.mark.parametrize("implicit_vr", [False, True])
def test_contour_data_parsed_from_raw_bytes_equals_pydicom(tmp_path, implicit_vr):
    """ContourData is parsed from the element's bytes (not pydicom's per-value DSfloat): the same float64
    values to the last bit for every textual form a DS may take (exponents, signs, padding, 16 characters),
    in explicit and implicit VR files; an item pydicom has already converted goes through pydicom."""
    values = ["1.5", "-0.0", "+2", "1e-3", "-1.25E+02", " 3.25", "0.1", "-123.456789012", "7",
              "1.0000000000001", "12345678.9012345", ".5"]
    path = write_rtstruct(tmp_path / "rs.dcm", {"A": [np.zeros((4, 3))]})
    ds = pydicom.dcmread(str(path))
    ds.ROIContourSequence[0].ContourSequence[0].ContourData = values
    if implicit_vr:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        ds.is_implicit_VR = True
    ds.save_as(str(path), write_like_original=False)
    got = read_rtstruct(path).contours["A"][0]
    expected = np.asarray(pydicom.dcmread(str(path)).ROIContourSequence[0].ContourSequence[0].ContourData,
                          dtype=float).reshape(-1, 3)
    assert got.shape == (4, 3) and np.array_equal(got.view(np.int64), expected.view(np.int64))
    assert got[0, 1] == 0.0 and np.signbit(got[0, 1]) and got[1, 1] == -125.0

    from rtmap_assets.dicom.readers import _contour_points

    item = pydicom.dcmread(str(path)).ROIContourSequence[0].ContourSequence[0]
    _ = item.ContourData  # converted by pydicom: no raw bytes left
    assert np.array_equal(_contour_points(item), expected)


def test_ring_with_hole_is_even_odd():
    contours = []
    for z in (0.0, 1.0, 2.0):
        contours += [circle(0, 0, 10.0, z), circle(0, 0, 5.0, z)]
    ref = grid((41, 41, 3), (0.5, 0.5, 1.0), (-10.0, -10.0, 0.0))
    arr = sitk.GetArrayFromImage(rasterise(contours, None, ref)).astype(bool)
    area = arr[1].sum() * 0.25
    assert area == pytest.approx(np.pi * (10**2 - 5**2), rel=0.04)
    assert not arr[1, 20, 20]  # centre is in the hole
    assert arr[1, 20, 20 + 15]  # x = 7.5 mm is in the ring


def test_contours_between_slices_go_to_nearest_slice_and_coarser_grid_does_not_xor():
    # contour planes every 1 mm at z = 0.4 .. 9.4; the target grid has slices every 2 mm at 0..10
    contours = [circle(0, 0, 6.0, 0.4 + k) for k in range(10)]
    ref = grid((21, 21, 6), (1.0, 1.0, 2.0), (-10.0, -10.0, 0.0))
    arr = sitk.GetArrayFromImage(rasterise(contours, None, ref))
    per_slice = arr.reshape(6, -1).sum(axis=1)
    assert per_slice[0] > 0 and per_slice[1:5].min() > 100  # every covered slice is filled, none XOR-ed away
    # the contours' slab is -0.1 .. 9.9 mm: slice 0 (-1..1 mm) is 0.55 inside it, slice 5 (9..11 mm) 0.45;
    # the volume is kept (4 full slices + the rest) and the better-covered end slice gets more of the rest
    area_mm2 = 0.5 * 128 * 36.0 * np.sin(2 * np.pi / 128)
    assert per_slice.sum() * 2.0 == pytest.approx(area_mm2 * 10.0, abs=2.0)
    assert per_slice[0] > per_slice[5] > 0
    # a single plane between two slices (z = 3.2) lands on the nearest slice (z = 4)
    arr2 = sitk.GetArrayFromImage(rasterise([circle(0, 0, 6.0, 3.2)], None, ref))
    assert arr2.reshape(6, -1).sum(axis=1).nonzero()[0].tolist() == [2]


def test_contour_not_in_slice_plane_refused():
    tilted = circle(0, 0, 5.0, 0.0)
    tilted[:, 2] = tilted[:, 0] * 0.5
    with pytest.raises(PatientDataError) as err:
        rasterise(RTStruct(None, {"T": [tilted]}), "T", grid((10, 10, 10), (1, 1, 1), (-5, -5, -5)))
    assert err.value.code == "CONTOUR_NOT_IN_SLICE_PLANE"
