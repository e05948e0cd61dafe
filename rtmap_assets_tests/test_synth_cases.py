"""Export cases of the synthetic generator (issue 9): one small patient per case, its DICOM checked with
pydicom against the same seed's standard export (same anatomy, dose and noise), and the truth's
expected outcome. Also the writer's patient-position layout (fast, no generation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pydicom
import pytest

from rtmap_assets.config import load_trial_config
from rtmap_synth.cohort import (
    GAP_REFUSAL_CODE, IRREGULAR_NOMINAL_MM, IRREGULAR_STEPS_MM, JITTER_MM, LEVEL_CTV_NAMES, GeneratorSettings,
    _boost_split_gy, generate_patient,
)
from rtmap_synth.dicom_write import Layout
from rtmap_synth.evaluation import refusal_mismatch, truth_mismatches
from rtmap_synth.phantom import Grid

CONFIG = load_trial_config()
TINY = GeneratorSettings(ct_shape=(48, 48, 16), ct_spacing=(3.0, 3.0, 4.0), layout="nested")


# -- the writer's layout per patient position (no generation) ------------------------------------
@pytest.mark.parametrize("position, iop, flip_rows, flip_cols, reverse_slices", [
    ("HFS", [1, 0, 0, 0, 1, 0], False, False, False),
    ("HFP", [-1, 0, 0, 0, -1, 0], True, True, False),
    ("FFS", [-1, 0, 0, 0, 1, 0], False, True, True),
    ("FFP", [1, 0, 0, 0, -1, 0], True, False, True),
])
def test_layout_maps_stored_pixels_to_the_same_patient_point(position, iop, flip_rows, flip_cols, reverse_slices):
    g = Grid((4, 3, 5), (2.0, 3.0, 4.0), (-3.0, -3.0, -8.0))
    lay = Layout(position)
    assert [int(v) for v in lay.iop] == iop
    assert lay.stored_slice(0, 5) == (4 if reverse_slices else 0)
    logical = np.arange(12).reshape(3, 4)  # value = 4 j + i at x = -3 + 2 i, y = -3 + 3 j
    stored = lay.pixels(logical)
    x0, y0 = lay.corner_xy(g)
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    for r in range(3):
        for c in range(4):
            x, y, _ = np.array([x0, y0, 0.0]) + c * 2.0 * row + r * 3.0 * col  # DICOM pixel -> patient mm
            assert stored[r, c] == 4 * int(round((y + 3) / 3)) + int(round((x + 3) / 2))
    assert (stored[0, 0] != logical[0, 0]) == (flip_rows or flip_cols)


# -- generated cases ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def make(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth-cases")
    made: dict[str, tuple[Path, dict]] = {}

    def _make(export_case: str) -> tuple[Path, dict]:
        if export_case not in made:
            pid = f"C-{export_case}"
            truth = generate_patient(root / "raw", root / "truth", pid, seed=5, arm="A", case="inside",
                                     settings=TINY, config=CONFIG, export_case=export_case)
            made[export_case] = (root / "raw" / pid, truth)
        return made[export_case]

    return _make


def _planning(folder: Path, modality: str) -> list[pydicom.Dataset]:
    out = [pydicom.dcmread(f) for f in sorted(folder.rglob("*.dcm"))]
    return [ds for ds in out if ds.Modality == modality and ds.StudyDescription.startswith("RT planning")]


def _ct_volume(folder: Path) -> tuple[np.ndarray, np.ndarray, list[pydicom.Dataset]]:
    """Planning CT as a logical (z, y, x increasing) volume, reoriented from IOP/IPP alone (independent of
    the writer), with its slice positions."""
    slices = sorted(_planning(folder, "CT"), key=lambda d: float(d.ImagePositionPatient[2]))
    vol = []
    for ds in slices:
        a = ds.pixel_array
        iop = [float(v) for v in ds.ImageOrientationPatient]
        if iop[0] < 0:
            a = a[:, ::-1]
        if iop[4] < 0:
            a = a[::-1, :]
        vol.append(a)
    return np.stack(vol), np.array([float(d.ImagePositionPatient[2]) for d in slices]), slices


def _dose_volume(ds: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stored logical (z, y, x) array, z of each logical frame, xy corner of logical [0, 0])."""
    iop = [float(v) for v in ds.ImageOrientationPatient]
    normal_z = np.cross(iop[:3], iop[3:])[2]
    z = float(ds.ImagePositionPatient[2]) + normal_z * np.asarray(ds.GridFrameOffsetVector, float)
    a = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    sx, sy = float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])
    x0, y0 = float(ds.ImagePositionPatient[0]), float(ds.ImagePositionPatient[1])
    if iop[0] < 0:
        a, x0 = a[:, :, ::-1], x0 - (ds.Columns - 1) * sx
    if iop[4] < 0:
        a, y0 = a[:, ::-1, :], y0 - (ds.Rows - 1) * sy
    order = np.argsort(z)
    return a[order], z[order], np.array([x0, y0])


