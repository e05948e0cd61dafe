"""A small real lake and its DuckDB warehouse, without Dagster: the pipeline's own functions
(catalog, manifest, imaging, dosimetry, issues) over a synthetic cohort, then a real `dbt build`.

Used by the cohort-analysis tests (marts, README queries, dashboard, viewers in Chromium) and by
`python rtmap_assets_tests/cohort_lake.py <data dir>` to make the docs' screenshots.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import SimpleITK as sitk

from rtmap_assets.config import load_trial_config
from rtmap_assets.dicom.catalog import catalog_folder
from rtmap_assets.dicom.manifest import build_manifest
from rtmap_assets.dosimetry.uncertainty import sphere_radius
from rtmap_assets.lake import Lake
from rtmap_assets.pipeline.covariates import read_covariates
from rtmap_assets.pipeline.dosimetry_patient import run_dosimetry
from rtmap_assets.pipeline.imaging_patient import run_imaging
from rtmap_assets.pipeline.issues import record_issues

ROOT = Path(__file__).resolve().parents[1]
DBT_DIR = ROOT / "dbt_models"


def build_lake(data_dir: Path, trial: str = "SYNTH-HN") -> Lake:
    """Catalog → manifest → per patient imaging + dosimetry → lake tables under data_dir/lake (no Dagster)."""
    from rtmap_assets.lake.contract import (DICOM_FILES, DICOM_REJECTS, DOSE_STATISTICS, MAPPED_STRUCTURES,
                                            PATIENT_MANIFEST, RECURRENCE_CLASSIFICATION, REGISTRATION_QC,
                                            TRIAL_COVARIATES)
    from rtmap_synth.evaluation import with_truth_metrics

    config = load_trial_config()
    lake = Lake(data_dir / "lake")
    cat = catalog_folder(data_dir / "raw" / trial)
    lake.replace_all(DICOM_FILES, cat.files)
    lake.replace_all(DICOM_REJECTS, cat.rejects)
    manifest, issues = build_manifest(cat.files, config)
    lake.replace_all(PATIENT_MANIFEST, manifest)
    covariates, _ = read_covariates(data_dir / "covariates" / f"{trial}.csv")
    lake.replace_all(TRIAL_COVARIATES, covariates)
    for pid in sorted(set(manifest.filter(pl.col("complete"))["patient_id"].to_list())):
        rows = manifest.filter(pl.col("patient_id") == pid)
        truth_file = data_dir / "truth" / trial / f"{pid}.json"
        truth = json.loads(truth_file.read_text()) if truth_file.exists() else None
        out = lake.patient_files(pid) / "v-test"
        img = run_imaging(rows, config, out, raw_root=data_dir / "raw")
        provenance = [pl.lit(rows["input_fingerprint"][0]).alias("input_fingerprint"),
                      pl.lit("test").alias("data_version"), pl.lit(lake.relative(out)).alias("volumes_dir"),
                      pl.lit("test").alias("run_id")]
        qc = with_truth_metrics(img.registration_qc, out, truth).with_columns(provenance)
        lake.replace_patient(REGISTRATION_QC, pid, qc)
        structures = img.mapped_structures.join(
            img.structure_qc.select("structure", pl.lit("mapped").alias("space"), "planning_structure",
                                    pl.col("dice").alias("dice_vs_planning"), "hd95_mm", "msd_mm"),
            on=["structure", "space"], how="left").with_columns(provenance[1:3])
        lake.replace_patient(MAPPED_STRUCTURES, pid, structures)
        distance = qc["landmark_distance_mm"][0]
        radius = sphere_radius(config.uncertainty, patient_distance_mm=distance)
        arm = covariates.filter(pl.col("patient_id") == pid)["arm"]
        res = run_dosimetry(img.volumes, config, radius_mm=radius.radius_mm, sigma_mm=float(distance),
                            covariate_arm=arm[0] if arm.len() else None)
        lake.replace_patient(RECURRENCE_CLASSIFICATION, pid, res.classification.with_columns(
            pl.lit(radius.policy).alias("radius_policy"), pl.lit("test").alias("data_version")))
        lake.replace_patient(DOSE_STATISTICS, pid, res.dose_statistics.with_columns(pl.lit("test").alias("data_version")))
        record_issues(lake, pid, "imaging", [])
        record_issues(lake, pid, "dosimetry", res.issues)
    for pid in sorted(set(issues["patient_id"].to_list()) if issues.height else []):
        record_issues(lake, pid, "manifest", issues.filter(pl.col("patient_id") == pid).to_dicts())
    return lake


def dbt_build(data_dir: Path, *, extra: list[str] | None = None) -> Path:
    """`dbt build` of the project over data_dir/lake into data_dir/rtmap.duckdb (artefacts in data_dir)."""
    from rtmap_assets.lake.contract import TABLES

    Lake(data_dir / "lake").ensure_all(TABLES.values())  # dbt's delta plugin reads every source table
    db = data_dir / "rtmap.duckdb"
    env = {**os.environ, "RTMAP_LAKE": str(data_dir / "lake"), "RTMAP_DUCKDB": str(db),
           "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    run = subprocess.run([str(Path(sys.executable).with_name("dbt")), "build", "--project-dir", str(DBT_DIR),
                          "--profiles-dir", str(DBT_DIR), "--target-path", str(data_dir / "dbt_target"),
                          "--log-path", str(data_dir / "dbt_logs"), *(extra or [])],
                         env=env, capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise AssertionError(f"dbt build failed:\n{run.stdout[-6000:]}\n{run.stderr[-2000:]}")
    return db


def load_viewer_inputs(lake: Lake, pid: str):
    """(volumes, classification rows, registered relapse) of one patient from the lake."""
    from rtmap_assets.pipeline.volumes import PatientVolumes

    from rtmap_assets.lake.contract import RECURRENCE_CLASSIFICATION, REGISTRATION_QC

    qc = lake.read(REGISTRATION_QC, patient_id=pid)
    volumes = PatientVolumes.load(lake.absolute(qc["volumes_dir"][0]))
    cls = lake.read(RECURRENCE_CLASSIFICATION, patient_id=pid)
    relapse = sitk.ReadImage(str(lake.absolute(qc["registered_image_path"][0])), sitk.sitkFloat32)
    return volumes, cls, relapse, qc["relapse_modality"][0]


def render_pages(data_dir: Path, out: Path, *, dose_floor_fraction: float = 0.3) -> tuple[Path, list[Path]]:
    """The cohort dashboard and every classified patient's viewer (viewers/<id>.html) under `out`."""
    import duckdb

    from rtmap_assets.figures.dashboard import build_cohort_dashboard
    from rtmap_assets.figures.viewer import build_patient_viewer

    lake = Lake(data_dir / "lake")
    with duckdb.connect(str(data_dir / "rtmap.duckdb"), read_only=True) as con:
        summary = con.sql("select * from patient_summary").pl()
        by_arm = con.sql("select * from classification_by_arm").pl()
    viewers = []
    for pid in summary.filter(pl.col("classified"))["patient_id"].to_list():
        volumes, cls, relapse, modality = load_viewer_inputs(lake, pid)
        viewers.append(build_patient_viewer(volumes, cls, registered_relapse=relapse, relapse_contour_mask=None,
                                            dose_floor_fraction=dose_floor_fraction,
                                            out=out / "viewers" / f"{pid}.html", relapse_is_ct=modality == "CT"))
    return build_cohort_dashboard(summary, by_arm, out / "cohort_dashboard.html"), viewers


