"""Patient manifest (rule 1): roles, reasons, explained refusals, fingerprints."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rtmap_assets.config import load_trial_config
from rtmap_assets.errors import PatientDataError
from rtmap_assets.dicom.catalog import catalog_folder
from rtmap_assets.dicom.manifest import (
    ISSUES_SCHEMA,
    MANIFEST_SCHEMA,
    ROLES,
    build_manifest,
    complete_rows,
    patient_fingerprints,
    sort_slices,
)

try:
    from rtmap_assets_tests.dicom_factory import (
        uid, write_image_series, write_patient, write_rtdose, write_rtstruct)
except ImportError:  # rootdir-less import mode
    from dicom_factory import uid, write_image_series, write_patient, write_rtdose, write_rtstruct

CONFIG = load_trial_config()


def _manifest(trial: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    return build_manifest(catalog_folder(trial).files, CONFIG)


def _issue(issues: pl.DataFrame, pid: str) -> dict:
    rows = issues.filter(pl.col("patient_id") == pid).to_dicts()
    assert len(rows) == 1, rows
    return rows[0]


@pytest.fixture
def trial(tmp_path: Path) -> Path:
    return tmp_path / "raw" / "T1"


def test_complete_patient_has_five_roles_with_reasons(trial: Path):
    pf = write_patient(trial / "P1", "P1")
    manifest, issues = _manifest(trial)
    assert issues.is_empty()
    assert dict(manifest.schema) == MANIFEST_SCHEMA
    assert manifest["role"].to_list() == list(ROLES)
    rows = {r["role"]: r for r in manifest.to_dicts()}

    ct = rows["planning_ct"]
    assert (ct["modality"], ct["n_files"], ct["series_instance_uid"]) == ("CT", 4, pf.planning_ct.series_uid)
    assert ct["frame_of_reference_uid"] == pf.planning_ct.for_uid and ct["sop_instance_uid"] is None
    assert ct["days_from_planning"] == 0 and rows["relapse_rtstruct"]["days_from_planning"] == (dt.date(2021, 10, 20) - dt.date(2020, 1, 10)).days
    assert "RD.dcm" in ct["reason"] and "CTV_65" in ct["reason"] and "*CTV*65*" in ct["reason"]

    rs = rows["planning_rtstruct"]
    assert (rs["matched_structure"], rs["matched_alias"]) == ("CTV_65", "*CTV*65*")
    assert rs["files"] == ["T1/P1/planning/rs/RS.dcm"] and rs["sop_instance_uid"]
    assert rows["planning_rtdose"]["files"] == ["T1/P1/planning/rd/RD.dcm"]
    assert "PLAN" in rows["planning_rtdose"]["reason"]

    rel = rows["relapse_rtstruct"]
    assert (rel["matched_structure"], rel["matched_alias"]) == ("Rec_CT", "Rec_CT")
    assert "649 days after the planning study" in rel["reason"] and "2021" not in rel["reason"]  # rule 17
    img = rows["relapse_image"]
    assert (img["modality"], img["series_instance_uid"]) == ("CT", pf.relapse_image.series_uid)
    assert img["frame_of_reference_uid"] == rel["frame_of_reference_uid"] == pf.relapse_image.for_uid

    assert all(r["reason"] for r in rows.values())
    assert manifest["input_fingerprint"].n_unique() == 1
    assert manifest["trial"].to_list() == ["T1"] * 5
    assert manifest["complete"].to_list() == [True] * 5 and complete_rows(manifest).height == 5


def test_missing_rtdose_is_explained_and_isolated(trial: Path):
    write_patient(trial / "GOOD", "GOOD")
    write_patient(trial / "NODOSE", "NODOSE", with_dose=False)
    manifest, issues = _manifest(trial)
    assert dict(issues.schema) == ISSUES_SCHEMA
    assert manifest["patient_id"].unique().to_list() == ["GOOD"] and manifest.height == 5
    issue = _issue(issues, "NODOSE")
    assert (issue["stage"], issue["code"]) == ("manifest", "NO_RTDOSE")
    assert "no RTDOSE" in issue["message"] and issue["file"].startswith("T1/NODOSE/")


def test_two_ct_series_on_the_dose_frame_are_ambiguous(trial: Path):
    pf = write_patient(trial / "P", "P", with_dose=True)
    # a second CT series in the planning frame of reference, and a structure set that names
    # only the frame of reference: nothing tells which series the CTVs were drawn on
    write_image_series(trial / "P" / "planning" / "ct2", "P/ct2", "P", pf.planning_ct.study_uid,
                       pf.planning_ct.for_uid, "20200110")
    (pf.planning_rtstruct).unlink()
    write_rtstruct(pf.planning_rtstruct, "P/plan", "P", pf.planning_ct.study_uid, "20200110",
                   ["CTV_65", "BODY"], referenced=pf.planning_ct, reference_series=False)
    manifest, issues = _manifest(trial)
    assert manifest.is_empty()
    issue = _issue(issues, "P")
    assert issue["code"] == "AMBIGUOUS_PLANNING_CT"
    assert pf.planning_ct.series_uid in issue["message"] and "2 CT series" in issue["message"]


def test_series_reference_resolves_a_shared_frame(trial: Path):
    pf = write_patient(trial / "P", "P")
    extra = write_image_series(trial / "P" / "planning" / "ct2", "P/ct2", "P", pf.planning_ct.study_uid,
                               pf.planning_ct.for_uid, "20200110")
    manifest, issues = _manifest(trial)
    assert issues.is_empty()
    ct = manifest.filter(pl.col("role") == "planning_ct").row(0, named=True)
    assert ct["series_instance_uid"] == pf.planning_ct.series_uid
    assert extra.series_uid in ct["reason"]  # the other series is named, not silently dropped


def test_two_candidate_planning_series_are_ambiguous(trial: Path):
    write_patient(trial / "P", "P")
    # a re-plan: another CT, CTV structure set and dose on a new frame of reference
    study, for_uid = uid("P/replan-study"), uid("P/replan-for")
    ser = write_image_series(trial / "P" / "replan" / "ct", "P/replan", "P", study, for_uid, "20200301")
    rs = write_rtstruct(trial / "P" / "replan" / "RS.dcm", "P/replan", "P", study, "20200301",
                        ["CTV_60"], referenced=ser)
    write_rtdose(trial / "P" / "replan" / "RD.dcm", "P/replan", "P", study, "20200301", for_uid, rtstruct_sop=rs)
    manifest, issues = _manifest(trial)
    assert manifest.is_empty()
    assert _issue(issues, "P")["code"] == "AMBIGUOUS_PLANNING_CT"


@pytest.mark.parametrize("relapse_date", [None, "20200110"])
def test_no_later_study(trial: Path, relapse_date):
    write_patient(trial / "P", "P", relapse_date=relapse_date)
    manifest, issues = _manifest(trial)
    issue = _issue(issues, "P")
    assert issue["code"] == "NO_RELAPSE_STUDY" and "+0 days from planning" in issue["message"] and "2020" not in issue["message"]
    # refused only for its relapse: the planning roles it resolved stay, marked incomplete
    assert manifest["role"].to_list() == ["planning_ct", "planning_rtstruct", "planning_rtdose"]
    assert manifest["complete"].to_list() == [False] * 3 and complete_rows(manifest).is_empty()
    assert manifest["input_fingerprint"].n_unique() == 1


def test_later_study_without_recurrence_structure(trial: Path):
    write_patient(trial / "P", "P", recurrence_name="GTV_new")
    manifest, issues = _manifest(trial)
    issue = _issue(issues, "P")
    assert issue["code"] == "NO_RECURRENCE_STRUCTURE"
    assert "GTV_new" in issue["message"] and "Rec_CT" in issue["message"]


def test_two_relapse_studies_are_ambiguous(trial: Path):
    pf = write_patient(trial / "P", "P")
    study, for_uid = uid("P/second-study"), uid("P/second-for")
    ser = write_image_series(trial / "P" / "second" / "mr", "P/second", "P", study, for_uid, "20220505",
                             modality="MR")
    write_rtstruct(trial / "P" / "second" / "RS.dcm", "P/second", "P", study, "20220505", ["rGTV"],
                   referenced=ser)
    manifest, issues = _manifest(trial)
    assert manifest["role"].to_list() == ["planning_ct", "planning_rtstruct", "planning_rtdose"]
    assert not any(manifest["complete"])
    issue = _issue(issues, "P")
    assert issue["code"] == "AMBIGUOUS_RELAPSE" and "+846 days from planning" in issue["message"] and "2022" not in issue["message"]
    assert str(pf.relapse_rtstruct.relative_to(trial.parent)) in issue["message"]


def test_two_recurrence_structures_are_ambiguous(trial: Path):
    pf = write_patient(trial / "P", "P")
    pf.relapse_rtstruct.unlink()
    write_rtstruct(pf.relapse_rtstruct, "P/rel", "P", pf.relapse_image.study_uid, "20211020",
                   ["Rec_CT", "rGTV_2"], referenced=pf.relapse_image)
    _, issues = _manifest(trial)
    issue = _issue(issues, "P")
    assert issue["code"] == "AMBIGUOUS_RECURRENCE_STRUCTURE" and "rGTV_2" in issue["message"]


def test_mr_relapse_image_is_accepted(trial: Path):
    pf = write_patient(trial / "P", "P", relapse_modality="MR")
    manifest, issues = _manifest(trial)
    assert issues.is_empty()
    img = manifest.filter(pl.col("role") == "relapse_image").row(0, named=True)
    assert (img["modality"], img["series_instance_uid"], img["n_files"]) == ("MR", pf.relapse_image.series_uid, 4)


def test_relapse_image_found_by_frame_of_reference(trial: Path):
    pf = write_patient(trial / "P", "P", relapse_modality="MR")
    pf.relapse_rtstruct.unlink()
    write_rtstruct(pf.relapse_rtstruct, "P/rel", "P", pf.relapse_image.study_uid, "20211020", ["Rec_CT"],
                   referenced=pf.relapse_image, reference_series=False)
    manifest, issues = _manifest(trial)
    assert issues.is_empty()
    img = manifest.filter(pl.col("role") == "relapse_image").row(0, named=True)
    assert img["series_instance_uid"] == pf.relapse_image.series_uid and "frame of reference" in img["reason"]


def test_series_files_are_sorted_by_position_not_name_or_number(trial: Path):
    pf = write_patient(trial / "P", "P")
    # rename the planning slices so that name order is the reverse of position order
    paths = pf.planning_ct.paths
    for i, p in enumerate(paths):
        p.rename(p.with_name(f"IM{len(paths) - i:03d}.dcm"))
    manifest, _ = _manifest(trial)
    files = manifest.filter(pl.col("role") == "planning_ct")["files"].to_list()[0]
    assert [Path(f).name for f in files] == ["IM004.dcm", "IM003.dcm", "IM002.dcm", "IM001.dcm"]
    rows = [{"path": f"s{i}", "image_position_patient": [0.0, 0.0, z], "instance_number": i,
             "image_orientation_patient": [1, 0, 0, 0, 1, 0]} for i, z in enumerate([5.0, -5.0, 0.0])]
    assert sort_slices(rows) == ["s1", "s2", "s0"]


def test_fingerprints_follow_the_files(trial: Path):
    pf = write_patient(trial / "P", "P")
    write_patient(trial / "Q", "Q")
    extra = trial / "P" / "notes_ct"
    write_image_series(extra, "P/scout", "P", uid("P/scout-study"), uid("P/scout-for"), "20190101", n_slices=1)
    m1, _ = _manifest(trial)
    f1 = patient_fingerprints(catalog_folder(trial).files)
    assert set(f1) == {"P", "Q"}

    # an unrelated file of P changes P's patient fingerprint, not its manifest input fingerprint
    scout = next(extra.glob("*.dcm"))
    os.utime(scout, ns=(0, scout.stat().st_mtime_ns + 10**9))
    m2, _ = _manifest(trial)
    f2 = patient_fingerprints(catalog_folder(trial).files)
    assert f2["P"] != f1["P"] and f2["Q"] == f1["Q"]
    assert m2.equals(m1)

    # a chosen file of P changes P's input fingerprint only
    dose = pf.planning_rtdose
    os.utime(dose, ns=(0, dose.stat().st_mtime_ns + 10**9))
    m3, _ = _manifest(trial)
    fp = {r["patient_id"]: r["input_fingerprint"] for r in m3.select("patient_id", "input_fingerprint").unique().to_dicts()}
    before = {r["patient_id"]: r["input_fingerprint"] for r in m1.select("patient_id", "input_fingerprint").unique().to_dicts()}
    assert fp["P"] != before["P"] and fp["Q"] == before["Q"]


def test_empty_catalog_gives_empty_tables_with_schema(trial: Path):
    trial.mkdir(parents=True)
    manifest, issues = _manifest(trial)
    assert manifest.is_empty() and issues.is_empty()
    assert dict(manifest.schema) == MANIFEST_SCHEMA and dict(issues.schema) == ISSUES_SCHEMA


# ------------------------------------------------------------------ what the manifest says it found


def test_missing_relapse_image_keeps_the_four_roles_found(trial: Path):
    pf = write_patient(trial / "P", "P")
    for path in pf.relapse_image.paths:
        path.unlink()
    manifest, issues = _manifest(trial)
    assert _issue(issues, "P")["code"] == "NO_RELAPSE_IMAGE"
    assert manifest["role"].to_list() == ["planning_ct", "planning_rtstruct", "planning_rtdose", "relapse_rtstruct"]
    rel = manifest.filter(pl.col("role") == "relapse_rtstruct").row(0, named=True)
    assert rel["matched_structure"] == "Rec_CT" and rel["complete"] is False
    # the relapse RTSTRUCT's frame of reference comes from its own reference when no image matched
    assert rel["frame_of_reference_uid"] == pf.relapse_image.for_uid


def test_one_slice_ct_is_not_a_planning_ct(trial: Path):
    write_patient(trial / "P", "P", n_slices=1)
    manifest, issues = _manifest(trial)
    issue = _issue(issues, "P")
    assert issue["code"] == "PLANNING_CT_ONE_SLICE" and "1 files" in issue["message"]
    assert manifest.is_empty()


def test_one_slice_scout_beside_the_planning_ct_is_ignored(trial: Path):
    pf = write_patient(trial / "P", "P")
    scout = write_image_series(trial / "P" / "planning" / "scout", "P/scout", "P", pf.planning_ct.study_uid,
                               pf.planning_ct.for_uid, "20200110", n_slices=1)
    manifest, issues = _manifest(trial)
    assert issues.is_empty()
    ct = manifest.filter(pl.col("role") == "planning_ct").row(0, named=True)
    assert ct["series_instance_uid"] == pf.planning_ct.series_uid and ct["n_files"] == 4
    assert scout.series_uid in ct["reason"]  # named as another CT series on the planning frame


def test_empty_planning_rtstruct_is_said_to_be_empty(trial: Path):
    pf = write_patient(trial / "P", "P", relapse_date=None)
    pf.planning_rtstruct.unlink()
    write_rtstruct(pf.planning_rtstruct, "P/plan", "P", pf.planning_ct.study_uid, "20200110", [],
                   referenced=pf.planning_ct)
    _, issues = _manifest(trial)
    issue = _issue(issues, "P")
    assert issue["code"] == "RTSTRUCT_EMPTY" and "T1/P/planning/rs/RS.dcm" in issue["message"]
    assert issue["file"] == "T1/P/planning/rs/RS.dcm"


def test_empty_relapse_rtstruct_is_said_to_be_empty_and_planning_rows_stay(trial: Path):
    pf = write_patient(trial / "P", "P")
    pf.relapse_rtstruct.unlink()
    write_rtstruct(pf.relapse_rtstruct, "P/rel", "P", pf.relapse_image.study_uid, "20211020", [],
                   referenced=pf.relapse_image)
    manifest, issues = _manifest(trial)
    issue = _issue(issues, "P")
    assert issue["code"] == "RTSTRUCT_EMPTY" and "no ROI" in issue["message"]
    assert "T1/P/relapse/rs/RS.dcm" in issue["message"]
    assert manifest["role"].to_list() == ["planning_ct", "planning_rtstruct", "planning_rtdose"]


def test_dose_on_another_frame_of_reference_says_so(trial: Path):
    pf = write_patient(trial / "P", "P")
    pf.planning_rtdose.unlink()
    write_rtdose(pf.planning_rtdose, "P/plan", "P", pf.planning_ct.study_uid, "20200110", uid("P/elsewhere"))
    manifest, issues = _manifest(trial)
    issue = _issue(issues, "P")
    assert issue["code"] == "RTDOSE_OTHER_FRAME"
    assert uid("P/elsewhere") in issue["message"] and pf.planning_ct.for_uid in issue["message"]
    assert manifest.is_empty()


def test_refused_dose_keeps_the_other_roles_and_relapse_is_still_resolved(trial: Path):
    pf = write_patient(trial / "P", "P")
    pf.planning_rtdose.unlink()
    write_rtdose(pf.planning_rtdose, "P/plan", "P", pf.planning_ct.study_uid, "20200110", pf.planning_ct.for_uid,
                 units="RELATIVE")
    manifest, issues = _manifest(trial)
    assert _issue(issues, "P")["code"] == "RTDOSE_RELATIVE"
    assert manifest["role"].to_list() == ["planning_ct", "planning_rtstruct", "relapse_image", "relapse_rtstruct"]
    assert not any(manifest["complete"])


def test_incomplete_and_complete_patients_side_by_side(trial: Path):
    write_patient(trial / "GOOD", "GOOD")
    write_patient(trial / "NOREL", "NOREL", relapse_date=None)
    manifest, issues = _manifest(trial)
    assert issues["patient_id"].to_list() == ["NOREL"]
    assert complete_rows(manifest)["patient_id"].unique().to_list() == ["GOOD"]
    assert manifest.filter(pl.col("patient_id") == "NOREL").height == 3


def test_empty_recurrence_contour_is_recurrence_empty_with_its_name():
    # the catalog reads ROI names only, so an ROI without contours is found at reading time
    from rtmap_assets.dicom.readers import RTStruct
    from rtmap_assets.pipeline.imaging_patient import refuse_empty_match

    square = np.array([[0, 0, 0], [5, 0, 0], [5, 5, 0], [0, 5, 0]], dtype=float)
    rs = RTStruct("1.2.3", {"Rec_CT": [], "thyroid_cartilage": [square]})
    with pytest.raises(PatientDataError) as err:
        refuse_empty_match(rs, CONFIG.aliases.recurrence, "recurrence", "RECURRENCE_EMPTY", "rel/RS.dcm")
    assert err.value.code == "RECURRENCE_EMPTY" and "'Rec_CT'" in err.value.message
    assert err.value.file == "rel/RS.dcm"
    rs.contours["Rec_CT"] = [square]
    refuse_empty_match(rs, CONFIG.aliases.recurrence, "recurrence", "RECURRENCE_EMPTY", "rel/RS.dcm")  # drawn: no error
