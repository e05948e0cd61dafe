"""Rule 17: the trial subject ID comes from a declared source; a raw PatientID never leaves the reader."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from rtmap_assets.config import SubjectKey, load_trial_config
from rtmap_assets.dicom.catalog import (
    MISMATCH_CODE, SALT_FILE, UNMAPPED_CODE, catalog_folder, hash_patient_id, subject_issues, subject_salt)
from rtmap_assets.dicom.manifest import build_manifest

try:
    from rtmap_assets_tests.dicom_factory import uid, write_image_series, write_patient
except ImportError:  # rootdir-less import mode
    from dicom_factory import uid, write_image_series, write_patient

MRN = "MRN-40417711"  # a hospital number used as PatientID
OTHER_MRN = "MRN-99102233"


def _dump(*frames: pl.DataFrame) -> str:
    return "\n".join(str(f.to_dicts()) for f in frames)


@pytest.fixture
def trial(tmp_path: Path) -> Path:
    t = tmp_path / "data" / "raw" / "T1"
    write_patient(t / "SUBJ-A", MRN)
    return t


def test_folder_source_names_the_subject_and_drops_the_mrn(trial: Path):
    res = catalog_folder(trial)
    assert res.rejects.is_empty()
    assert set(res.files["patient_id"]) == {"SUBJ-A"}
    assert MRN not in _dump(res.files, res.rejects)
    salt = subject_salt(trial.parent.parent)
    assert (trial.parent.parent / SALT_FILE).stat().st_mode & 0o077 == 0  # the salt is private
    assert set(res.files["patient_id_hash"]) == {hash_patient_id(MRN, salt)}
    manifest, issues = build_manifest(res.files, load_trial_config())
    assert set(manifest["patient_id"]) == {"SUBJ-A"} and issues.is_empty()


def test_a_file_of_another_patient_is_a_mismatch_named_by_hash(trial: Path):
    write_image_series(trial / "SUBJ-A" / "stray", "stray", OTHER_MRN, uid("stray-study"), uid("stray-for"),
                       "20200110", n_slices=2)
    res = catalog_folder(trial)
    bad = res.rejects.filter(pl.col("reason").str.starts_with(MISMATCH_CODE))
    assert sorted(bad["path"]) == ["T1/SUBJ-A/stray/CT000.dcm", "T1/SUBJ-A/stray/CT001.dcm"]
    salt = subject_salt(trial.parent.parent)
    assert f"#{hash_patient_id(OTHER_MRN, salt)}" in bad["reason"][0]
    assert not res.files["path"].str.contains("stray").any()
    assert MRN not in _dump(res.files, res.rejects) and OTHER_MRN not in _dump(res.files, res.rejects)
    issues = subject_issues(res.rejects)
    assert [(i["patient_id"], i["code"]) for i in issues] == [("SUBJ-A", MISMATCH_CODE)]
    assert "(and 1 more file(s))" in issues[0]["message"] and OTHER_MRN not in issues[0]["message"]
    # recomputed, not reused: once the stray files go, nothing is rejected
    for f in (trial / "SUBJ-A" / "stray").iterdir():
        f.unlink()
    again = catalog_folder(trial, res.files, res.rejects)
    assert again.rejects.is_empty() and again.n_read == 0


def test_mapping_source(tmp_path: Path, trial: Path):
    write_patient(trial / "export-2", "UNKNOWN-77")
    mapping = tmp_path / "subjects.csv"
    mapping.write_text(f"patient_id,subject_id\n{MRN},TRIAL-007\n")
    res = catalog_folder(trial, subject_key=SubjectKey(source="mapping", mapping_file=str(mapping)))
    assert set(res.files["patient_id"]) == {"TRIAL-007"}
    unmapped = res.rejects.filter(pl.col("reason").str.starts_with(UNMAPPED_CODE))
    assert unmapped["path"].str.starts_with("T1/export-2/").all() and unmapped.height == res.rejects.height > 0
    assert "UNKNOWN-77" not in _dump(res.files, res.rejects) and MRN not in _dump(res.files, res.rejects)
    assert [i["patient_id"] for i in subject_issues(res.rejects)] == ["export-2"]