def _contours(folder: Path) -> dict[str, list[tuple[float, ...]]]:
    rs = _planning(folder, "RTSTRUCT")[0]
    names = {r.ROINumber: r.ROIName for r in rs.StructureSetROISequence}
    return {names[c.ReferencedROINumber]: sorted(tuple(float(v) for v in s.ContourData) for s in c.ContourSequence)
            for c in rs.ROIContourSequence}


@pytest.mark.slow
def test_level_named_ctvs(make):
    folder, truth = make("level_names")
    _, standard = make("standard")
    names = set(_contours(folder))
    levels = [lv for lv, p in truth["prescriptions"].items() if p > 0]
    families = [{LEVEL_CTV_NAMES[lv][s] for lv in levels} for s in (0, 1)]
    assert families[0] <= names or families[1] <= names
    assert not any(n.upper().startswith("CTV") and any(ch.isdigit() for ch in n) for n in names)  # no dose in names
    assert truth["ctv_naming"] == "level" and truth["structure_names"]["ctv_high"] in LEVEL_CTV_NAMES["high"]
    assert truth["expected"]["outcome"] == "classified" and truth["classes"] == standard["classes"]


@pytest.mark.slow
def test_per_beam_doses_sum_to_the_plan(make):
    folder, truth = make("per_beam")
    std_folder, _ = make("standard")
    beams = _planning(folder, "RTDOSE")
    plan = _planning(std_folder, "RTDOSE")[0]
    assert len(beams) >= 3 and {d.DoseSummationType for d in beams} == {"BEAM"}
    plan_uids = {d.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID for d in beams}
    numbers = sorted(d.ReferencedRTPlanSequence[0].ReferencedFractionGroupSequence[0].ReferencedBeamSequence[0]
                     .ReferencedBeamNumber for d in beams)
    assert len(plan_uids) == 1 and numbers == list(range(1, len(beams) + 1))
    assert {d.DoseGridScaling for d in beams} == {plan.DoseGridScaling}
    total = np.sum([d.pixel_array.astype(np.int64) for d in beams], axis=0)
    np.testing.assert_array_equal(total, plan.pixel_array)  # exact in stored units
    assert all(d.pixel_array.max() < 0.7 * plan.pixel_array.max() for d in beams)  # each beam a real share
    assert [d["dose_summation_type"] for d in truth["dose_files"]] == ["BEAM"] * len(beams)


@pytest.mark.slow
def test_boost_plan_adds_up_to_the_prescription(make):
    folder, truth = make("boost")
    std_folder, _ = make("standard")
    doses = {d.SeriesDescription: d for d in _planning(folder, "RTDOSE")}
    plan = _planning(std_folder, "RTDOSE")[0]
    main, boost = doses["Main plan"], doses["Boost plan"]
    assert main.DoseSummationType == boost.DoseSummationType == "PLAN"
    ct_for = _planning(folder, "CT")[0].FrameOfReferenceUID
    assert main.FrameOfReferenceUID == boost.FrameOfReferenceUID == ct_for
    assert (main.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID
            != boost.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID)
    scale = float(main.DoseGridScaling)
    split = _boost_split_gy(truth["prescriptions"])
    assert main.pixel_array.max() * scale == pytest.approx(split, abs=1e-4)
    assert boost.NumberOfFrames * boost.Rows * boost.Columns < main.NumberOfFrames * main.Rows * main.Columns
    # the boost's own grid lies on the main grid's lattice: place it and sum
    m, mz, mxy = _dose_volume(main)
    b, bz, bxy = _dose_volume(boost)
    sp = float(main.PixelSpacing[0])
    i0, j0 = np.round((bxy - mxy) / sp).astype(int)
    k0 = int(np.argmin(np.abs(mz - bz[0])))
    total = m.astype(np.int64)
    total[k0:k0 + b.shape[0], j0:j0 + b.shape[1], i0:i0 + b.shape[2]] += b
    np.testing.assert_array_equal(total, plan.pixel_array)
    assert (total.max() * scale) == pytest.approx(max(truth["prescriptions"].values()), rel=0.15)


@pytest.mark.slow
@pytest.mark.parametrize("export_case, position, iop", [("ffs", "FFS", [-1, 0, 0, 0, 1, 0]),
                                                        ("hfp", "HFP", [-1, 0, 0, 0, -1, 0]),
                                                        ("ffp", "FFP", [1, 0, 0, 0, -1, 0])])
