"""Plan dose from several RTDOSE objects (rule 16): selection in the manifest, summing in the reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import SimpleITK as sitk

from rtmap_assets.config import load_trial_config
from rtmap_assets.dicom.catalog import catalog_folder
from rtmap_assets.dicom.dose_sum import DosePart, read_plan_dose, select_plan_doses
from rtmap_assets.dicom.manifest import build_manifest
from rtmap_assets.errors import PatientDataError

try:
    from rtmap_assets_tests.dicom_factory import uid, write_patient, write_rtdose
except ImportError:  # rootdir-less import mode
    from dicom_factory import uid, write_patient, write_rtdose

CONFIG = load_trial_config()
SCALING = 1e-3  # Gy per stored unit: storage rounds each part to +-0.0005 Gy


# Linear dose fields (Gy) of physical position: trilinear interpolation reproduces them exactly,
# so the sum on any common grid can be checked against the analytic total at any point.
def beam_a(x, y, z):
    return 20.0 + 0.10 * x + 0.05 * z


def beam_b(x, y, z):
    return 15.0 - 0.08 * y + 0.02 * x


def beam_c(x, y, z):
    return 10.0 + 0.03 * z


def _grid_values(field, origin, spacing, shape):
    nz, ny, nx = shape
    z, y, x = np.meshgrid(origin[2] + spacing[2] * np.arange(nz), origin[1] + spacing[1] * np.arange(ny),
                          origin[0] + spacing[0] * np.arange(nx), indexing="ij")
    return field(x, y, z)


def _at(img: sitk.Image, point) -> float:
    """Dose at a physical point by trilinear interpolation of the summed image."""
    idx = np.asarray(img.TransformPhysicalPointToContinuousIndex([float(v) for v in point]))
    lo = np.floor(idx).astype(int)
    frac = idx - lo
    arr = sitk.GetArrayViewFromImage(img)
    val = 0.0
    for corner in np.ndindex(2, 2, 2):
        i, j, k = lo + np.asarray(corner)
        w = np.prod([f if c else 1 - f for f, c in zip(frac, corner)])
        if w > 0:
            val += w * float(arr[k, j, i])
    return val


@pytest.fixture
def plan(tmp_path: Path):
    """A patient without its default dose: the tests write the plan's RTDOSE objects themselves."""
    trial = tmp_path / "raw" / "T1"
    pf = write_patient(trial / "P", "P", with_dose=False)
    study, for_uid = pf.planning_ct.study_uid, pf.planning_ct.for_uid

    def dose(name, **kw):
        path = trial / "P" / "planning" / "rd" / f"{name}.dcm"
        write_rtdose(path, f"P/{name}", "P", study, "20200110", kw.pop("for_uid", for_uid), **kw)
        return path

    return trial, dose


def _manifest_dose(trial: Path) -> tuple[dict | None, pl.DataFrame]:
    manifest, issues = build_manifest(catalog_folder(trial).files, CONFIG)
    rows = manifest.filter(pl.col("role") == "planning_rtdose").to_dicts()
    return (rows[0] if rows else None), issues


def _abs(trial: Path, files: list[str]) -> list[Path]:
    return [trial.parent / f for f in files]


# ------------------------------------------------------------------------------------------- summing


