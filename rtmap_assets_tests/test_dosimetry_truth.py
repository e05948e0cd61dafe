"""Every class of every scheme equals the synthetic generator's ground truth (fixed 5 mm radius).

Two levels:
- `test_dosimetry_matches_truth_with_perfect_mapping`: the planning DICOM read with the project's
  readers, and the recurrence placed exactly where the truth says (a perfect registration). This
  isolates the dosimetry from the registration.
- `test_pipeline_matches_truth`: raw DICOM → catalog → manifest → run_imaging → run_dosimetry.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from rtmap_assets.config import LEVELS, load_trial_config
from rtmap_assets.dosimetry.regions import dose_support_mask
from rtmap_assets.pipeline.dosimetry_patient import run_dosimetry
from rtmap_assets.pipeline.volumes import PatientVolumes, StructureMask

pytestmark = pytest.mark.slow

N_PATIENTS = 6


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from rtmap_synth.cohort import generate_cohort

    root = tmp_path_factory.mktemp("cohort")
    config = load_trial_config()
    config = config.model_copy(update={"uncertainty": config.uncertainty.model_copy(
        update={"policy": "fixed", "radius_mm": 5.0})})
    truths = generate_cohort(root / "raw", root / "truth", root / "covariates.csv", n_patients=N_PATIENTS, seed=0,
                             config=config)
    return root, config, truths


def compare(classification, truth) -> list[str]:
    """Differences between the classification rows and the truth (empty = identical)."""
    bad = []
    rows = {r["level"]: r for r in classification.iter_rows(named=True)}
    assert set(rows) == set(LEVELS)
    for lvl in LEVELS:
        r, t = rows[lvl], truth["classes"][lvl]
        if t is None:
            if r["level_present"] is not False or r["centroid_class"] is not None or r["volume_class"] is not None:
                bad.append(f"{lvl}: absent in truth, present here")
            continue
        for col in ("prescription_gy", "centroid_class", "volume_class", "dawson_class"):
            if r[col] != t[col]:
                bad.append(f"{lvl}.{col}: {r[col]} != truth {t[col]} (sphere f {r['sphere_fraction']} vs "
                           f"{t['sphere_fraction']}, Dawson f {r['dawson_fraction']} vs {t['dawson_fraction']})")
        if (r["probability_inside"] > 0.5) != bool(t["centroid_class"]) and abs(r["probability_inside"] - 0.5) > 0.2:
            bad.append(f"{lvl}: probability {r['probability_inside']} contradicts the centroid class")
    if rows["high"]["mohamed_type"] != truth["mohamed"]:
        bad.append(f"mohamed {rows['high']['mohamed_type']} != truth {truth['mohamed']}")
    if rows["high"]["arm"] != truth["arm"]:
        bad.append(f"arm {rows['high']['arm']} != truth {truth['arm']}")
    return bad


def _planning_files(patient_dir: Path, truth: dict) -> tuple[list[Path], Path, Path]:
    uids = truth["uids"]
    ct, rs, rd = [], None, None
    for f in patient_dir.rglob("*"):
        if not f.is_file():
            continue
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        if ds.SeriesInstanceUID == uids["planning_ct_series"]:
            ct.append(f)
        elif ds.SOPInstanceUID == uids["planning_rtstruct"]:
            rs = f
        elif ds.SOPInstanceUID == uids["planning_rtdose"]:
            rd = f
    return ct, rs, rd


def _perfect_volumes(patient_dir: Path, truth: dict, spacing: float) -> PatientVolumes:
    from rtmap_assets.dicom.readers import rasterise, read_image_series, read_rtdose, read_rtstruct
    from rtmap_assets.imaging.grid import resample_dose, resample_image, working_grid

    ct_files, rs_file, rd_file = _planning_files(patient_dir, truth)
    ct = read_image_series(ct_files)
    grid = working_grid(ct, spacing)
    image = resample_image(ct, grid)
    native_dose = read_rtdose(rd_file)
    dose = resample_dose(native_dose, grid)
    rs = read_rtstruct(rs_file)
    names = truth["structure_names"]
    structures = []
    for key, name in names.items():
        if key.startswith("relapse_"):
            continue
        role = "ctv" if key.startswith("ctv_") else "landmark" if key == "landmark" else \
            "body" if key == "body" else "organ"
        structures.append(StructureMask(name, role, "planning", rasterise(rs, name, grid)))
        if role == "landmark":  # perfect mapping: the mapped landmark is the planning one
            structures.append(StructureMask(name, role, "mapped", rasterise(rs, name, grid)))
    # the recurrence: the truth's axis-aligned ellipsoid in planning space, at voxel centres
    c = np.asarray(truth["recurrence"]["centroid_planning_mm"])
    radii = np.asarray(truth["recurrence"]["radii_mm"])
    size, origin = np.asarray(grid.GetSize()), np.asarray(grid.GetOrigin())
    axes = [origin[k] + spacing * np.arange(size[k]) for k in range(3)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    inside = ((x - c[0]) / radii[0]) ** 2 + ((y - c[1]) / radii[1]) ** 2 + ((z - c[2]) / radii[2]) ** 2 <= 1.0
    rec = sitk.GetImageFromArray(inside.astype(np.uint8))
    rec.CopyInformation(grid)
    structures.append(StructureMask(truth["recurrence"]["name"], "recurrence", "mapped", rec))
    return PatientVolumes(truth["patient_id"], image, dose, structures,
                          dose_support=dose_support_mask(native_dose, grid))


def test_dosimetry_matches_truth_with_perfect_mapping(cohort, tmp_path):
    root, config, truths = cohort
    assert len(truths) >= 6 and {t["case"] for t in truths} == {"inside", "peripheral", "outside"}
    failures = {}
    for truth in truths:
        vols = _perfect_volumes(root / "raw" / config.trial / truth["patient_id"], truth, config.grid_spacing_mm)
        res = run_dosimetry(vols, config, radius_mm=5.0, sigma_mm=0.0)
        assert res.classification["uncertainty_mm"].to_list() == [0.0] * 3
        bad = compare(res.classification, truth)
        if bad:
            failures[truth["patient_id"]] = bad
    assert not failures, json.dumps(failures, indent=1)


def test_pipeline_matches_truth(cohort, tmp_path):
    from rtmap_assets.dicom.catalog import catalog_folder
    from rtmap_assets.dicom.manifest import build_manifest
    from rtmap_assets.pipeline.imaging_patient import run_imaging

    root, config, truths = cohort
    files = catalog_folder(root / "raw" / config.trial).files
    manifest, issues = build_manifest(files, config)
    assert issues.height == 0, issues
    failures = {}
    for truth in truths:
        pid = truth["patient_id"]
        rows = manifest.filter(manifest["patient_id"] == pid)
        result = run_imaging(rows, config, tmp_path / pid, raw_root=root / "raw")
        sigma = result.registration_qc["landmark_distance_mm"][0]
        res = run_dosimetry(result.volumes, config, radius_mm=5.0, sigma_mm=float(sigma))
        bad = compare(res.classification, truth)
        if bad:
            failures[pid] = bad
    assert not failures, json.dumps(failures, indent=1)
