"""One real DICOM-RT export in the suite: dicompyler-core's example breast plan (issue 9 point 7).

Data, source, licence and checksums: rtmap_assets_tests/data/dicompyler_example/README.md.

Reference values (`DICOMPYLER`) were computed ONCE with dicompyler-core 0.5.6 itself,
`dicompylercore.dvhcalc.get_dvh("rtss.dcm", "rtdose.dcm", roi)` with default arguments, and pinned
here; dicompyler-core is not installed by rtmap. Conventions on both sides:

* Grid: both work on the RTDOSE grid itself (2.5 x 2.5 mm pixels, 3 mm between frames); here rtmap
  rasterises each structure onto `read_rtdose`'s image (no resampling of the dose).
* Occupancy: both take a dose pixel when its centre lies inside the contour polygon on that plane
  (rtmap: `rasterise(..., occupancy="centre")`, skimage polygon fill, even-odd; dicompyler:
  matplotlib Path.contains_points, XOR of contours). The pipeline's own rule (`occupancy="volume"`,
  as many voxels as the polygon volume) is checked against the polygon geometry (shapely) instead.
  This plan's contour planes lie exactly on the dose frames (z = -122.44 + 3k mm), so the
  two rasterisations select the same voxels: volumes agree to the last digit (tolerance 0.001 cc).
  dicompyler weights each plane by the contour-plane spacing (3 mm), rtmap by the frame spacing
  (3 mm): the same here.
* Dose values: dicompyler bins every voxel into 1 cGy (0.01 Gy) histogram bins and reports min, max
  and Dx as bin edges; rtmap uses the voxel doses themselves for mean/min/max and reads Dx off a
  piecewise-linear cumulative DVH with the bin width passed below (0.01 Gy, to match). So min, max
  and Dx may differ by up to one bin: tolerance 0.0101 Gy. The mean is a volume-weighted average on
  both sides and differs only by dicompyler's binning of each voxel: tolerance 0.005 Gy (half a bin).
"""

from __future__ import annotations

import lzma
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from rtmap_assets.config import Aliases, load_trial_config
from rtmap_assets.dicom.catalog import catalog_folder
from rtmap_assets.dicom.dose_sum import read_plan_dose
from rtmap_assets.dicom.manifest import _dose_part, _patient_view, build_manifest
from rtmap_assets.dicom.readers import rasterise, read_rtdose, read_rtstruct
from rtmap_assets.dosimetry.dose_statistics import structure_statistics

DATA = Path(__file__).parent / "data" / "dicompyler_example"
FILES = ("ct.0.dcm", "rtss.dcm", "rtplan.dcm", "rtdose.dcm")
ROI_NAMES = ["BODY", "Areola", "Borders", "Breast", "Heart", "Lt Lung", "Nodes", "Scar", "Tumor Bed",
             "Tumor Bed Block"]
FOR_UID = "2.16.840.1.113662.2.12.0.3057.1241703565.36"
RTPLAN_UID = "1.2.246.352.71.5.320687012.24189.20090603083342"
RTSTRUCT_UID = "1.2.246.352.71.4.320687012.3190.20090511122144"

# dicompyler-core 0.5.6, get_dvh(rtss, rtdose, roi) defaults: volume cc, doses Gy.
DICOMPYLER = {
    "Breast": dict(volume_cc=400.3875, mean_gy=5.58195, min_gy=0.05, max_gy=14.69,
                   d98_gy=0.06, d95_gy=0.08, d50_gy=2.94, d2_gy=14.47),
    "Heart": dict(volume_cc=440.23125, mean_gy=0.64753, min_gy=0.03, max_gy=3.1,
                  d98_gy=0.03, d95_gy=0.04, d50_gy=0.12, d2_gy=2.71),
    "Lt Lung": dict(volume_cc=2004.525, mean_gy=0.90583, min_gy=0.03, max_gy=12.11,
                    d98_gy=0.04, d95_gy=0.05, d50_gy=0.26, d2_gy=5.02),
    "Tumor Bed": dict(volume_cc=13.06875, mean_gy=14.29167, min_gy=14.08, max_gy=14.57,
                      d98_gy=14.11, d95_gy=14.13, d50_gy=14.29, d2_gy=14.48),
}
VOLUME_TOL_CC = 1e-3  # same voxels on both sides (see module docstring)
MEAN_TOL_GY = 0.005  # half of dicompyler's 0.01 Gy bin
BIN_TOL_GY = 0.0101  # one dicompyler bin (min, max, Dx are bin edges there)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """raw/DC/example/<the four files>, decompressed from the pinned .xz copies."""
    folder = tmp_path_factory.mktemp("dicompyler") / "raw" / "DC" / "example"
    folder.mkdir(parents=True)
    for name in FILES:
        (folder / name).write_bytes(lzma.decompress((DATA / f"{name}.xz").read_bytes()))
    return folder.parent.parent


