"""Incremental catalog: unchanged files reused unread, changed re-read, deleted dropped."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import polars as pl
import pydicom

from rtmap_assets.dicom import catalog
from rtmap_assets.dicom.catalog import FILES_SCHEMA, catalog_folder

try:
    from rtmap_assets_tests.dicom_factory import write_patient
except ImportError:  # rootdir-less import mode
    from dicom_factory import write_patient


def _setup(tmp_path: Path) -> Path:
    d = tmp_path / "raw" / "TRIAL-X"
    write_patient(d / "e1", "S1")
    write_patient(d / "e2", "S2")
    (d / "e1" / "readme.txt").write_text("export notes")
    return d


def test_nothing_changed_reads_nothing(tmp_path: Path, monkeypatch):
    d = _setup(tmp_path)
    first = catalog_folder(d)
    assert first.n_read == 23 and first.rejects.height == 1

    def boom(paths):
        raise AssertionError(f"re-read {paths}")

    monkeypatch.setattr(catalog, "_read_many", boom)
    again = catalog_folder(d, first.files, first.rejects)
    assert (again.n_read, again.n_reused, again.n_removed) == (0, 23, 0)
    assert again.files.equals(first.files)
    assert again.rejects.equals(first.rejects)  # including the original rejected_at


def test_changed_added_and_deleted_files(tmp_path: Path):
    d = _setup(tmp_path)
    first = catalog_folder(d)
    # changed: a re-exported RTDOSE with another summation type (new content, new mtime)
    rd = d / "e1" / "planning" / "rd" / "RD.dcm"
    ds = pydicom.dcmread(rd)
    ds.DoseSummationType = "BEAM"
    ds.save_as(rd)
    st = rd.stat()
    os.utime(rd, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    # deleted: patient 2's relapse structure set and the text file
    (d / "e2" / "relapse" / "rs" / "RS.dcm").unlink()
    (d / "e1" / "readme.txt").unlink()
    # added: a third patient
    write_patient(d / "e3", "S3")

    res = catalog_folder(d, first.files, first.rejects)
    assert res.n_read == 1 + 11
    assert res.n_removed == 2
    assert res.n_reused == 22 - 1 - 1  # all DICOM files but the changed and the deleted one
    assert res.rejects.is_empty()
    assert res.files.height == 22 - 1 + 11
    assert res.files.filter(pl.col("path").str.ends_with("e1/planning/rd/RD.dcm"))["dose_summation_type"].to_list() == ["BEAM"]
    assert res.files["path"].is_sorted()
    # same content as a cold scan
    cold = catalog_folder(d)
    assert res.files.equals(cold.files)


def test_duplicate_resolution_is_redone(tmp_path: Path):
    d = _setup(tmp_path)
    rs = d / "e1" / "planning" / "rs" / "RS.dcm"
    copy = d / "e1" / "zz_copy_of_RS.dcm"  # same export: another export would be a PATIENT_ID_MISMATCH
    shutil.copy(rs, copy)
    first = catalog_folder(d)
    assert first.rejects.filter(pl.col("reason").str.starts_with("duplicate"))["path"].to_list() == [
        "TRIAL-X/e1/zz_copy_of_RS.dcm"]
    rs.unlink()  # the kept file goes away: the copy must take its place
    res = catalog_folder(d, first.files, first.rejects)
    assert "TRIAL-X/e1/zz_copy_of_RS.dcm" in res.files["path"].to_list()
    assert not res.rejects["reason"].str.starts_with("duplicate").any()


def test_previous_table_with_old_schema_is_not_trusted(tmp_path: Path):
    d = _setup(tmp_path)
    first = catalog_folder(d)
    old = first.files.drop("series_description")
    res = catalog_folder(d, old, first.rejects)
    assert res.n_read == 22 and dict(res.files.schema) == FILES_SCHEMA
    assert res.files.equals(first.files)


def test_round_trip_through_parquet(tmp_path: Path):
    d = _setup(tmp_path)
    first = catalog_folder(d)
    first.files.write_parquet(tmp_path / "f.parquet")
    first.rejects.write_parquet(tmp_path / "r.parquet")
    res = catalog_folder(d, pl.read_parquet(tmp_path / "f.parquet"), pl.read_parquet(tmp_path / "r.parquet"))
    assert res.n_read == 0 and res.files.equals(first.files)
