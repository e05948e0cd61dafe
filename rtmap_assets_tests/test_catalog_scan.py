"""DICOM header catalog: columns, privacy, rejects, duplicates, encodings, schema stability."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import polars as pl
import pydicom
import pytest
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from rtmap_assets.dicom.catalog import (
    EMPTY_FILE_REASON,
    FILES_SCHEMA,
    REJECTS_SCHEMA,
    catalog_folder,
    read_header,
    read_header_pydicom,
    resolve_path,
)

try:
    from rtmap_assets_tests.dicom_factory import IDENTIFYING, SeriesInfo, uid, write_patient, write_rtstruct
except ImportError:  # rootdir-less import mode
    from dicom_factory import IDENTIFYING, SeriesInfo, uid, write_patient, write_rtstruct


@pytest.fixture
def trial_dir(tmp_path: Path) -> Path:
    d = tmp_path / "raw" / "TRIAL-X"
    write_patient(d / "export-1", "SUBJ-1")
    return d


def _row(files: pl.DataFrame, suffix: str) -> dict:
    rows = files.filter(pl.col("path").str.ends_with(suffix)).to_dicts()
    assert len(rows) == 1, suffix
    return rows[0]


def test_catalog_columns_and_values(trial_dir: Path):
    res = catalog_folder(trial_dir)
    files = res.files
    assert dict(files.schema) == FILES_SCHEMA
    assert files.height == 4 + 1 + 1 + 4 + 1  # planning CT, RS, RD, relapse CT, RS
    assert res.rejects.is_empty() and res.n_read == files.height and res.n_reused == 0

    ct = _row(files, "planning/ct/CT002.dcm")
    assert ct["path"] == "TRIAL-X/export-1/planning/ct/CT002.dcm"  # relative to the raw root
    assert resolve_path(trial_dir.parent, ct["path"]).is_file()
    # rule 17: the subject is the export folder; the PatientID (SUBJ-1) is never stored
    assert ct["trial"] == "TRIAL-X" and ct["export"] == "export-1" and ct["patient_id"] == "export-1"
    assert ct["modality"] == "CT" and ct["study_date"] == dt.date(2020, 1, 10)
    assert ct["image_position_patient"] == [-8.0, -8.0, -5.0]
    assert ct["image_orientation_patient"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert (ct["rows"], ct["columns"], ct["pixel_spacing"], ct["slice_thickness"]) == (8, 8, [2.0, 2.0], 2.5)
    assert ct["instance_number"] == 2 and ct["structure_names"] is None
    st = os.stat(resolve_path(trial_dir.parent, ct["path"]))
    assert (ct["size_bytes"], ct["mtime_ns"]) == (st.st_size, st.st_mtime_ns)

    rs = _row(files, "planning/rs/RS.dcm")
    assert rs["modality"] == "RTSTRUCT"
    assert rs["structure_names"] == ["CTV_65", "CTV_60", "CTV_54", "BODY", "thyroid_cartilage", "SpinalCord"]
    assert rs["referenced_series_uids"] == [ct["series_instance_uid"]]
    assert rs["referenced_frame_of_reference_uids"] == [ct["frame_of_reference_uid"]]

    rd = _row(files, "planning/rd/RD.dcm")
    assert (rd["modality"], rd["dose_units"], rd["dose_summation_type"], rd["number_of_frames"]) == (
        "RTDOSE", "GY", "PLAN", 3)
    assert rd["frame_of_reference_uid"] == ct["frame_of_reference_uid"]
    assert rd["referenced_sop_instance_uids"] == [uid("SUBJ-1/rtplan"), rs["sop_instance_uid"]]


def test_identifying_tags_never_enter_any_column(trial_dir: Path):
    files = catalog_folder(trial_dir).files
    some = next(trial_dir.rglob("*.dcm"))
    assert pydicom.dcmread(some).PatientName == "Doe^Jane"  # the files do carry them
    text = " ".join(str(v) for row in files.iter_rows() for v in row)
    for value in IDENTIFYING.values():
        assert value not in text
    assert "Doe" not in text and "Jane" not in text
    forbidden = {"patient_name", "patient_birth_date", "patient_address", "other_patient_ids",
                 "institution_name", "referring_physician_name", "operators_name"}
    assert not forbidden & set(files.columns)


def test_rejects_with_reasons(trial_dir: Path):
    bad = trial_dir / "export-1" / "junk"
    bad.mkdir()
    (bad / "notes.txt").write_text("not dicom at all")
    (bad / "empty.dcm").write_bytes(b"")
    good = next((trial_dir / "export-1" / "planning" / "ct").glob("CT000.dcm"))
    data = good.read_bytes()
    (bad / "cut.dcm").write_bytes(data[: len(data) - 40])  # export still being written
    ds = pydicom.dcmread(good)
    del ds.SOPInstanceUID
    ds.save_as(bad / "nosop.dcm")
    ds = pydicom.dcmread(good)
    ds.SOPInstanceUID = uid("other")
    ds.PatientID = ""
    ds.save_as(bad / "nopid.dcm")
    # hidden files and folders are ignored, not rejected
    (trial_dir / "export-1" / ".partial.dcm").write_bytes(data)
    (trial_dir / ".cache").mkdir()
    (trial_dir / ".cache" / "x.dcm").write_bytes(data)

    res = catalog_folder(trial_dir)
    assert dict(res.rejects.schema) == REJECTS_SCHEMA
    reasons = {Path(p).name: r for p, r in res.rejects.select("path", "reason").iter_rows()}
    assert reasons["notes.txt"] == "not a DICOM file (no DICM preamble)"
    assert reasons["empty.dcm"] == EMPTY_FILE_REASON
    assert reasons["cut.dcm"].startswith("unreadable DICOM: truncated pixel data")
    assert reasons["nosop.dcm"] == "missing SOPInstanceUID"
    assert reasons["nopid.dcm"] == "missing PatientID"
    assert len(reasons) == 5
    assert not res.files["path"].str.contains(r"/\.").any()
    assert res.rejects["rejected_at"].null_count() == 0


def test_duplicate_sop_keeps_first_path(trial_dir: Path):
    src = trial_dir / "export-1" / "planning" / "rs" / "RS.dcm"
    shutil.copy(src, trial_dir / "export-1" / "planning" / "rs" / "ZZ_copy.dcm")
    shutil.copy(src, trial_dir / "export-1" / "AA_copy.dcm")
    res = catalog_folder(trial_dir)
    assert res.files["sop_instance_uid"].is_unique().all()
    kept = res.files.filter(pl.col("modality") == "RTSTRUCT", pl.col("study_date") == dt.date(2020, 1, 10))
    assert kept["path"].to_list() == ["TRIAL-X/export-1/AA_copy.dcm"]
    dups = res.rejects.sort("path")
    assert dups["reason"].to_list() == ["duplicate SOPInstanceUID of TRIAL-X/export-1/AA_copy.dcm"] * 2


def test_fast_parser_matches_pydicom_on_every_encoding(tmp_path: Path):
    d = tmp_path / "raw" / "T"
    pf = write_patient(d / "e", "P", relapse_modality="MR")
    und = d / "e" / "undefined.dcm"
    write_rtstruct(und, "und", "P", uid("s"), "20200101", ["CTV_60", "Rec_CT"], referenced=pf.planning_ct,
                   undefined_length=True)
    implicit = d / "e" / "implicit.dcm"
    ds = pydicom.dcmread(pf.planning_rtstruct)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.is_implicit_VR = True
    ds.SOPInstanceUID = uid("implicit")
    ds.save_as(implicit, write_like_original=False)
    big = d / "e" / "big.dcm"
    ds = pydicom.dcmread(pf.planning_ct.paths[0])
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.is_little_endian = False
    ds.SOPInstanceUID = uid("big")
    ds.save_as(big, write_like_original=False)
    latin = d / "e" / "latin.dcm"
    ds = pydicom.dcmread(pf.planning_ct.paths[1])
    ds.SeriesDescription = "Tête et cou"
    ds.SOPInstanceUID = uid("latin")
    ds.save_as(latin, write_like_original=False)

    paths = sorted(d.rglob("*.dcm"))
    assert len(paths) == 15
    for p in paths:
        assert read_header(p) == read_header_pydicom(p), p.name
    assert read_header(und)["structure_names"] == ["CTV_60", "Rec_CT"]
    assert read_header(implicit)["structure_names"][0] == "CTV_65"
    assert read_header(big)["rows"] == 8
    assert read_header(latin)["series_description"] == "Tête et cou"


def test_large_header_beyond_first_read(tmp_path: Path):
    """An RTSTRUCT whose referenced-image list is larger than the first 64 kB read."""
    d = tmp_path / "raw" / "T"
    n = 900  # referenced slices; the images themselves need not exist for a header read
    ser = SeriesInfo("CT", uid("st"), uid("ser"), uid("for"), "20200101", [],
                     [uid(f"sop{i}") for i in range(n)], [float(i) for i in range(n)])
    rs = d / "e" / "rs.dcm"
    write_rtstruct(rs, "big", "P", uid("st"), "20200101", ["CTV_60", "Lung"], referenced=ser, contour_points=3)
    assert rs.stat().st_size > 64 * 1024
    assert read_header(rs) == read_header_pydicom(rs)
    assert read_header(rs)["structure_names"] == ["CTV_60", "Lung"]


def test_empty_and_missing_folders_keep_the_schema(tmp_path: Path):
    (tmp_path / "raw" / "EMPTY").mkdir(parents=True)
    for folder in (tmp_path / "raw" / "EMPTY", tmp_path / "raw" / "MISSING"):
        res = catalog_folder(folder)
        assert res.files.height == 0 and res.rejects.height == 0
        assert dict(res.files.schema) == FILES_SCHEMA
        assert dict(res.rejects.schema) == REJECTS_SCHEMA


def test_worker_processes_give_the_same_catalog(trial_dir: Path):
    for i in range(3):
        write_patient(trial_dir / f"export-{i + 2}", f"SUBJ-{i + 2}", n_slices=25)
    one = catalog_folder(trial_dir, workers=1)
    two = catalog_folder(trial_dir, workers=2)
    assert one.files.height == 3 * 53 + 11
    assert one.files.equals(two.files)


# ------------------------------------------------------------------------ folders as users arrange them


def test_symlinked_patient_folder_is_followed(tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    write_patient(elsewhere / "SUBJ-2", "SUBJ-2")
    trial = tmp_path / "raw" / "TRIAL-X"
    write_patient(trial / "export-1", "SUBJ-1")
    (trial / "SUBJ-2").symlink_to(elsewhere / "SUBJ-2", target_is_directory=True)
    res = catalog_folder(trial)
    assert res.rejects.is_empty(), res.rejects.to_dicts()
    linked = res.files.filter(pl.col("patient_id") == "SUBJ-2")
    assert linked.height == 11  # 4 + 4 slices, 2 RTSTRUCTs, 1 RTDOSE (write_patient)
    assert linked["path"].str.starts_with("TRIAL-X/SUBJ-2/").all()
    assert linked["export"].unique().to_list() == ["SUBJ-2"]
    assert all(resolve_path(tmp_path / "raw", p).is_file() for p in linked["path"])


def test_symlink_loop_is_a_reject_not_a_hang(trial_dir: Path):
    inner = trial_dir / "export-1" / "planning"
    (inner / "back").symlink_to(trial_dir / "export-1", target_is_directory=True)  # loop to an ancestor
    (trial_dir / "again").symlink_to(inner / "ct", target_is_directory=True)  # second way into a walked folder
    res = catalog_folder(trial_dir)
    reasons = dict(res.rejects.select("path", "reason").iter_rows())
    assert reasons["TRIAL-X/export-1/planning/back"].startswith("symbolic link loop")
    assert "TRIAL-X/export-1" in reasons["TRIAL-X/export-1/planning/back"]
    assert reasons["TRIAL-X/again"].startswith("folder already catalogued as TRIAL-X/export-1/planning/ct")
    assert len(reasons) == 2
    assert res.files.height == 11 and res.files["sop_instance_uid"].n_unique() == 11  # nothing read twice


def test_non_utf8_names_are_rejects_and_the_rest_is_catalogued(trial_dir: Path):
    good = next((trial_dir / "export-1" / "planning" / "ct").glob("CT000.dcm"))
    base = os.fsencode(trial_dir / "export-1")
    bad_file = base + b"/caf\xe9.dcm"
    bad_dir = base + b"/r\xe9sultats"
    try:
        with open(bad_file, "wb") as fp:
            fp.write(good.read_bytes())
        os.mkdir(bad_dir)
        with open(bad_dir + b"/x.dcm", "wb") as fp:
            fp.write(good.read_bytes())
    except OSError as exc:  # a file system that refuses such names cannot hold them either
        pytest.skip(f"file system refuses non-UTF-8 names: {exc}")
    res = catalog_folder(trial_dir)
    reasons = dict(res.rejects.select("path", "reason").iter_rows())
    assert reasons["TRIAL-X/export-1/caf\\xe9.dcm"].startswith("name is not valid UTF-8 (file)")
    assert reasons["TRIAL-X/export-1/r\\xe9sultats"].startswith("name is not valid UTF-8 (folder")
    assert len(reasons) == 2
    assert res.files.height == 11 and res.files["patient_id"].unique().to_list() == ["export-1"]  # rule 17


def test_zero_byte_file_and_broken_link_have_their_own_reasons(trial_dir: Path):
    (trial_dir / "export-1" / "empty.dcm").write_bytes(b"")
    (trial_dir / "export-1" / "gone.dcm").symlink_to(trial_dir / "nowhere.dcm")
    res = catalog_folder(trial_dir)
    reasons = dict(res.rejects.select("path", "reason").iter_rows())
    assert reasons == {"TRIAL-X/export-1/empty.dcm": EMPTY_FILE_REASON,
                       "TRIAL-X/export-1/gone.dcm": "broken symbolic link (its target does not exist)"}
    # recomputed, not reused and not counted as removed, on the next incremental run
    again = catalog_folder(trial_dir, res.files, res.rejects)
    assert again.rejects.select("path", "reason").equals(res.rejects.select("path", "reason"))
    assert again.n_removed == 0 and again.n_read == 0