def test_per_beam_parts_sum_to_the_analytic_total(plan):
    trial, dose = plan
    rtplan = uid("P/rtplan")
    # three beams of one plan on three different grids: uint32 relative offsets on a 3 mm lattice,
    # uint16 absolute offsets on the same lattice shifted by whole voxels, and a 2 mm grid off the lattice
    ga = dict(origin=(-30.0, -30.0, -20.0), spacing=(3.0, 3.0, 2.5), shape=(17, 21, 21))
    gb = dict(origin=(-24.0, -27.0, -15.0), spacing=(3.0, 3.0, 2.5), shape=(13, 17, 19))
    gc = dict(origin=(-20.5, -19.3, -12.1), spacing=(2.0, 2.0, 2.0), shape=(14, 18, 18))
    dose("beam1", summation="BEAM", rtplan_sop=rtplan, dose_gy=_grid_values(beam_a, **_g(ga)), origin=ga["origin"],
         spacing=ga["spacing"], scaling=SCALING)
    dose("beam2", summation="BEAM", rtplan_sop=rtplan, dose_gy=_grid_values(beam_b, **_g(gb)), origin=gb["origin"],
         spacing=gb["spacing"], scaling=SCALING, bits=16, absolute_offsets=True)
    dose("beam3", summation="BEAM", rtplan_sop=rtplan, dose_gy=_grid_values(beam_c, **_g(gc)), origin=gc["origin"],
         spacing=gc["spacing"], scaling=SCALING)

    row, issues = _manifest_dose(trial)
    assert issues.is_empty(), issues.to_dicts()
    assert [Path(f).name for f in row["files"]] == ["beam1.dcm", "beam2.dcm", "beam3.dcm"]
    assert row["n_files"] == 3 and row["sop_instance_uid"] is None
    assert "sum of 3 RTDOSE objects (BEAM)" in row["reason"] and rtplan in row["reason"]

    total = read_plan_dose(_abs(trial, row["files"]))
    # common grid: the first file's 3 mm lattice, extended to the union of the three grids
    assert total.GetSpacing() == pytest.approx((3.0, 3.0, 2.5))
    assert total.GetOrigin() == pytest.approx((-30.0, -30.0, -20.0))
    assert total.GetSize() == (21, 21, 17)
    tol = 3 * 0.0005 + 1e-5  # storage rounding of three parts
    for point in [(0.0, 0.0, 0.0), (-7.3, 4.1, 2.2), (6.0, -9.0, 5.0), (-15.2, 11.7, -9.9)]:
        assert _at(total, point) == pytest.approx(beam_a(*point) + beam_b(*point) + beam_c(*point), abs=tol)
    # inside beam 1 and 2 only: beam 3 adds nothing outside its own grid
    point = (27.0, 0.0, 0.0)
    assert _at(total, point) == pytest.approx(beam_a(*point) + beam_b(*point), abs=tol)
    # on the shared lattice the parts are added voxel for voxel
    arr = sitk.GetArrayViewFromImage(total)
    assert arr[0, 0, 0] == pytest.approx(beam_a(-30.0, -30.0, -20.0), abs=0.0005 + 1e-6)


def _g(g):
    return {"origin": g["origin"], "spacing": g["spacing"], "shape": g["shape"]}


def test_main_plan_and_boost_plan_are_summed(plan):
    trial, dose = plan
    g = dict(origin=(-20.0, -20.0, -12.5), spacing=(2.5, 2.5, 2.5), shape=(11, 17, 17))
    main = np.full(g["shape"], 50.0)
    boost = _grid_values(beam_c, **g)
    dose("main", summation="PLAN", rtplan_sop=uid("P/main-plan"), dose_gy=main, origin=g["origin"],
         spacing=g["spacing"], scaling=SCALING)
    dose("boost", summation="PLAN", rtplan_sop=uid("P/boost-plan"), dose_gy=boost, origin=g["origin"],
         spacing=g["spacing"], scaling=SCALING)
    row, issues = _manifest_dose(trial)
    assert issues.is_empty(), issues.to_dicts()
    assert [Path(f).name for f in row["files"]] == ["boost.dcm", "main.dcm"]
    assert uid("P/main-plan") in row["reason"] and uid("P/boost-plan") in row["reason"]
    total = sitk.GetArrayFromImage(read_plan_dose(_abs(trial, row["files"])))
    assert total == pytest.approx(main + boost, abs=2 * 0.0005 + 1e-5)


def test_plan_total_and_its_own_beams_are_not_double_counted(plan):
    trial, dose = plan
    rtplan = uid("P/rtplan")
    g = dict(origin=(-20.0, -20.0, -12.5), spacing=(2.5, 2.5, 2.5), shape=(11, 17, 17))
    a, b = _grid_values(beam_a, **g), _grid_values(beam_b, **g)
    for name, values, kind in (("beam1", a, "BEAM"), ("beam2", b, "BEAM"), ("total", a + b, "PLAN")):
        dose(name, summation=kind, rtplan_sop=rtplan, dose_gy=values, origin=g["origin"], spacing=g["spacing"],
             scaling=SCALING)
    row, issues = _manifest_dose(trial)
    assert issues.is_empty(), issues.to_dicts()
    assert [Path(f).name for f in row["files"]] == ["total.dcm"]
    assert "not added again" in row["reason"] and "beam1.dcm (in " in row["reason"]
    total = sitk.GetArrayFromImage(read_plan_dose(_abs(trial, row["files"])))
    assert total == pytest.approx(a + b, abs=0.0005 + 1e-5)
    # the reader refuses the total together with its parts rather than counting them twice
    every = sorted((trial / "P" / "planning" / "rd").glob("*.dcm"))
    with pytest.raises(PatientDataError) as err:
        read_plan_dose(every)
    assert err.value.code == "RTDOSE_DOUBLE_COUNT" and "beam1.dcm" in err.value.message


