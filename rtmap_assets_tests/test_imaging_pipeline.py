"""End to end: a generated synthetic patient through `run_imaging`, checked against its ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rtmap_assets.config import Aliases, load_trial_config
from rtmap_assets.dicom.catalog import catalog_folder
from rtmap_assets.dicom.manifest import build_manifest
from rtmap_assets.dicom.readers import read_rtstruct
from rtmap_assets.errors import PatientDataError
from rtmap_assets.pipeline.imaging_patient import planning_role, run_imaging
from rtmap_assets.pipeline.volumes import PatientVolumes
from rtmap_synth.cohort import GeneratorSettings, generate_patient
from rtmap_synth.evaluation import evaluate_imaging_dir


@pytest.fixture(scope="module")
def patient(tmp_path_factory) -> tuple[Path, pl.DataFrame, dict]:
    root = tmp_path_factory.mktemp("imaging_e2e")
    config = load_trial_config()
    raw = root / "raw" / config.trial
    truth = generate_patient(raw, root / "truth", "P001", seed=11, arm="A", case="inside",
                             settings=GeneratorSettings(ct_shape=(128, 128, 60), ct_spacing=(2.0, 2.0, 3.0)),
                             config=config)
    manifest, issues = build_manifest(catalog_folder(raw).files, config)
    assert issues.height == 0
    return root / "raw", manifest.filter(pl.col("patient_id") == "P001"), truth


@pytest.mark.slow  # generates a patient (module fixture) and registers it
def test_run_imaging_matches_ground_truth(patient, tmp_path):
    raw_root, rows, truth = patient
    config = load_trial_config()
    result = run_imaging(rows, config, tmp_path / "out", raw_root=raw_root, threads=2)
    qc = result.registration_qc.row(0, named=True)
    assert qc["tre_mean_mm"] is None  # ground truth stays out of the pipeline
    qc.update(evaluate_imaging_dir(tmp_path / "out", truth, qc["relapse_modality"]))
    assert qc["engine"] == "sitk" and qc["tre_points"] >= 20
    # 2 x 2 x 3 mm test images: looser than the clinical-size bars (benchmarks/RESULTS.md)
    assert qc["tre_mean_mm"] < 1.5 and qc["tre_max_mm"] < 5.0
    assert qc["recurrence_dice_truth"] >= 0.75
    assert qc["landmark_distance_mm"] < 3.0
    assert qc["folding_fraction"] == 0.0 and qc["jacobian_min"] > 0.5
    assert qc["total_s"] > 0 and qc["registration_s"] > 0

    ms = result.mapped_structures
    rec = ms.filter((pl.col("role") == "recurrence") & (pl.col("space") == "mapped")).row(0, named=True)
    assert rec["structure"] == truth["recurrence"]["name"]
    centroid = np.array([rec["centroid_x_mm"], rec["centroid_y_mm"], rec["centroid_z_mm"]])
    assert np.linalg.norm(centroid - truth["recurrence"]["centroid_planning_mm"]) < 2.0
    true_cc = 4 / 3 * np.pi * np.prod(truth["recurrence"]["radii_mm"]) / 1000
    assert rec["volume_cc"] == pytest.approx(true_cc, rel=0.3)
    # planning structures in the RTSTRUCT's order, though body and landmark are rasterised first (the
    # registration needs them) and the others while it runs
    rs_file = rows.filter(pl.col("role") == "planning_rtstruct")["files"][0][0]
    plan_rs = read_rtstruct(raw_root / rs_file)
    assert ms.filter(pl.col("space") == "planning")["structure"].to_list() == [
        n for n in plan_rs.names if plan_rs.contours[n]]
    roles = set(zip(ms["role"], ms["space"]))
    assert {("ctv", "planning"), ("body", "planning"), ("landmark", "planning"), ("organ", "planning"),
            ("landmark", "mapped"), ("comparison", "mapped")} <= roles
    assert all(Path(p).exists() for p in ms["mask_path"])
    assert result.structure_qc.height >= 1 and result.structure_qc["dice"].min() > 0.5

    out = tmp_path / "out"
    for name in ("planning_image.nii.gz", "dose.nii.gz", "relapse_registered.nii.gz", "transform.h5", "volumes.json"):
        assert (out / name).exists(), name
    loaded = PatientVolumes.load(out)
    assert loaded.dose is not None and loaded.dose.GetSize() == loaded.image.GetSize()
    assert len(loaded.find("recurrence", "mapped")) == 1 and len(loaded.find("ctv", "planning")) == 3


@pytest.mark.slow  # shares the generated patient (~10 s fixture)
def test_missing_recurrence_is_an_explained_error(patient, tmp_path):
    raw_root, rows, _ = patient
    config = load_trial_config()
    config = config.model_copy(update={"aliases": Aliases(recurrence=["no_such_structure"])})
    with pytest.raises(PatientDataError) as err:
        run_imaging(rows, config, tmp_path / "out", raw_root=raw_root)
    assert err.value.code == "recurrence_missing".upper()


def test_planning_roles_follow_the_trial_aliases():
    config = load_trial_config()
    assert planning_role("CTV_65", config) == ("ctv", "*CTV*65*")
    assert planning_role("THY_CART", config)[0] == "landmark"
    assert planning_role("External", config)[0] == "body"
    assert planning_role("Parotid_L", config)[0] == "organ"
    assert planning_role("CTV_99", config) == ("other", None)
