"""Catalog + manifest on a generated synthetic cohort (flat and nested exports, CT and MR relapse)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from rtmap_assets.config import load_trial_config
from rtmap_assets.dicom.catalog import catalog_folder, read_header, read_header_pydicom, resolve_path
from rtmap_assets.dicom.manifest import ROLES, build_manifest
from rtmap_synth.cohort import GeneratorSettings, generate_cohort

CONFIG = load_trial_config()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("synth-manifest")
    truths = generate_cohort(root / "raw", root / "truth", root / "covariates" / f"{CONFIG.trial}.csv",
                             n_patients=4, seed=5, config=CONFIG,
                             settings=GeneratorSettings(ct_shape=(64, 64, 24), mr_every=2))
    return root / "raw", truths


def test_generated_cohort_resolves_every_patient(cohort):
    raw, truths = cohort
    res = catalog_folder(raw / CONFIG.trial)
    assert res.rejects.is_empty()
    manifest, issues = build_manifest(res.files, CONFIG)
    assert issues.is_empty(), issues.to_dicts()
    assert manifest.height == 5 * len(truths)
    for t in truths:
        rows = {r["role"]: r for r in manifest.filter(pl.col("patient_id") == t["patient_id"]).to_dicts()}
        assert list(rows) == list(ROLES)
        names = t["structure_names"]
        assert rows["relapse_image"]["modality"] == t["relapse_modality"]
        assert rows["relapse_rtstruct"]["matched_structure"] == names["relapse_recurrence"]
        assert rows["planning_rtstruct"]["matched_structure"] == names["ctv_high"]
        assert rows["planning_ct"]["n_files"] == 24
        for r in rows.values():
            assert all(resolve_path(raw, f).is_file() for f in r["files"])
    assert set(manifest.filter(pl.col("role") == "relapse_image")["modality"]) == {"CT", "MR"}


def test_fast_parser_agrees_with_pydicom_on_generated_files(cohort):
    raw, _ = cohort
    files = [p for p in (raw / CONFIG.trial).rglob("*") if p.is_file()]
    assert len(files) > 50
    for p in files:
        assert read_header(p) == read_header_pydicom(p), p
