"""rtmap's whole per-patient path without Dagster: `run_imaging` + `run_dosimetry` on one prepared patient.

The patient folder is the one `registration_benchmark.prepare` makes (raw/, manifest.parquet, truth.json).
Run as a child process (prints one `RESULT {json}` line):

    python benchmarks/pipeline_path.py --patient-dir /tmp/x/seed1 --engine sitk --threads 2
    python benchmarks/pipeline_path.py --patient-dir /tmp/x/seed1 --engine sitk --evaluate

The timed run does only what a clinical run does (DICOM in, stored volumes, classes and figure out); the
evaluation against the synthetic truth (TRE at 200 points, recurrence Dice and centroid error: ~1 s of
resampling and body masks) runs afterwards in its own process (`--evaluate`) on what the first stored, so
it is not counted in rtmap's time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import print_child_result  # noqa: E402 - benchmarks/ on sys.path


def run_patient(work: Path, engine: str, threads: int) -> dict:
    import polars as pl

    from rtmap_assets.config import load_trial_config
    from rtmap_assets.dosimetry.uncertainty import sphere_radius
    from rtmap_assets.pipeline.dosimetry_patient import run_dosimetry
    from rtmap_assets.pipeline.imaging_patient import run_imaging
    from rtmap_assets.pipeline.volumes import PatientVolumes

    rows = pl.read_parquet(work / "manifest.parquet")
    config = load_trial_config()
    out = work / f"out_{engine}"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    img = run_imaging(rows, config, out, raw_root=work / "raw", engine=engine, threads=threads)
    imaging_s = time.perf_counter() - t
    qc = img.registration_qc.row(0, named=True)

    t = time.perf_counter()
    # As the asset does: the volumes are re-loaded from the imaging step's folder (it is a separate step).
    volumes = PatientVolumes.load(out)
    distance = qc["landmark_distance_mm"]
    radius = sphere_radius(config.uncertainty, patient_distance_mm=distance, cohort_radius_mm=None)
    dos = run_dosimetry(volumes, config, radius_mm=radius.radius_mm, sigma_mm=float(distance or 0.0),
                        figure_path=out / "overlay.png")
    dosimetry_s = time.perf_counter() - t
    high = dos.classification.filter(pl.col("level") == "high").row(0, named=True)
    result = {"path": "rtmap", "engine": engine, "imaging_s": imaging_s, "dosimetry_s": dosimetry_s,
              "steps_s": imaging_s + dosimetry_s,
              **{k: qc[k] for k in ("read_s", "grid_s", "registration_s", "mapping_s", "qc_s", "landmark_distance_mm",
                                    "relapse_modality")},
              "high_centroid_class": high.get("centroid_class"), "high_volume_class": high.get("volume_class"),
              "complete": True}
    (out / "benchmark_result.json").write_text(json.dumps(result, default=str))
    return result


def evaluate_patient(work: Path, engine: str) -> dict:
    """The truth metrics of what `run_patient` stored (a separate, untimed process)."""
    from rtmap_synth.evaluation import evaluate_imaging_dir

    out = work / f"out_{engine}"
    stored = json.loads((out / "benchmark_result.json").read_text())
    truth = json.loads((work / "truth.json").read_text())
    metrics = evaluate_imaging_dir(out, truth, relapse_modality=stored.get("relapse_modality") or "CT")
    return {**{k: metrics.get(k) for k in ("tre_mean_mm", "tre_max_mm", "recurrence_dice_truth",
                                           "recurrence_centroid_error_mm")},
            "truth_high_centroid_class": truth["classes"]["high"]["centroid_class"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patient-dir", type=Path, required=True)
    ap.add_argument("--engine", default="sitk")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--evaluate", action="store_true", help="score the stored output against truth.json instead")
    args = ap.parse_args(argv)
    if args.evaluate:
        print_child_result(evaluate_patient(args.patient_dir, args.engine))
        return 0
    t = time.perf_counter()
    result = run_patient(args.patient_dir, args.engine, args.threads)
    result["wall_s"] = time.perf_counter() - t
    print_child_result(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
