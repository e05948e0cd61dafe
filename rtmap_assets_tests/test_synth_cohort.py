"""Synthetic DICOM-RT cohort: files readable by pydicom/SimpleITK, contours and dose round-trip,
ground truth consistent with the requested cases, determinism per seed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy.interpolate import RegularGridInterpolator
from skimage.draw import polygon

from rtmap_assets.config import LEVELS, load_trial_config
from rtmap_assets.naming import first_match
from rtmap_synth.cli import main_synth
from rtmap_synth.cohort import GeneratorSettings, generate_cohort, generate_patient
from rtmap_synth.phantom import Ellipsoid, Grid, Phantom
from rtmap_synth.truth import tre_points
from rtmap_synth.warp import RelapseWarp

CONFIG = load_trial_config()
TINY = GeneratorSettings(ct_shape=(48, 48, 16), ct_spacing=(3.0, 3.0, 4.0), layout="flat")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("synth")
    truths = generate_cohort(root / "raw", root / "truth", root / "covariates" / "trial.csv", n_patients=6, seed=0,
                             settings=GeneratorSettings(), config=CONFIG)
    return root, truths


def _datasets(folder: Path, **stop) -> list[tuple[Path, pydicom.Dataset]]:
    return [(f, pydicom.dcmread(f, **stop)) for f in sorted(folder.rglob("*")) if f.is_file()]


def _by_uid(folder: Path) -> dict[str, pydicom.Dataset]:
    return {ds.SOPInstanceUID: ds for _, ds in _datasets(folder)}


def _rasterise(rs: pydicom.Dataset, roi_name: str, g: Grid) -> np.ndarray:
    """Independent rasteriser: each CLOSED_PLANAR contour filled with skimage.draw.polygon, XOR per slice."""
    number = next(r.ROINumber for r in rs.StructureSetROISequence if r.ROIName == roi_name)
    roi = next(c for c in rs.ROIContourSequence if c.ReferencedROINumber == number)
    nx, ny, nz = g.shape
    out = np.zeros((nz, ny, nx), bool)
    for c in roi.ContourSequence:
        assert c.ContourGeometricType == "CLOSED_PLANAR"
        pts = np.asarray(c.ContourData, float).reshape(-1, 3)
        assert len(pts) == c.NumberOfContourPoints
        k = int(round((pts[0, 2] - g.origin[2]) / g.spacing[2]))
        rr, cc = polygon((pts[:, 1] - g.origin[1]) / g.spacing[1], (pts[:, 0] - g.origin[0]) / g.spacing[0], (ny, nx))
        sl = np.zeros((ny, nx), bool)
        sl[rr, cc] = True
        out[k] ^= sl
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.sum(a & b) / (np.sum(a) + np.sum(b))


def _relapse_points(g: Grid, warp: RelapseWarp):
    q = g.points()
    p = warp.relapse_to_planning(q)
    shp = (g.shape[2], g.shape[1], g.shape[0])
    return tuple(p[:, i].reshape(shp) for i in range(3))


# -- cohort-level -------------------------------------------------------------------------------
def test_cohort_covers_arms_and_cases_with_consistent_truth(cohort):
    root, truths = cohort
    assert [t["patient_id"] for t in truths] == [f"SYN-{i:03d}" for i in range(1, 7)]
    assert {t["arm"] for t in truths} == {"A", "B", "C"}
    assert {t["case"] for t in truths} == {"inside", "peripheral", "outside"}
    expected_volume_class = {"inside": 1, "peripheral": 2, "outside": 0}
    for t in truths:
        on_disk = json.loads((root / "truth" / CONFIG.trial / f"{t['patient_id']}.json").read_text())
        assert on_disk == json.loads(json.dumps(t))
        assert t["prescriptions"] == CONFIG.prescriptions(t["arm"])
        assert t["classes"]["high"]["volume_class"] == expected_volume_class[t["case"]]
        for lv in LEVELS:
            assert (t["classes"][lv] is None) == (t["prescriptions"][lv] == 0)
        if t["case"] == "inside":
            assert t["mohamed"] == "A" and t["classes"]["high"]["centroid_class"] == 1
        assert t["mohamed"] in "ABCDE"
        assert t["sphere_radius_mm"] == CONFIG.uncertainty.radius_mm
        assert 6 * 0.85 - 1e-6 <= min(t["recurrence"]["radii_mm"]) and max(t["recurrence"]["radii_mm"]) <= 10 * 1.15
        assert t["mean_displacement_mm"] == pytest.approx(13.0, abs=0.05)
    with (root / "covariates" / "trial.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["patient_id"] for r in rows] == [t["patient_id"] for t in truths]
    assert [r["arm"] for r in rows] == [t["arm"] for t in truths]
    assert set(rows[0]) == {"patient_id", "arm", "site", "t_stage", "n_stage", "hpv_status", "age_group", "smoking",
                            "months_to_relapse"}
    assert all("-" in r["age_group"] for r in rows)


def test_every_file_reads_with_identifying_tags_and_expected_layout(cohort):
    root, truths = cohort
    for i, t in enumerate(truths):
        folder = root / "raw" / CONFIG.trial / t["patient_id"]
        items = _datasets(folder, stop_before_pixels=True)
        assert len(items) == t["n_files"]
        modalities = {ds.Modality for _, ds in items}
        assert modalities == {"CT", "RTSTRUCT", "RTDOSE"}
        for _, ds in items:
            assert ds.PatientID == t["patient_id"]
            assert str(ds.PatientName) == f"Synthetic^Subject{i + 1:03d}"
            assert len(ds.PatientBirthDate) == 8
        nested = any(p.is_dir() for p in folder.iterdir())
        assert nested == (t["layout"] == "nested") == (i % 2 == 1)
        if nested:
            assert any(f.name == "IMG0001.dcm" for f, _ in items)


def test_structure_names_match_the_trial_aliases_and_no_other_dose(cohort):
    _, truths = cohort
    doses = {p for arm in CONFIG.arms.values() for p in arm if p > 0}
    for t in truths:
        names = t["structure_names"]
        for lv in LEVELS:
            p = t["prescriptions"][lv]
            if p == 0:
                assert f"ctv_{lv}" not in names
                continue
            assert first_match([names[f"ctv_{lv}"]], CONFIG.aliases.ctv_for_dose(p))
            for other in doses - {p}:
                assert not first_match([names[f"ctv_{lv}"]], CONFIG.aliases.ctv_for_dose(other))
        assert first_match([names["relapse_recurrence"]], CONFIG.aliases.recurrence)
        assert first_match([names["landmark"]], CONFIG.aliases.landmark)
        assert first_match([names["relapse_landmark"]], CONFIG.aliases.landmark)
        assert first_match([names["body"]], CONFIG.aliases.body)


def test_references_frames_and_dates(cohort):
    root, truths = cohort
    t = truths[1]
    u = t["uids"]
    by_uid = _by_uid(root / "raw" / CONFIG.trial / t["patient_id"])
    ct = [ds for ds in by_uid.values() if ds.get("SeriesInstanceUID") == u["planning_ct_series"]]
    rs, rd = by_uid[u["planning_rtstruct"]], by_uid[u["planning_rtdose"]]
    assert {ds.FrameOfReferenceUID for ds in ct} == {u["planning_frame_of_reference"]} == {rd.FrameOfReferenceUID}
    rfor = rs.ReferencedFrameOfReferenceSequence[0]
    assert rfor.FrameOfReferenceUID == u["planning_frame_of_reference"]
    rser = rfor.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert rser.SeriesInstanceUID == u["planning_ct_series"]
    assert {c.ReferencedSOPInstanceUID for c in rser.ContourImageSequence} == {ds.SOPInstanceUID for ds in ct}
    assert rs.StudyInstanceUID == rd.StudyInstanceUID == u["planning_study"]
    rel = [ds for ds in by_uid.values() if ds.get("SeriesInstanceUID") == u["relapse_image_series"]]
    assert {ds.FrameOfReferenceUID for ds in rel} == {u["relapse_frame_of_reference"]} != {u["planning_frame_of_reference"]}
    assert rel[0].StudyDate > ct[0].StudyDate
    assert by_uid[u["relapse_rtstruct"]].StudyInstanceUID == u["relapse_study"] != u["planning_study"]
    assert rd.DoseUnits == "GY" and rd.DoseType == "PHYSICAL" and rd.DoseSummationType == "PLAN"
    assert rd.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.2" and int(rd.NumberOfFrames) == t["dose_grid"]["shape"][2]


# -- round trips ----------------------------------------------------------------------------------
def test_planning_ct_and_contours_round_trip(cohort):
    root, truths = cohort
    t = truths[0]
    folder = root / "raw" / CONFIG.trial / t["patient_id"]
    g = Grid.from_dict(t["planning_grid"])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), t["uids"]["planning_ct_series"]))
    img = reader.Execute()
    assert img.GetSize() == g.shape
    assert np.allclose(img.GetSpacing(), g.spacing) and np.allclose(img.GetOrigin(), g.origin, atol=1e-4)
    assert np.allclose(img.GetDirection(), np.eye(3).ravel())
    hu = sitk.GetArrayFromImage(img)
    phantom = Phantom.from_dict(t["phantom"])
    masks = phantom.masks(*g.broadcast_axes())
    clean = phantom.hu(*g.broadcast_axes(), masks)
    noise = hu - clean
    assert abs(noise.mean()) < 1.0 and 12 < noise[masks["body"]].std() < 18  # CT noise, sigma 15 HU
    rs = _by_uid(folder)[t["uids"]["planning_rtstruct"]]
    names = t["structure_names"]
    checks = {"body": names["body"], "thyroid_cartilage": names["landmark"], "cord": names["cord"],
              "mandible": names["mandible"]}
    checks.update({f"ctv_{lv}": names[f"ctv_{lv}"] for lv in LEVELS if t["prescriptions"][lv] > 0})
    assert len(checks) >= 7
    for key, roi in checks.items():
        assert _dice(_rasterise(rs, roi, g), masks[key]) >= 0.95, key


def test_relapse_image_and_contours_follow_the_warp(cohort):
    root, truths = cohort
    t = truths[1]
    folder = root / "raw" / CONFIG.trial / t["patient_id"]
    g = Grid.from_dict(t["relapse_grid"])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), t["uids"]["relapse_image_series"], False, True))
    img = reader.Execute()
    assert img.GetSize() == g.shape and np.allclose(img.GetOrigin(), g.origin, atol=1e-4)
    phantom, warp = Phantom.from_dict(t["phantom"]), RelapseWarp.from_dict(t["warp"])
    x, y, z = _relapse_points(g, warp)
    masks = phantom.masks(x, y, z)
    rec = Ellipsoid(tuple(t["recurrence"]["centroid_planning_mm"]), tuple(t["recurrence"]["radii_mm"])).contains(x, y, z)
    arr = sitk.GetArrayFromImage(img)
    expected = phantom.hu(x, y, z, masks) + 30.0 * (rec & masks["body"] & ~masks["airway"])
    assert np.corrcoef(arr[masks["body"]], expected[masks["body"]])[0, 1] > 0.98
    assert np.mean((arr - expected)[rec]) == pytest.approx(0.0, abs=5.0)  # the +30 HU recurrence is there
    rs = _by_uid(folder)[t["uids"]["relapse_rtstruct"]]
    names = t["structure_names"]
    assert rec.sum() > 20
    assert _dice(_rasterise(rs, names["relapse_recurrence"], g), rec) >= 0.95
    assert _dice(_rasterise(rs, names["relapse_landmark"], g), masks["thyroid_cartilage"]) >= 0.95
    assert _dice(_rasterise(rs, names["relapse_mandible"], g), masks["mandible"]) >= 0.95


def test_dose_reads_back_and_truth_uses_it(cohort):
    root, truths = cohort
    for t in truths[:3]:
        folder = root / "raw" / CONFIG.trial / t["patient_id"]
        rd = _by_uid(folder)[t["uids"]["planning_rtdose"]]
        dose = rd.pixel_array.astype(float) * float(rd.DoseGridScaling)  # (frames, rows, cols)
        g = Grid.from_dict(t["dose_grid"])
        assert dose.shape == (g.shape[2], g.shape[1], g.shape[0])
        assert np.allclose(np.asarray(rd.GridFrameOffsetVector, float), np.arange(g.shape[2]) * g.spacing[2])
        phantom = Phantom.from_dict(t["phantom"])
        # At known voxels, the read-back dose equals the analytic dose model (up to quantisation).
        rng = np.random.default_rng(0)
        ijk = rng.integers(0, g.shape, size=(20, 3))
        pts = np.asarray(g.origin) + ijk * np.asarray(g.spacing)
        expected = phantom.dose_gy(pts[:, 0], pts[:, 1], pts[:, 2], t["prescriptions"])
        assert np.allclose(dose[ijk[:, 2], ijk[:, 1], ijk[:, 0]], expected, atol=1e-5)
        # High CTV mean dose recovers the arm (>= P - 0.5 Gy) and the centroid dose in the truth is the
        # trilinear interpolation of the written grid.
        x, y, z = g.axes()
        interp = RegularGridInterpolator((z, y, x), dose)
        c = np.asarray(t["recurrence"]["centroid_planning_mm"])
        got = float(interp([[c[2], c[1], c[0]]])[0])
        for lv in LEVELS:
            if t["classes"][lv] is not None:
                assert t["classes"][lv]["centroid_dose_gy"] == pytest.approx(got, abs=1e-3)
        in_high = phantom.masks(*g.broadcast_axes(), ("ctv_high",))["ctv_high"]
        assert dose[in_high].mean() >= t["prescriptions"]["high"] - 0.5


def test_tre_points_correspond(cohort):
    _, truths = cohort
    t = truths[2]
    p, q = tre_points(t, n=25, rng=np.random.default_rng(1))
    assert p.shape == q.shape == (25, 3)
    warp = RelapseWarp.from_dict(t["warp"])
    assert np.max(np.linalg.norm(warp.relapse_to_planning(q) - p, axis=1)) < 0.01
    phantom = Phantom.from_dict(t["phantom"])
    assert np.all(phantom.body_distance(p[:, 0], p[:, 1], p[:, 2]) < 0)
    assert np.mean(np.linalg.norm(p - q, axis=1)) > 5.0


# -- determinism, MR, CLI -----------------------------------------------------------------------
def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    runs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_patient(tmp_path / name / "raw", tmp_path / name / "truth", "SYN-001", seed=seed, arm="B",
                         case="peripheral", settings=TINY, config=CONFIG)
        folder = tmp_path / name / "raw" / "SYN-001"
        runs.append({f.name: f.read_bytes() for f in folder.iterdir()})
    assert runs[0] == runs[1]
    ta, tc = (json.loads((tmp_path / n / "truth" / "SYN-001.json").read_text()) for n in ("a", "c"))
    assert ta["uids"]["planning_ct_series"] != tc["uids"]["planning_ct_series"]
    assert set(runs[0]) != set(runs[2])


def test_mr_relapse(tmp_path):
    t = generate_patient(tmp_path / "raw", tmp_path / "truth", "SYN-007", seed=5, arm="C", case="inside",
                         relapse_modality="MR", settings=TINY, config=CONFIG)
    assert t["relapse_modality"] == "MR"
    folder = tmp_path / "raw" / "SYN-007"
    mr = [ds for _, ds in _datasets(folder) if ds.Modality == "MR"]
    assert len(mr) == TINY.ct_shape[2]
    assert all(ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and "RescaleSlope" not in ds for ds in mr)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), t["uids"]["relapse_image_series"]))
    arr = sitk.GetArrayFromImage(reader.Execute())
    g = Grid.from_dict(t["relapse_grid"])
    phantom, warp = Phantom.from_dict(t["phantom"]), RelapseWarp.from_dict(t["warp"])
    m = phantom.masks(*_relapse_points(g, warp))
    assert arr.min() >= 0
    assert np.mean(arr[m["airway"]]) < 100 < np.mean(arr[m["body"] & ~m["airway"]])


def test_cli_writes_a_cohort(tmp_path):
    argv = ["--out", str(tmp_path / "raw"), "--truth", str(tmp_path / "truth"), "--covariates",
            str(tmp_path / "cov.csv"), "--patients", "2", "--seed", "1", "--shape", "48,48,16", "--spacing", "3,3,4",
            "--layout", "nested"]
    assert main_synth(argv) == 0
    assert sorted(p.name for p in (tmp_path / "truth" / CONFIG.trial).glob("*.json")) == ["SYN-001.json", "SYN-002.json"]
    assert (tmp_path / "raw" / CONFIG.trial / "SYN-002").is_dir() and (tmp_path / "cov.csv").is_file()


@pytest.mark.slow
def test_scikit_rt_reads_the_planning_ct_and_structures(cohort, tmp_path):
    from skrt import Image, StructureSet

    root, truths = cohort
    t = truths[0]
    items = _datasets(root / "raw" / CONFIG.trial / t["patient_id"], stop_before_pixels=True)
    ct_dir = tmp_path / "ct"
    ct_dir.mkdir()
    for f, ds in items:  # skrt reads a folder of one series; flat exports mix series, so copy them out
        if ds.get("SeriesInstanceUID") == t["uids"]["planning_ct_series"]:
            (ct_dir / f"{f.stem}.dcm").write_bytes(f.read_bytes())
    rs_file = next(f for f, ds in items if ds.SOPInstanceUID == t["uids"]["planning_rtstruct"])
    image = Image(str(ct_dir))
    assert list(image.get_n_voxels()) == t["planning_grid"]["shape"]
    ss = StructureSet(str(rs_file), image=image)
    rois = {r.name: r for r in ss.get_rois()}
    landmark = rois[t["structure_names"]["landmark"]]
    assert np.allclose(landmark.get_centroid(), t["landmark"]["centroid_planning_mm"], atol=1.5)
    assert rois[t["structure_names"]["ctv_high"]].get_volume() > 1000
