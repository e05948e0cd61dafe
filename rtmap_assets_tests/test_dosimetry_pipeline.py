"""run_dosimetry end to end on a small analytic phantom (no DICOM, no registration)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import SimpleITK as sitk

from rtmap_assets.config import TrialConfig
from rtmap_assets.errors import PatientDataError
from rtmap_assets.pipeline.dosimetry_patient import run_dosimetry, seed_csv_rows, write_seed_csvs
from rtmap_assets.pipeline.volumes import PatientVolumes, StructureMask

SPACING = 2.0
SIZE = (50, 50, 40)  # x, y, z voxels
ORIGIN = (-49.0, -49.0, -39.0)  # voxel centres at odd mm; the grid spans x,y ∈ [-50, 50], z ∈ [-40, 40]


def grid_image(arr_zyx: np.ndarray, pixel=sitk.sitkFloat32) -> sitk.Image:
    img = sitk.GetImageFromArray(arr_zyx)
    img = sitk.Cast(img, pixel)
    img.SetSpacing((SPACING,) * 3)
    img.SetOrigin(ORIGIN)
    return img


def coords() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z, y, x = np.meshgrid(*(ORIGIN[k] + SPACING * np.arange(SIZE[k]) for k in (2, 1, 0)), indexing="ij")
    return x, y, z


def ball(centre, radius) -> sitk.Image:
    x, y, z = coords()
    r2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2
    return grid_image((r2 <= radius**2).astype(np.uint8), sitk.sitkUInt8)


def radial_dose(levels=((14.0, 66.0), (22.0, 61.0), (30.0, 55.0))) -> sitk.Image:
    """Shells around the origin: 66 Gy to r 14 mm, 61 Gy to 22 mm, 55 Gy to 30 mm, then 0."""
    x, y, z = coords()
    r = np.sqrt(x**2 + y**2 + z**2)
    d = np.zeros_like(r)
    for radius, value in sorted(levels, reverse=True):
        d[r <= radius] = value
    return grid_image(d.astype(np.float32))


def make_volumes(rec_centre=(0.0, 0.0, 0.0), rec_radius=6.0, arm_ctvs=True, landmark_shift=(3.0, 0.0, 4.0),
                 patient_id="P001") -> PatientVolumes:
    """Arm-A-like phantom: CTV_65 r 12, CTV_60 r 20, CTV_54 r 28 around the origin; radial dose."""
    x, y, z = coords()
    ct = np.where(x**2 + y**2 <= 45**2, 40.0, -1000.0).astype(np.float32)
    structures = [
        StructureMask("Rec_CT", "recurrence", "mapped", ball(rec_centre, rec_radius), "Rec_CT"),
        StructureMask("thyroid", "landmark", "planning", ball((0, 20, 10), 5), "*thy*"),
        StructureMask("thyroid", "landmark", "mapped", ball(np.add((0, 20, 10), landmark_shift), 5), "*thy*"),
        StructureMask("SpinalCord", "organ", "planning", ball((0, 36, 0), 4), "*cord*"),
    ]
    if arm_ctvs:
        structures += [
            StructureMask("CTV_65", "ctv", "planning", ball((0, 0, 0), 12), "*CTV*65*"),
            StructureMask("CTV_60", "ctv", "planning", ball((0, 0, 0), 20), "*CTV*60*"),
            StructureMask("CTV_54", "ctv", "planning", ball((0, 0, 0), 28), "*CTV*54*"),
        ]
    return PatientVolumes(patient_id=patient_id, image=grid_image(ct), dose=radial_dose(), structures=structures)


CONFIG = TrialConfig(trial="T1", probability={"samples": 2000, "seed": 3})


def by_level(df: pl.DataFrame) -> dict[str, dict]:
    return {r["level"]: r for r in df.iter_rows(named=True)}


def test_central_recurrence_is_inside_everywhere_and_mohamed_a():
    res = run_dosimetry(make_volumes(), CONFIG, radius_mm=5.0, sigma_mm=1.0)
    rows = by_level(res.classification)
    assert res.classification.height == 3
    assert {r["arm"] for r in rows.values()} == {"A"}
    assert rows["high"]["arm_source"] == "dose" and rows["high"]["arm_mismatch"] is False
    assert rows["high"]["ctv_mean_dose_gy"] == pytest.approx(66.0)
    for lvl, p in (("low", 54.0), ("intermediate", 60.0), ("high", 65.0)):
        r = rows[lvl]
        assert r["prescription_gy"] == p and r["level_present"] is True
        assert r["centroid_class"] == 1 and r["volume_class"] == 1 and r["dawson_class"] == "in-field"
        assert r["probability_inside"] == pytest.approx(1.0)
    assert rows["high"]["mohamed_type"] == "A"
    assert rows["high"]["uncertainty_mm"] == pytest.approx(5.0)
    assert rows["high"]["ctv_name"] == "CTV_65"
    assert res.issues == []


def test_recurrence_between_shells_mixes_classes():
    # centre at r = 16 mm: in the 61 Gy shell (≥ 57 = 0.95·60, < 61.75 = 0.95·65), outside CTV_65, inside CTV_60.
    res = run_dosimetry(make_volumes(rec_centre=(16.0, 0.0, 0.0), rec_radius=4.0), CONFIG, radius_mm=5.0, sigma_mm=2.0)
    rows = by_level(res.classification)
    assert rows["high"]["centroid_class"] == 0 and rows["intermediate"]["centroid_class"] == 1
    assert rows["high"]["volume_class"] == 2  # part of the sphere reaches the 66 Gy core at r ≤ 14
    assert rows["intermediate"]["volume_class"] == 1 and rows["low"]["volume_class"] == 1
    assert rows["high"]["mohamed_type"] == "C"
    assert 0 < rows["high"]["probability_inside"] < 0.5 < rows["intermediate"]["probability_inside"]


def test_absent_levels_have_no_classes():
    vols = make_volumes()
    # Arm C: [0, 0, 50]; only a CTV_50 exists; the dose of 55 Gy to r 30 mm fits 50 − 0.5 but not 60 − 0.5.
    vols.structures = [s for s in vols.structures if s.role != "ctv"] + [
        StructureMask("CTV_50", "ctv", "planning", ball((0, 0, 0), 28), "*CTV*50*")]
    vols.dose = radial_dose(((30.0, 55.0),))
    res = run_dosimetry(vols, CONFIG, radius_mm=5.0, sigma_mm=1.0)
    rows = by_level(res.classification)
    assert rows["high"]["arm"] == "C" and rows["high"]["prescription_gy"] == 50.0
    for lvl in ("low", "intermediate"):
        r = rows[lvl]
        assert r["level_present"] is False and r["prescription_gy"] == 0.0
        assert r["centroid_class"] is None and r["volume_class"] is None and r["dawson_class"] is None
        assert r["probability_inside"] is None
    assert rows["high"]["mohamed_type"] == "A"
    stats = res.dose_statistics.filter(pl.col("structure") == "CTV_50").row(0, named=True)
    assert stats["v95_low_pct"] is None and stats["v95_high_pct"] == pytest.approx(100.0)


def test_covariate_arm_wins_and_mismatch_is_flagged():
    res = run_dosimetry(make_volumes(), CONFIG, radius_mm=5.0, sigma_mm=1.0, covariate_arm="b")
    rows = by_level(res.classification)
    assert rows["high"]["arm"] == "B" and rows["high"]["arm_source"] == "covariates"
    assert rows["high"]["arm_from_dose"] == "A" and rows["high"]["arm_mismatch"] is True
    assert rows["high"]["prescription_gy"] == 60.0 and rows["low"]["level_present"] is False
    assert [i["code"] for i in res.issues] == ["ARM_MISMATCH"]


def test_unassigned_arm_keeps_rows_with_null_classes_and_reports_issue():
    vols = make_volumes()
    vols.dose = radial_dose(((30.0, 20.0),))  # far below every arm
    res = run_dosimetry(vols, CONFIG, radius_mm=5.0, sigma_mm=1.0)
    rows = by_level(res.classification)
    assert {r["arm"] for r in rows.values()} == {"unassigned"}
    assert all(r["centroid_class"] is None and r["prescription_gy"] is None for r in rows.values())
    assert rows["high"]["centroid_dose_gy"] == pytest.approx(20.0)
    msg = next(i["message"] for i in res.issues if i["code"] == "ARM_UNASSIGNED")
    # every arm tested with its own high CTV, with the numbers
    assert "arm A (65 Gy): CTV_65 (alias *CTV*65*) mean 20.00 Gy" in msg
    assert "arm B (60 Gy): CTV_60 (alias *CTV*60*) mean 20.00 Gy" in msg and "arm C (50 Gy): no high-level CTV" in msg


def test_recurrence_outside_dose_grid_gets_zero_dose_and_flag():
    # The RTDOSE covered x ≤ 29 mm only (dose_support); the recurrence sits at x = 40 mm.
    vols = make_volumes(rec_centre=(40.0, 0.0, 0.0), rec_radius=3.0)
    x, _, _ = coords()
    vols.dose_support = grid_image((x <= 29.0).astype(np.uint8), sitk.sitkUInt8)
    res = run_dosimetry(vols, CONFIG, radius_mm=5.0, sigma_mm=1.0)
    rows = by_level(res.classification)
    assert rows["high"]["centroid_in_dose_grid"] is False and rows["high"]["centroid_dose_gy"] == 0.0
    assert rows["high"]["centroid_class"] == 0 and rows["high"]["volume_class"] == 0
    assert rows["low"]["dawson_class"] == "outside"
    assert rows["high"]["mohamed_type"] == "E"
    sphere_cc = res.dose_statistics.filter(pl.col("role") == "sphere")["volume_cc"].item()
    assert sphere_cc == pytest.approx(4 / 3 * np.pi * 5.0**3 / 1000)  # the sub-voxel samples' volume
    # every voxel of the 5 mm mask: 56 odd-mm lattice points lie within 5 mm of (40, 0, 0) (voxel count)
    assert rows["high"]["sphere_voxels_outside_dose_grid"] == 56
    assert rows["high"]["sphere_outside_dose_fraction"] == 1.0  # every sub-voxel sample
    assert "CENTROID_OUTSIDE_DOSE_GRID" in [i["code"] for i in res.issues]
    # without the support the same patient is inside the working grid: dose 0 but no flag
    vols.dose_support = None
    rows = by_level(run_dosimetry(vols, CONFIG, radius_mm=5.0, sigma_mm=1.0).classification)
    assert rows["high"]["centroid_in_dose_grid"] is True and rows["high"]["centroid_class"] == 0


def test_empty_mapped_recurrence_is_patient_data_error():
    vols = make_volumes()
    vols.structures = [s for s in vols.structures if s.role != "recurrence"] + [
        StructureMask("Rec_CT", "recurrence", "mapped", ball((0, 0, 0), 0.5) * 0, "Rec_CT")]
    with pytest.raises(PatientDataError) as err:
        run_dosimetry(vols, CONFIG, radius_mm=5.0, sigma_mm=1.0)
    assert err.value.code == "EMPTY_RECURRENCE"


def test_no_dose_and_missing_recurrence_are_patient_data_errors():
    vols = make_volumes()
    vols.dose = None
    with pytest.raises(PatientDataError, match="NO_DOSE"):
        run_dosimetry(vols, CONFIG, radius_mm=5.0, sigma_mm=1.0)
    vols = make_volumes()
    vols.structures = [s for s in vols.structures if s.role != "recurrence"]
    with pytest.raises(PatientDataError, match="NO_RECURRENCE"):
        run_dosimetry(vols, CONFIG, radius_mm=5.0, sigma_mm=1.0)


def test_sub_voxel_radius_is_kept_and_meaningful(tmp_path):
    # A well-registered patient: 0.5 mm. No one-voxel floor; the sphere's fraction is sub-voxel sampled.
    # Centre at x = 13 mm, on the outer voxel layer of the 66 Gy core (voxel centres at odd mm).
    res = run_dosimetry(make_volumes(rec_centre=(13.0, 0.0, 0.0), rec_radius=3.0), CONFIG, radius_mm=0.5,
                        sigma_mm=0.0, figure_path=tmp_path / "overlay.png")
    assert res.figure_path.stat().st_size > 10_000  # the overlay copes with a sphere mask of no voxel
    rows = by_level(res.classification)
    assert res.classification["radius_mm"].to_list() == [0.5, 0.5, 0.5]
    # x = 13 mm is a 66 Gy voxel centre, x = 15 mm a 61 Gy one: the trilinear 61.75 Gy (0.95·65) isodose
    # crosses x = 13 + 2·(66 − 61.75)/5 = 14.7 mm, beyond the 0.5 mm sphere: all of it is hot.
    assert rows["high"]["sphere_fraction"] == 1.0 and rows["high"]["volume_class"] == 1
    sph = res.dose_statistics.filter(pl.col("role") == "sphere").row(0, named=True)
    assert sph["volume_cc"] == pytest.approx(4 / 3 * np.pi * 0.125 / 1000)
    # the coolest samples sit at x ≈ 13.5 mm: trilinear 0.75·66 + 0.25·61 = 64.75 Gy
    assert sph["min_gy"] == pytest.approx(64.75, abs=0.05) and sph["max_gy"] == pytest.approx(66.0)


def test_level_named_ctvs_are_used_and_their_alias_recorded():
    cfg = TrialConfig(trial="T1", probability={"samples": 2000, "seed": 3}, aliases={
        "ctv": ["*CTV*{dose}*"], "ctv_by_level": {"high": ["CTV_High"], "intermediate": ["CTV_Mid"]}})
    vols = make_volumes()
    rename = {"CTV_65": "CTV_High", "CTV_60": "CTV_Mid"}
    for s in vols.structures:
        s.name = rename.get(s.name, s.name)
    res = run_dosimetry(vols, cfg, radius_mm=5.0, sigma_mm=1.0)
    rows = by_level(res.classification)
    assert rows["high"]["arm"] == "A"
    assert [(rows[lvl]["ctv_name"], rows[lvl]["ctv_alias"]) for lvl in ("high", "intermediate", "low")] == [
        ("CTV_High", "CTV_High"), ("CTV_Mid", "CTV_Mid"), ("CTV_54", "*CTV*54*")]
    assert rows["high"]["mohamed_type"] == "A" and res.issues == []


def test_ambiguous_and_implausible_ctvs_are_issues():
    vols = make_volumes()
    vols.structures.append(StructureMask("CTV_65_ring", "ctv", "planning", ball((0, 0, 0), 16), "*CTV*65*"))
    res = run_dosimetry(vols, CONFIG, radius_mm=5.0, sigma_mm=1.0)
    rows = by_level(res.classification)
    assert rows["high"]["arm"] == "unassigned" and rows["high"]["centroid_class"] is None
    codes = [i["code"] for i in res.issues]
    assert codes.count("CTV_AMBIGUOUS") == 1 and "ARM_UNASSIGNED" in codes
    msg = next(i["message"] for i in res.issues if i["code"] == "CTV_AMBIGUOUS")
    assert "'CTV_65'" in msg and "'CTV_65_ring'" in msg
    # covariates name the arm: the other levels are classified, the high CTV stays unresolved
    res = run_dosimetry(vols, CONFIG, radius_mm=5.0, sigma_mm=1.0, covariate_arm="A")
    rows = by_level(res.classification)
    assert rows["high"]["ctv_name"] is None and rows["intermediate"]["ctv_name"] == "CTV_60"
    assert rows["high"]["centroid_class"] == 1 and rows["high"]["mohamed_type"] is None
    assert [i["code"] for i in res.issues].count("CTV_AMBIGUOUS") == 1
    # a CTV named for 54 Gy that received the 66 Gy core only: D95 +22 % -> CTV_DOSE_IMPLAUSIBLE, still arm A.
    # (The phantom's nested CTV_54 of r 28 mm has mean 58.5 Gy, +8 %, D95 55 Gy: plausible, no issue.)
    vols = make_volumes()
    for s in vols.structures:
        if s.name == "CTV_54":
            s.mask = ball((0, 0, 0), 10)
    res = run_dosimetry(vols, CONFIG, radius_mm=5.0, sigma_mm=1.0)
    (issue,) = [i for i in res.issues if i["code"] == "CTV_DOSE_IMPLAUSIBLE"]
    assert "CTV_54" in issue["message"] and "54 Gy" in issue["message"] and "D95 66.00 Gy" in issue["message"]


def test_dose_statistics_table_shape_and_consistency():
    res = run_dosimetry(make_volumes(rec_centre=(16.0, 0.0, 0.0), rec_radius=4.0), CONFIG, radius_mm=5.0, sigma_mm=1.0)
    st = res.dose_statistics
    assert set(st["role"]) == {"ctv", "organ", "recurrence", "sphere"}
    assert dict(zip(st.filter(pl.col("role") == "ctv")["structure"], st.filter(pl.col("role") == "ctv")["level"])) == {
        "CTV_65": "high", "CTV_60": "intermediate", "CTV_54": "low"}
    sph = st.filter(pl.col("role") == "sphere").row(0, named=True)
    rows = by_level(res.classification)
    assert sph["v95_high_pct"] == pytest.approx(100 * rows["high"]["sphere_fraction"])
    cord = st.filter(pl.col("structure") == "SpinalCord").row(0, named=True)
    assert cord["max_gy"] == 0.0 and cord["volume_cc"] > 0
    ctv65 = st.filter(pl.col("structure") == "CTV_65").row(0, named=True)
    assert ctv65["mean_gy"] == pytest.approx(66.0) and ctv65["d95_gy"] == pytest.approx(66.0, abs=0.01)


def test_seed_csvs(tmp_path):
    a = run_dosimetry(make_volumes(patient_id="P001"), CONFIG, radius_mm=5.0, sigma_mm=1.0).classification
    b = run_dosimetry(make_volumes(patient_id="P002", rec_centre=(16.0, 0, 0), rec_radius=4.0), CONFIG,
                      radius_mm=5.0, sigma_mm=1.0).classification
    paths = write_seed_csvs(a, tmp_path, "T1") + write_seed_csvs(b, tmp_path, "T1")
    assert not (tmp_path / "T1_all_classifications.csv").exists()  # a patient run never writes the cohort file
    paths += write_seed_csvs(pl.concat([a, b]), tmp_path, "T1", per_patient=False)
    assert sorted(p.name for p in paths) == ["P001_classifications.csv", "P002_classifications.csv",
                                             "T1_all_classifications.csv"]
    allc = pl.read_csv(tmp_path / "T1_all_classifications.csv")
    assert allc.columns[:6] == ["patient", "arm", "level", "prescription", "centroid_class", "volume_class"]
    assert allc.height == 6 and allc["level"].to_list()[:3] == ["low", "intermediate", "high"]
    p2 = pl.read_csv(tmp_path / "P002_classifications.csv")
    assert p2.filter(pl.col("level") == "high")["volume_class"].item() == 2
    assert seed_csv_rows(a).height == 3


def test_masks_off_the_dose_grid_are_a_patient_data_error():
    vols = make_volumes()
    vols.structures[0].mask = sitk.RegionOfInterest(vols.structures[0].mask, (10, 10, 10), (0, 0, 0))
    with pytest.raises(PatientDataError) as err:
        run_dosimetry(vols, CONFIG, radius_mm=5.0, sigma_mm=1.0)
    assert err.value.code == "GRID_MISMATCH"


def test_ambiguous_arm_is_explicit():
    cfg = TrialConfig(trial="T1", arms={"A": (54, 60, 65), "A2": (50, 60, 65)})
    res = run_dosimetry(make_volumes(), cfg, radius_mm=5.0, sigma_mm=1.0)
    rows = by_level(res.classification)
    assert {r["arm"] for r in rows.values()} == {"ambiguous"}
    assert all(r["level_present"] is None and r["centroid_class"] is None for r in rows.values())
    issue = next(i for i in res.issues if i["code"] == "ARM_AMBIGUOUS")
    assert "A" in issue["message"] and "A2" in issue["message"]
    ok = by_level(run_dosimetry(make_volumes(), cfg, radius_mm=5.0, sigma_mm=1.0, covariate_arm="A2").classification)
    assert ok["low"]["prescription_gy"] == 50.0 and ok["low"]["arm_mismatch"] is False
