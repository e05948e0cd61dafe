"""Rule 2: level-named CTVs are found by the manifest and the imaging roles through config.ctv_patterns()."""

from __future__ import annotations

from pathlib import Path

from rtmap_assets.config import TrialConfig, load_trial_config
from rtmap_assets.dicom.catalog import catalog_folder
from rtmap_assets.dicom.manifest import build_manifest, ctv_aliases
from rtmap_assets.pipeline.imaging_patient import planning_role

try:
    from rtmap_assets_tests.dicom_factory import write_patient
except ImportError:  # rootdir-less import mode
    from dicom_factory import write_patient

DOSE_ONLY = TrialConfig(trial="T")  # *CTV*{dose}* only
BUNDLED = load_trial_config()  # dose names and level names


def test_manifest_and_roles_use_the_one_list_of_ctv_patterns():
    assert ctv_aliases(BUNDLED) == BUNDLED.ctv_patterns()
    assert planning_role("ctv_hr", BUNDLED) == ("ctv", "ctv_hr")
    assert planning_role("CTV_Mid_nodes", BUNDLED) == ("ctv", "*CTV*mid*")
    assert planning_role("CTV_65", BUNDLED) == ("ctv", "*CTV*65*")
    assert planning_role("ctv_hr", DOSE_ONLY) == ("other", None)


def test_a_plan_with_level_named_ctvs_is_found_only_when_the_config_names_the_levels(tmp_path: Path):
    trial = tmp_path / "raw" / "T1"
    write_patient(trial / "exp", "P1", ctv_names=("CTV_High", "CTV_Mid", "CTV_Low"))
    files = catalog_folder(trial).files
    manifest, issues = build_manifest(files, BUNDLED)
    assert issues.is_empty()
    rs = manifest.filter(manifest["role"] == "planning_rtstruct").to_dicts()[0]
    assert "'CTV_High' (alias CTV_High), 'CTV_Mid' (alias CTV_Mid), 'CTV_Low' (alias CTV_Low)" in rs["reason"]
    manifest, issues = build_manifest(files, DOSE_ONLY)
    assert issues["code"].to_list() == ["NO_CTV_STRUCTURE"] and "CTV_High" in issues["message"][0]
