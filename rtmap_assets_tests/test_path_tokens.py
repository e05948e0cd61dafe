"""Rule 17, `privacy.hash_export_paths`: export folder names (often a study date, as PACS exports name
them) never leave the bronze catalog — the manifest and its issues name files by catalog tokens, which
the imaging step resolves through the catalog."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl

from conftest import readable_paths
from dicom_factory import write_patient
from rtmap_assets.config import load_trial_config
from rtmap_assets.dicom.catalog import catalog_folder
from rtmap_assets.dicom.manifest import build_manifest
from rtmap_assets.dicom.path_tokens import is_token, path_token, redact, resolver
from rtmap_assets.pipeline.imaging_patient import _role_files

DATED = "12-05-1998-RT SIMULATION-43582"  # a real TCIA export's study folder name


def _hashed_config():
    config = load_trial_config()
    assert config.privacy.hash_export_paths  # the default
    return config


def _export(tmp_path: Path, with_dose: bool = True) -> Path:
    trial = tmp_path / "raw" / "T1"
    write_patient(trial / "P", "P", with_dose=with_dose)
    shutil.move(trial / "P" / "planning", trial / "P" / DATED)  # the planning study's folder, dated
    return trial


def test_manifest_names_files_by_token_and_imaging_resolves_them(tmp_path):
    trial = _export(tmp_path)
    files = catalog_folder(trial).files
    manifest, issues = build_manifest(files, _hashed_config())
    assert manifest.height == 5 and issues.is_empty()
    for row in manifest.iter_rows(named=True):
        assert all(is_token(f) for f in row["files"]), row["files"]
        assert "1998" not in row["reason"] and "SIMULATION" not in row["reason"]
    plain, _ = build_manifest(files, readable_paths(load_trial_config()))
    assert any(DATED in f for fs in plain["files"] for f in fs)  # without the option the path is stored
    # the imaging step gets the catalog paths back through the catalog, and only through it
    ct = _role_files(manifest, "planning_ct", tmp_path / "raw", resolver(files["path"].to_list()))
    assert ct == [str(tmp_path / "raw" / p) for p in plain.filter(pl.col("role") == "planning_ct")["files"][0]]
    assert all(Path(p).exists() for p in ct)


def test_issue_messages_are_redacted(tmp_path):
    trial = _export(tmp_path, with_dose=False)
    _, issues = build_manifest(catalog_folder(trial).files, _hashed_config())
    (row,) = issues.to_dicts()
    assert row["code"] == "NO_RTDOSE"
    assert "1998" not in row["message"] and (row["file"] is None or "1998" not in row["file"])
    assert path_token("a/b.dcm") in redact("bad file a/b.dcm here", ["a/b.dcm"])
