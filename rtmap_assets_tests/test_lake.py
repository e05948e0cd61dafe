"""Lake writes are atomic, issues replace per stage, covariates keep only whitelisted columns,
and alias matching is case-insensitive with wildcards."""

from __future__ import annotations

import polars as pl
import pytest

from rtmap_assets.lake import Lake, atomic_write, write_parquet
from rtmap_assets.lake.contract import TableSpec
from rtmap_assets.naming import first_match, match_aliases
from rtmap_assets.pipeline.covariates import read_covariates
from rtmap_assets.pipeline.issues import read_issues, record_issues


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path):
    target = tmp_path / "t" / "data.parquet"
    write_parquet(pl.DataFrame({"a": [1]}), target)

    def boom(tmp):
        tmp.write_bytes(b"half a file")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert pl.read_parquet(target)["a"].to_list() == [1]
    assert [p.name for p in target.parent.iterdir()] == ["data.parquet"]


SPEC = TableSpec("t", "patient", {"patient_id": pl.String(), "x": pl.Float64(), "y": pl.String()})


def test_lake_replaces_and_reads_patients_through_the_contract(tmp_path):
    lake = Lake(tmp_path)
    lake.replace_patient(SPEC, "P1", pl.DataFrame({"patient_id": ["P1"], "x": [1], "y": [None]}))
    lake.replace_patient(SPEC, "P2", pl.DataFrame({"patient_id": ["P2"], "x": [2.0], "y": ["new"]}))
    lake.replace_patient(SPEC, "P1", pl.DataFrame({"patient_id": ["P1"], "x": [3.0], "y": ["again"]}))
    df = lake.read(SPEC).sort("patient_id")
    assert df["x"].to_list() == [3.0, 2.0] and df["y"].to_list() == ["again", "new"]
    assert df.schema == SPEC.schema  # cast to the contract's types (x was written as an integer)
    assert lake.read(SPEC, patient_id="P2")["x"].to_list() == [2.0]
    assert lake.read(TableSpec("missing", "cohort", SPEC.schema)).schema == SPEC.schema


def test_lake_refuses_rows_that_break_the_contract(tmp_path):
    with pytest.raises(ValueError, match=r"missing columns \['y'\], extra columns \['z'\]"):
        Lake(tmp_path).replace_patient(SPEC, "P1", pl.DataFrame({"patient_id": ["P1"], "x": [1.0], "z": [1]}))


def test_issues_are_not_written_when_there_were_none_and_are_none(tmp_path):
    from rtmap_assets.lake.contract import PIPELINE_ISSUES

    lake = Lake(tmp_path)
    record_issues(lake, "P1", "imaging", [])
    assert not lake.store.exists(PIPELINE_ISSUES)


def test_issues_replace_per_stage(tmp_path):
    lake = Lake(tmp_path)
    record_issues(lake, "P1", "imaging", [{"code": "X", "message": "bad", "file": "f.dcm"}])
    record_issues(lake, "P1", "manifest", [{"code": "NO_RTDOSE", "message": "no dose", "file": None}])
    assert sorted(read_issues(lake)["code"].to_list()) == ["NO_RTDOSE", "X"]
    record_issues(lake, "P1", "imaging", [])  # solved
    assert read_issues(lake)["code"].to_list() == ["NO_RTDOSE"]


def test_covariates_drop_identifying_columns(tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("patient_id,arm,patient_name,birth_date,months_to_relapse\nP1,A,Doe^John,19600101,14\n")
    df, dropped = read_covariates(csv)
    assert dropped == ["patient_name", "birth_date"]
    assert "patient_name" not in df.columns and df["months_to_relapse"].to_list() == [14.0]
    assert read_covariates(tmp_path / "none.csv")[0].is_empty()


def test_alias_matching():
    names = ["BODY", "ctv_65Gy", "CTV 60", "Thyroid_Cartilage", "Rec_CT"]
    assert first_match(names, ["*CTV*65*"]) == ("ctv_65Gy", "*CTV*65*")
    assert first_match(names, ["Rec_CT", "*recurrence*"]) == ("Rec_CT", "Rec_CT")
    assert first_match(names, ["*thy*"]) == ("Thyroid_Cartilage", "*thy*")
    assert match_aliases(names, ["*ctv*"]) == [("ctv_65Gy", "*ctv*"), ("CTV 60", "*ctv*")]
    assert first_match(names, ["*parotid*"]) is None
