"""Rule 17, `privacy.hash_export_paths` (on by default): export folder names (often a study date, as PACS
exports name them) never leave the bronze catalog — the manifest and its issues are stored with files named
by catalog tokens, which the imaging step resolves through the catalog."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl

from dicom_factory import write_patient
from rtmap_assets.config import load_trial_config
from rtmap_assets.dicom.catalog import catalog_folder
from rtmap_assets.dicom.manifest import build_manifest
from rtmap_assets.dicom.path_tokens import is_token, path_token, redact, resolver, tokenise_manifest
from rtmap_assets.pipeline.imaging_patient import _role_files

DATED = "12-05-1998-RT SIMULATION-43582"  # a real TCIA export's study folder name


def _export(tmp_path: Path, with_dose: bool = True) -> Path:
    trial = tmp_path / "raw" / "T1"
    write_patient(trial / "P", "P", with_dose=with_dose)
    shutil.move(trial / "P" / "planning", trial / "P" / DATED)  # the planning study's folder, dated
    return trial


def test_stored_manifest_names_files_by_token_and_imaging_resolves_them(tmp_path):
    assert load_trial_config().privacy.hash_export_paths  # the default
    files = catalog_folder(_export(tmp_path)).files
    plain, issues = build_manifest(files, load_trial_config())
    assert any(DATED in f for fs in plain["files"] for f in fs)  # what the pure function returns
    stored, _ = tokenise_manifest(plain, issues, files["path"].to_list())  # what the asset writes
    assert stored.height == 5
    for row in stored.iter_rows(named=True):
        assert all(is_token(f) for f in row["files"]), row["files"]
        assert "1998" not in row["reason"] and "SIMULATION" not in row["reason"]
    # the imaging step gets the catalog paths back through the catalog, and only through it
    ct = _role_files(stored, "planning_ct", tmp_path / "raw", resolver(files["path"].to_list()))
    assert ct == [str(tmp_path / "raw" / p) for p in plain.filter(pl.col("role") == "planning_ct")["files"][0]]
    assert all(Path(p).exists() for p in ct)


def test_issue_messages_are_redacted(tmp_path):
    files = catalog_folder(_export(tmp_path, with_dose=False)).files
    manifest, issues = build_manifest(files, load_trial_config())
    _, stored = tokenise_manifest(manifest, issues, files["path"].to_list())
    (row,) = stored.to_dicts()
    assert row["code"] == "NO_RTDOSE" and DATED in str(issues.to_dicts())
    assert "1998" not in row["message"] and (row["file"] is None or "1998" not in row["file"])
    assert path_token("a/b.dcm") in redact("bad file a/b.dcm here", ["a/b.dcm"])