def docs_screenshots(dashboard: Path, viewer: Path, img_dir: Path, work: Path) -> list[Path]:
    """docs/img/cohort_dashboard.png and docs/img/patient_viewer.png: Chromium screenshots at 2/3 size, 256 colours."""
    from PIL import Image

    from chromium_probe import screenshot

    shots = []
    for page, name, size in ((dashboard, "cohort_dashboard.png", (1400, 2350)), (viewer, "patient_viewer.png", (1450, 1330))):
        png = screenshot(page, work / name, work, size=size)
        img = Image.open(png).convert("RGB")
        img = img.resize((img.width * 2 // 3, img.height * 2 // 3), Image.LANCZOS).quantize(
            256, method=Image.Quantize.FASTOCTREE)  # octree keeps the dose colours; ~80-90 kB each
        img_dir.mkdir(parents=True, exist_ok=True)
        img.save(img_dir / name, optimize=True)
        shots.append(img_dir / name)
    return shots


if __name__ == "__main__":
    # python rtmap_assets_tests/cohort_lake.py <data dir with raw/ truth/ covariates/> [--pages OUT] [--docs-img DIR]
    d = Path(sys.argv[1])
    if not (d / "rtmap.duckdb").exists():
        build_lake(d)
        print(dbt_build(d))
    if "--pages" in sys.argv:
        out = Path(sys.argv[sys.argv.index("--pages") + 1])
        dash, viewers = render_pages(d, out)
        print(dash, dash.stat().st_size, *[(v.name, v.stat().st_size) for v in viewers])
        if "--docs-img" in sys.argv:
            sys.path.insert(0, str(Path(__file__).parent))
            print(docs_screenshots(dash, viewers[0], Path(sys.argv[sys.argv.index("--docs-img") + 1]), out / "shots"))