@pytest.fixture(scope="module")
def rtss(raw: Path):
    return read_rtstruct(raw / "DC" / "example" / "rtss.dcm")  # 1.9 MB of contours: read once


@pytest.fixture(scope="module")
def plan_dose(raw: Path) -> sitk.Image:
    return read_plan_dose([raw / "DC" / "example" / "rtdose.dcm"])  # the plan-dose reader, one PLAN object


def test_licence_and_provenance_sit_beside_the_data():
    assert "Redistribution and use in source and binary forms" in (DATA / "LICENSE").read_text()
    readme = (DATA / "README.md").read_text()
    assert "dicompyler-core 0.5.6" in readme and "a78d4d7723e280b1" in readme


def test_catalog_of_the_real_export(raw: Path):
    res = catalog_folder(raw / "DC")
    assert res.rejects.is_empty()
    rows = {r["path"].split("/")[-1]: r for r in res.files.to_dicts()}
    assert sorted(rows) == sorted(FILES)
    assert {n: r["modality"] for n, r in rows.items()} == {
        "ct.0.dcm": "CT", "rtss.dcm": "RTSTRUCT", "rtplan.dcm": "RTPLAN", "rtdose.dcm": "RTDOSE"}
    # rule 17: the subject is the export folder; the real PatientID (123456) is checked, never stored
    assert set(res.files["patient_id"]) == {"example"} and set(res.files["export"]) == {"example"}
    assert "123456" not in str(res.files.drop("patient_id_hash").to_dicts())
    assert set(res.files["transfer_syntax_uid"]) == {"1.2.840.10008.1.2"}  # implicit VR little endian
    assert rows["rtss.dcm"]["structure_names"] == ROI_NAMES
    assert rows["rtss.dcm"]["referenced_frame_of_reference_uids"] == [FOR_UID]
    assert rows["rtss.dcm"]["referenced_series_uids"] == [rows["ct.0.dcm"]["series_instance_uid"]]
    dose = rows["rtdose.dcm"]
    assert (dose["frame_of_reference_uid"], dose["dose_units"], dose["dose_summation_type"]) == (FOR_UID, "GY", "PLAN")
    assert (dose["rows"], dose["columns"], dose["number_of_frames"]) == (129, 194, 98)
    assert dose["pixel_spacing"] == [2.5, 2.5]
    assert rows["ct.0.dcm"]["frame_of_reference_uid"] == FOR_UID and rows["ct.0.dcm"]["rows"] == 512
    # the catalog's one reference column holds the RTPLAN and the structure set; the manifest's
    # plan references are those that are not a catalogued non-RTPLAN object
    assert sorted(dose["referenced_sop_instance_uids"]) == sorted([RTPLAN_UID, RTSTRUCT_UID])
    patient = _patient_view("example", res.files)
    assert _dose_part(patient.rtdoses[0], patient.non_plan_sops).plan_uids == {RTPLAN_UID}


def test_manifest_says_one_ct_slice_is_not_a_planning_ct(raw: Path):
    config = load_trial_config()
    # the breast plan names its target "Tumor Bed": a level name, not a dose-templated one (rule 2)
    config = config.model_copy(update={"aliases": Aliases(ctv=["*CTV*{dose}*"], ctv_by_level={"high": ["Tumor Bed"]})})
    manifest, issues = build_manifest(catalog_folder(raw / "DC").files, config)
    assert manifest.is_empty()
    issue = issues.row(0, named=True)
    assert issues.height == 1 and issue["code"] == "PLANNING_CT_ONE_SLICE"
    assert issue["file"] == "DC/example/ct.0.dcm"


def test_rtstruct_reader_on_the_real_structure_set(rtss):
    rs = rtss
    assert rs.names == ROI_NAMES
    assert rs.frame_of_reference_uid == FOR_UID
    n_contours = {n: len(c) for n, c in rs.contours.items()}
    assert n_contours == {"BODY": 141, "Areola": 0, "Borders": 2, "Breast": 48, "Heart": 33, "Lt Lung": 165,
                          "Nodes": 4, "Scar": 6, "Tumor Bed": 18, "Tumor Bed Block": 24}
    # every contour is planar and on a 3 mm plane of the dose grid (z = -122.4407 + 3 k)
    for contours in rs.contours.values():
        for pts in contours:
            assert np.ptp(pts[:, 2]) == 0.0
            k = (pts[0, 2] + 122.4407) / 3.0
            assert abs(k - round(k)) < 1e-3