def test_relative_dose_is_refused(plan):
    trial, dose = plan
    path = dose("rel", units="RELATIVE")
    row, issues = _manifest_dose(trial)
    assert row is None
    issue = issues.filter(pl.col("patient_id") == "P").row(0, named=True)
    assert issue["code"] == "RTDOSE_RELATIVE" and "rel.dcm" in issue["message"]
    with pytest.raises(PatientDataError) as err:
        read_plan_dose([path])
    assert err.value.code == "RTDOSE_RELATIVE"


def test_parts_with_different_orientations_are_refused(plan):
    trial, dose = plan
    rtplan = uid("P/rtplan")
    p1 = dose("beam1", summation="BEAM", rtplan_sop=rtplan)
    p2 = dose("beam2", summation="BEAM", rtplan_sop=rtplan, orientation=(0, 1, 0, -1, 0, 0))  # rotated 90 degrees
    _, issues = _manifest_dose(trial)
    issue = issues.filter(pl.col("patient_id") == "P").row(0, named=True)
    assert issue["code"] == "RTDOSE_GRID_MISALIGNED" and "beam2.dcm" in issue["message"]
    with pytest.raises(PatientDataError) as err:
        read_plan_dose([p1, p2])
    assert err.value.code == "RTDOSE_GRID_MISALIGNED"


def test_part_on_another_frame_of_reference_is_refused(plan):
    trial, dose = plan
    rtplan = uid("P/rtplan")
    p1 = dose("beam1", summation="BEAM", rtplan_sop=rtplan)
    p2 = dose("beam2", summation="BEAM", rtplan_sop=rtplan, for_uid=uid("P/other-for"))
    _, issues = _manifest_dose(trial)
    issue = issues.filter(pl.col("patient_id") == "P").row(0, named=True)
    assert issue["code"] == "RTDOSE_OTHER_FRAME"
    assert "beam2.dcm" in issue["message"] and uid("P/other-for") in issue["message"]
    with pytest.raises(PatientDataError) as err:
        read_plan_dose([p1, p2])
    assert err.value.code == "RTDOSE_OTHER_FRAME"


def test_per_session_dose_is_refused(plan):
    trial, dose = plan
    dose("session", summation="FRACTION_SESSION", rtplan_sop=uid("P/rtplan"))
    dose("total", summation="PLAN", rtplan_sop=uid("P/other"))
    _, issues = _manifest_dose(trial)
    issue = issues.filter(pl.col("patient_id") == "P").row(0, named=True)
    assert issue["code"] == "RTDOSE_SUMMATION_TYPE" and "FRACTION_SESSION" in issue["message"]


# ------------------------------------------------------------------------------ selection rule alone


def _part(name, kind, plans=(), units="GY", for_uid="F"):
    return DosePart(name, kind, units, for_uid, frozenset(plans), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0))


def test_multi_plan_total_covers_its_plans_and_their_beams():
    sel = select_plan_doses([_part("a", "PLAN", ["p1"]), _part("b", "MULTI_PLAN", ["p1", "p2"]),
                             _part("c", "BEAM", ["p2"]), _part("d", "FRACTION", ["p3"])])
    assert [p.path for p in sel.summed] == ["b", "d"]
    assert [(p.path, t.path) for p, t in sel.covered] == [("a", "b"), ("c", "b")]


@pytest.mark.parametrize("parts, code", [
    ([_part("a", "PLAN", ["p1"]), _part("b", "PLAN", ["p1"])], "AMBIGUOUS_RTDOSE"),  # one plan twice
    ([_part("a", "PLAN", ["p1"]), _part("b", "BEAM", [])], "AMBIGUOUS_RTDOSE"),  # inside the total or not?
    ([_part("a", None), _part("b", "BEAM", ["p1"])], "RTDOSE_SUMMATION_TYPE"),  # untyped among several
    ([_part("a", "BEAM", ["p1"], units="CGY")], "RTDOSE_UNITS"),
])
def test_selection_refuses_what_it_cannot_tell(parts, code):
    with pytest.raises(PatientDataError) as err:
        select_plan_doses(parts)
    assert err.value.code == code


def test_single_untyped_dose_is_the_plan_dose():
    sel = select_plan_doses([_part("a", None)])
    assert [p.path for p in sel.summed] == ["a"] and not sel.covered
