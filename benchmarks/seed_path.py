"""The research workflow's own per-patient path, as the seed notebook runs it: scikit-rt + elastix CLI.

Steps (each timed):
  read       skrt `Patient(export, unsorted_dicom=True)`: every DICOM file of the export sorted into
             studies; planning = earliest study, relapse = latest; images, structure sets and dose
             loaded at full resolution (skrt loads lazily, so the data are touched here).
  resample   both images resampled by skrt to the working voxel size (2 mm, the seed's grid).
  register   `skrt.registration.Registration(fixed=planning, moving=relapse, pfiles=...)` with the seed's
             translation / rigid / B-spline (30 mm) parameter files, run by Debian's elastix CLI.
  transform  the relapse structure set transformed into planning space (`Registration.transform`).
  dose       the planning dose read; if the mapped recurrence has voxels, dose at its centroid.

Known limitation of this machine's elastix: Debian's elastix/transformix 5.0.1 lack the
nearest-neighbour resample interpolator skrt uses for masks, so `transform` returns a structure set
with no (or empty) ROIs and only a warning. The step is still run and timed; the result records how
many ROIs came back non-empty, and the dose-at-centroid step is skipped when none did.

Run as a child process (one JSON line `RESULT {...}` on stdout):
    python benchmarks/seed_path.py --export data/raw/SYNTH-HN/SYN-001 --workdir /tmp/x
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import print_child_result  # noqa: E402 - benchmarks/ on sys.path

VOXEL_MM = 2.0  # the seed's working grid


def _images(study) -> list:
    out = []
    for attr in ("ct_images", "mr_images"):
        out += list(getattr(study, attr, None) or [])
    return out


def _structure_sets(study) -> list:
    out = []
    for attr in ("ct_structure_sets", "mr_structure_sets"):
        out += list(getattr(study, attr, None) or [])
    return out


def run_seed_path(export: Path, workdir: Path, recurrence_names: tuple[str, ...] = ("Rec_CT", "Rec_MR")) -> dict:
    """The seed path on one export folder; returns step timings (s) and what came out."""
    from skrt import Patient
    from skrt.registration import Registration

    from rtmap_assets.imaging.registration import _write_parameter_file, elastix_parameter_maps

    timings: dict[str, float] = {}
    notes: list[str] = []
    workdir.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    patient = Patient(str(export), unsorted_dicom=True)
    studies = sorted(patient.studies, key=lambda s: s.timestamp)
    plan, rel = studies[0], studies[-1]
    ct, relapse = _images(plan)[0], _images(rel)[0]
    ss_plan, ss_rel = _structure_sets(plan)[0], _structure_sets(rel)[0]
    dose = plan.ct_doses[0]
    for im in (ct, relapse, dose):
        im.get_data()  # skrt is lazy: make the read happen here
    n_plan_rois = len(ss_plan.get_roi_names())
    rel_names = ss_rel.get_roi_names()
    timings["read_s"] = time.perf_counter() - t

    t = time.perf_counter()
    ct.resample(voxel_size=(VOXEL_MM,) * 3)
    relapse.resample(voxel_size=(VOXEL_MM,) * 3)
    timings["resample_s"] = time.perf_counter() - t

    t = time.perf_counter()
    pfiles = {}
    for name, params in zip(("translation", "rigid", "bspline"), elastix_parameter_maps(30.0)):
        p = workdir / f"{name}.txt"
        _write_parameter_file({**params, "WriteResultImage": ["true"]}, p)  # skrt reads result.0.nii back
        pfiles[name] = str(p)
    reg = Registration(str(workdir / "reg"), fixed=ct, moving=relapse, pfiles=pfiles, overwrite=True,
                       capture_output=True, log_level="WARNING")
    reg.register()
    timings["register_s"] = time.perf_counter() - t

    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mapped = reg.transform(ss_rel)
    mapped_names = mapped.get_roi_names() if mapped is not None else []
    nonempty = []
    for name in mapped_names:
        roi = mapped.get_roi(name)
        try:
            if roi.get_mask() is not None and roi.get_mask().any():
                nonempty.append(name)
        except Exception:  # noqa: BLE001 - an ROI skrt could not build counts as empty
            pass
    timings["transform_s"] = time.perf_counter() - t
    if len(nonempty) < len(rel_names):
        caught_text = "; ".join(sorted({str(w.message)[:160] for w in caught}))[:600]
        notes.append(f"structure transform returned {len(nonempty)} non-empty of {len(rel_names)} relapse ROIs "
                     f"({len(mapped_names)} ROIs in the result)" + (f"; warnings: {caught_text}" if caught_text else "")
                     + "; see reg/transformix.log (Debian elastix 5.0.1: no FinalNearestNeighborInterpolator)")

    t = time.perf_counter()
    dose_data = dose.get_data()
    dose_max_gy = float(dose_data.max())
    centroid_dose_gy = None
    rec = [n for n in nonempty if n in recurrence_names]
    if rec:
        pos = mapped.get_roi(rec[0]).get_centroid()
        try:
            centroid_dose_gy = float(dose.get_value_at_pos(pos)) if hasattr(dose, "get_value_at_pos") else None
        except Exception as err:  # noqa: BLE001
            notes.append(f"dose at centroid failed: {err}")
    else:
        notes.append("dose at the mapped recurrence centroid not computed: no mapped recurrence")
    timings["dose_s"] = time.perf_counter() - t
    return {"path": "seed", "engine": "skrt+elastix CLI (seed)", **timings,
            "steps_s": sum(timings.values()), "planning_rois": n_plan_rois, "relapse_rois": len(rel_names),
            "mapped_rois_nonempty": len(nonempty), "dose_max_gy": dose_max_gy, "centroid_dose_gy": centroid_dose_gy,
            "complete": bool(rec), "notes": notes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, required=True)
    ap.add_argument("--workdir", type=Path, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    t = time.perf_counter()
    result = run_seed_path(args.export, args.workdir)
    result["wall_s"] = time.perf_counter() - t
    print_child_result(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