@pytest.mark.parametrize("name", sorted(DICOMPYLER))
def test_dose_statistics_agree_with_dicompyler(rtss, plan_dose: sitk.Image, name: str):
    dose = plan_dose
    assert dose.GetSize() == (194, 129, 98) and dose.GetSpacing() == pytest.approx((2.5, 2.5, 3.0))
    mask = sitk.GetArrayFromImage(rasterise(rtss, name, dose, occupancy="centre")).astype(bool)
    doses = sitk.GetArrayFromImage(dose)[mask]
    ours = structure_statistics(doses, float(np.prod(dose.GetSpacing())) / 1000.0, None, 0.95, bin_width_gy=0.01)
    ref = DICOMPYLER[name]
    assert ours["volume_cc"] == pytest.approx(ref["volume_cc"], abs=VOLUME_TOL_CC)
    assert ours["mean_gy"] == pytest.approx(ref["mean_gy"], abs=MEAN_TOL_GY)
    for key in ("min_gy", "max_gy", "d98_gy", "d95_gy", "d50_gy", "d2_gy"):
        assert ours[key] == pytest.approx(ref[key], abs=BIN_TOL_GY), key


@pytest.mark.parametrize("name", sorted(DICOMPYLER))
def test_volume_rule_gives_the_polygon_volume_on_the_real_grid(rtss, plan_dose: sitk.Image, name: str):
    """The pipeline's rule on the 2.5 x 2.5 x 3 mm dose grid: per contour plane, even-odd polygon area
    (shapely) x 3 mm (planes on the frames, all 3 mm apart). Measured: Tumor Bed 13.162 cc against
    13.159 cc of polygons (centre rule 13.069 cc, -0.69 %); Breast 400.050 / 400.047 cc."""
    from shapely.geometry import Polygon
    from shapely.validation import make_valid

    planes: dict[float, object] = {}
    for pts in rtss.contours[name]:
        z = round(float(pts[0, 2]), 2)
        poly = make_valid(Polygon(pts[:, :2]))
        planes[z] = poly if z not in planes else planes[z].symmetric_difference(poly)
    assert np.allclose(np.diff(sorted(planes)), 3.0, atol=0.01)
    polygon_cc = sum(p.area for p in planes.values()) * 3.0 / 1000.0
    voxel_cc = float(np.prod(plan_dose.GetSpacing())) / 1000.0
    volume_cc = float(sitk.GetArrayFromImage(rasterise(rtss, name, plan_dose)).sum()) * voxel_cc
    assert volume_cc == pytest.approx(polygon_cc, abs=voxel_cc / 2 + 1e-3 * polygon_cc)


def test_dose_reader_scaling_on_the_real_grid(raw: Path):
    dose = read_rtdose(raw / "DC" / "example" / "rtdose.dcm")
    arr = sitk.GetArrayViewFromImage(dose)
    # uint32 stored values x DoseGridScaling 1.4e-5: the hottest voxel is 14.68 Gy (dicompyler: bin 14.69)
    assert float(arr.max()) == pytest.approx(14.6808, abs=1e-4)
    assert dose.GetOrigin() == pytest.approx((-228.6541915, -419.2444776, -122.4407))
    assert arr.dtype == np.float32


def test_contour_points_equal_pydicoms_values_to_the_last_bit(raw: Path, rtss):
    """read_rtstruct parses ContourData from the raw bytes (speed); on this real export every coordinate
    of every contour equals what pydicom's own DS conversion gives, bit for bit."""
    import pydicom

    ds = pydicom.dcmread(str(raw / "DC" / "example" / "rtss.dcm"))
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    points = 0
    for rc in ds.ROIContourSequence:
        expected = [np.asarray(c.ContourData, dtype=float).reshape(-1, 3) for c in getattr(rc, "ContourSequence", [])
                    if str(c.ContourGeometricType).upper() == "CLOSED_PLANAR" and len(c.ContourData) >= 9]
        got = rtss.contours[names[int(rc.ReferencedROINumber)]]
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            assert a.dtype == np.float64 and a.shape == b.shape
            assert np.array_equal(a.view(np.int64), b.view(np.int64))
            points += len(a)
    assert points > 10_000  # the contours were really compared