def test_patient_positions_keep_the_anatomy_in_place(make, export_case, position, iop):
    folder, truth = make(export_case)
    std_folder, standard = make("standard")
    vol, z, slices = _ct_volume(folder)
    std_vol, std_z, std_slices = _ct_volume(std_folder)
    assert {d.PatientPosition for d in slices} == {position} and truth["planning_patient_position"] == position
    assert all([int(float(v)) for v in d.ImageOrientationPatient] == iop for d in slices)
    np.testing.assert_allclose(z, std_z)
    np.testing.assert_array_equal(vol, std_vol)  # same HU at the same patient point
    # first stored pixel is where the IOP says: the far corner along an axis the image runs against
    ipp = [float(v) for v in slices[0].ImagePositionPatient]
    std_ipp = [float(v) for v in std_slices[0].ImagePositionPatient]
    nx, sx = slices[0].Columns, float(slices[0].PixelSpacing[1])
    ny, sy = slices[0].Rows, float(slices[0].PixelSpacing[0])
    assert ipp[0] == pytest.approx(std_ipp[0] + (nx - 1) * sx if iop[0] < 0 else std_ipp[0])
    assert ipp[1] == pytest.approx(std_ipp[1] + (ny - 1) * sy if iop[4] < 0 else std_ipp[1])
    if position.startswith("FF"):  # slices numbered along the normal (-z): instance 1 is the most superior slice
        first = min(slices, key=lambda d: int(d.InstanceNumber))
        assert float(first.ImagePositionPatient[2]) == pytest.approx(z.max())
    assert _contours(folder) == _contours(std_folder)  # structures at the same anatomical place
    dose, dz, dxy = _dose_volume(_planning(folder, "RTDOSE")[0])
    std_dose, std_dz, std_dxy = _dose_volume(_planning(std_folder, "RTDOSE")[0])
    np.testing.assert_allclose(dz, std_dz)
    np.testing.assert_allclose(dxy, std_dxy)
    np.testing.assert_array_equal(dose, std_dose)
    assert truth["classes"] == standard["classes"]


@pytest.mark.slow
def test_jittered_slices(make):
    folder, truth = make("jitter")
    _, z, slices = _ct_volume(folder)
    lattice = truth["planning_grid"]["origin"][2] + TINY.ct_spacing[2] * np.arange(len(z))
    dev = np.abs(z - lattice)
    assert dev.max() <= JITTER_MM + 1e-9 and dev.max() > 0.5 * JITTER_MM
    assert {float(d.SliceThickness) for d in slices} == {TINY.ct_spacing[2]}
    np.testing.assert_allclose(z, truth["planning_grid"]["slice_z_mm"])
    assert truth["expected"]["outcome"] == "classified"


@pytest.mark.slow
def test_irregular_steps(make):
    folder, truth = make("irregular")
    _, z, slices = _ct_volume(folder)
    steps = np.diff(z)
    lo, hi = IRREGULAR_STEPS_MM
    assert steps.min() == pytest.approx(lo, abs=2e-3) and steps.max() == pytest.approx(hi, abs=2e-3)
    assert np.all((steps >= lo - 2e-3) & (steps <= hi + 2e-3))
    assert {float(d.SliceThickness) for d in slices} == {IRREGULAR_NOMINAL_MM}
    lattice = z[0] + IRREGULAR_NOMINAL_MM * np.arange(len(z))
    assert np.abs(z - lattice).max() < 1.5  # irregular, but no drift away from the nominal series
    # the anatomy is sampled at the true positions: same contours' z as the slices
    zs = {round(c[2], 3) for cs in _contours(folder).values() for c in cs}
    assert zs <= {round(v, 3) for v in z}


@pytest.mark.slow
def test_gap_is_a_missing_slice_the_pipeline_must_refuse(make):
    folder, truth = make("gap")
    _, z, _ = _ct_volume(folder)
    expected = truth["expected"]
    assert expected["outcome"] == "refused" and expected["code"] == GAP_REFUSAL_CODE
    assert len(z) == TINY.ct_shape[2] - 1
    assert expected["missing_slice_z_mm"] not in set(np.round(z, 3))
    steps = np.diff(z)
    assert steps.max() == pytest.approx(2 * TINY.ct_spacing[2]) == pytest.approx(expected["gap_mm"])
    assert np.sum(steps > 1.5 * TINY.ct_spacing[2]) == 1
    # evaluation: a refusal with the expected code agrees with the truth; classifying it does not
    assert refusal_mismatch([GAP_REFUSAL_CODE], truth) is None
    assert "expected refusal" in refusal_mismatch(["SOMETHING_ELSE"], truth)
    rows = pl.DataFrame({"level": ["high"], "arm": [truth["arm"]], "level_present": [True]})
    assert truth_mismatches(rows, truth) and not truth_mismatches(rows.clear(), truth)
