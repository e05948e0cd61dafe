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
  classify   the seed README's steps 3-4 with scikit-rt's objects: the dose resampled onto the planning CT's
             2 mm grid (rule 3), the trial arm from the high-level CTV's mean dose (rule 8), the relapse
             sphere of the seed's fixed 5 mm radius around the mapped centroid on that grid (rules 5-6), the
             centroid class (dose at the truncated voxel index, rule 9) and volume class (fraction of the
             sphere's voxel centres at >= 95 % of the prescription, rule 10) per level, written as CSV.
  figure     step 5: an axial slice through the centroid with the dose and the mapped recurrence, saved as
             PNG by scikit-rt's own `Image.plot` (the notebook viewed it in `BetterViewer`).
These last two make the path produce what rtmap's timed path produces (classes, a CSV row, a figure); the
result keeps every step's time apart, so the comparison can also be read without them.

This machine's elastix: Debian's transformix 5.0.1 lacks the `FinalNearestNeighborInterpolator`
skrt asks for by default when it transforms masks (transformix.log: "This component is not installed!";
skrt then returns an empty structure set with only a warning). The seed path therefore passes skrt's
own `params` override with `FinalBSplineInterpolator` of order 0, which is nearest-neighbour
interpolation by definition, so the masks come back as skrt would map them with a complete elastix.
The result records how many ROIs came back non-empty; the dose-at-centroid step is skipped when none did.

Run as a child process (one JSON line `RESULT {...}` on stdout):
    python benchmarks/seed_path.py --export data/raw/SYNTH-HN/SYN-001 --workdir /tmp/x
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import print_child_result  # noqa: E402 - benchmarks/ on sys.path

VOXEL_MM = 2.0  # the seed's working grid
# Masks through transformix: B-spline interpolation of order 0 = nearest neighbour (see the module docstring
# for why not the named one), and 0 outside the relapse image (the parameter maps' -1000 is for CT images;
# skrt would read it as "inside the mask").
NEAREST_NEIGHBOUR_MASKS = {"ResampleInterpolator": '"FinalBSplineInterpolator"', "FinalBSplineInterpolationOrder": 0,
                           "DefaultPixelValue": 0}


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


def _recurrence_name(names: list[str]) -> str | None:
    """The recurrence ROI by the trial's alias patterns (the seed notebook configured its own per trial,
    e.g. 'Rec_CT', '*recurrence*'; the synthetic exports vary the name)."""
    from rtmap_assets.config import load_trial_config
    from rtmap_assets.naming import first_match

    hit = first_match(names, load_trial_config().aliases.recurrence)
    return hit[0] if hit else None


SEED_SPHERE_RADIUS_MM = 5.0  # the seed's fixed radius policy (rule 5)


def _classify(ct, dose, ss_plan, centroid_mm: list[float], csv_path: Path) -> dict[str, dict]:
    """The seed's classification with scikit-rt objects (see the module docstring): {level: classes}."""
    import csv

    from rtmap_assets.config import LEVELS, load_trial_config
    from rtmap_assets.naming import first_match

    config = load_trial_config()
    dose.match_size(ct)  # rule 3: the dose on the planning working grid (scikit-rt's linear resampling)
    dose_arr = dose.get_data(standardise=True)  # (y, x, z) as skrt standardises
    names = ss_plan.get_roi_names()
    # rule 8: the arm whose high prescription the high-level CTV's mean dose reaches (0.5 Gy tolerance)
    arm = "unassigned"
    for candidate, levels in sorted(config.arms.items(), key=lambda kv: -kv[1][2]):
        hit = first_match(names, config.aliases.ctv_for_level("high", levels[2]))
        if hit is not None and (dose.get_mean_dose(ss_plan.get_roi(hit[0])) or 0.0) >= levels[2] - 0.5:
            arm = candidate
            break
    prescriptions = config.prescriptions(arm) if arm != "unassigned" else {}
    # rules 6 and 10: the sphere's voxel centres on the planning grid (only the box around it is looked at)
    ix, iy, iz = (int(ct.pos_to_idx(centroid_mm[k], ax)) for k, ax in enumerate("xyz"))  # truncated, as the seed
    reach = int(np.ceil(SEED_SPHERE_RADIUS_MM / min(ct.get_voxel_size()))) + 1
    box = [np.arange(max(i - reach, 0), min(i + reach + 1, n)) for i, n in zip((ix, iy, iz), ct.get_n_voxels())]
    pos = [np.array([ct.idx_to_pos(int(i), ax) for i in b]) for b, ax in zip(box, "xyz")]
    gy, gx, gz = np.meshgrid(pos[1], pos[0], pos[2], indexing="ij")
    inside = (gx - centroid_mm[0]) ** 2 + (gy - centroid_mm[1]) ** 2 + (gz - centroid_mm[2]) ** 2 \
        <= SEED_SPHERE_RADIUS_MM**2
    sphere_doses = dose_arr[np.ix_(box[1], box[0], box[2])][inside]
    rows, classes = [], {}
    for level in LEVELS:
        p = prescriptions.get(level, 0.0)
        if p <= 0:
            continue
        centre_class = int(dose_arr[iy, ix, iz] >= 0.95 * p)
        fraction = float(np.mean(sphere_doses >= 0.95 * p)) if sphere_doses.size else 0.0
        volume_class = 1 if fraction >= 0.95 else (2 if fraction > 0 else 0)
        classes[level] = {"centroid_class": centre_class, "volume_class": volume_class, "sphere_fraction": fraction}
        rows.append({"arm": arm, "level": level, "prescription_gy": p, **classes[level]})
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["arm", "level", "prescription_gy", "centroid_class", "volume_class",
                                               "sphere_fraction"])
        writer.writeheader()
        writer.writerows(rows)
    return classes


def _figure(ct, dose, recurrence, centroid_mm: list[float], png: Path) -> None:
    """An axial slice through the centroid with the dose and the mapped recurrence (scikit-rt's plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.cm
    import matplotlib.pyplot as plt

    if not hasattr(matplotlib.cm, "get_cmap"):  # scikit-rt 0.8.2 calls it; matplotlib 3.9 removed it
        matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap

    ct.plot(view="x-y", pos=float(centroid_mm[2]), rois=[recurrence], dose=dose, dose_opacity=0.4, colorbar=True,
            save_as=str(png), show=False)
    plt.close("all")


def run_seed_path(export: Path, workdir: Path, truth: dict | None = None) -> dict:
    """The seed path on one export folder; returns step timings (s) and what came out."""
    from skrt import Patient
    from skrt.registration import Registration

    from rtmap_assets.imaging.registration.elastix_engine import elastix_parameter_maps, write_parameter_file

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
        write_parameter_file({**params, "WriteResultImage": ["true"]}, p)  # skrt reads result.0.nii back
        pfiles[name] = str(p)
    reg = Registration(str(workdir / "reg"), fixed=ct, moving=relapse, pfiles=pfiles, overwrite=True,
                       capture_output=True, log_level="WARNING")
    reg.register()
    timings["register_s"] = time.perf_counter() - t

    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mapped = reg.transform(ss_rel, params=NEAREST_NEIGHBOUR_MASKS)
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
        log = workdir / "reg" / "transformix.log"
        errors = sorted({line.split("Description:", 1)[1].strip()[:200] for line in
                         (log.read_text(errors="replace").splitlines() if log.exists() else []) if "Description:" in line})
        notes.append(f"structure transform returned {len(nonempty)} non-empty of {len(rel_names)} relapse ROIs "
                     f"({len(mapped_names)} ROIs in the result)" + (f"; warnings: {caught_text}" if caught_text else "")
                     + (f"; transformix: {' / '.join(errors)}" if errors else "; see reg/transformix.log"))

    t = time.perf_counter()
    dose_data = dose.get_data()
    dose_max_gy = float(dose_data.max())
    centroid_dose_gy = None
    centroid_mm = None
    rec = [n for n in [_recurrence_name(nonempty)] if n]
    if rec:
        pos = mapped.get_roi(rec[0]).get_centroid()
        centroid_mm = [float(v) for v in pos]
        try:
            # As the seed does: the dose voxel holding the centroid (skrt's standardised array is y, x, z).
            ix, iy, iz = (dose.pos_to_idx(pos[k], ax) for k, ax in enumerate("xyz"))
            centroid_dose_gy = float(dose.get_data(standardise=True)[iy, ix, iz])
        except Exception as err:  # noqa: BLE001
            notes.append(f"dose at centroid failed: {err}")
    else:
        notes.append("dose at the mapped recurrence centroid not computed: no mapped recurrence")
    timings["dose_s"] = time.perf_counter() - t
    classes: dict[str, dict] = {}
    if rec and centroid_mm is not None:
        t = time.perf_counter()
        classes = _classify(ct, dose, ss_plan, centroid_mm, workdir / "classification.csv")
        timings["classify_s"] = time.perf_counter() - t
        t = time.perf_counter()
        _figure(ct, dose, mapped.get_roi(rec[0]), centroid_mm, workdir / "overlay.png")
        timings["figure_s"] = time.perf_counter() - t
    checked = {}
    if truth is not None and centroid_mm is not None:  # evaluation against the known warp, outside the timing
        true_centre = np.asarray(truth["recurrence"]["centroid_planning_mm"], float)
        checked["recurrence_centroid_error_mm"] = float(np.linalg.norm(np.asarray(centroid_mm) - true_centre))
        high = truth["classes"]["high"]
        checked["high_centroid_class"] = int(centroid_dose_gy >= 0.95 * high["prescription_gy"])
        checked["truth_high_centroid_class"] = int(high["centroid_class"])
    return {"path": "seed", "engine": "skrt+elastix CLI (seed)", **timings, **checked,
            "steps_s": sum(timings.values()), "planning_rois": n_plan_rois, "relapse_rois": len(rel_names),
            "mapped_rois_nonempty": len(nonempty), "dose_max_gy": dose_max_gy, "centroid_dose_gy": centroid_dose_gy,
            "mapped_recurrence_centroid_mm": centroid_mm, "seed_classes": classes,
            "complete": bool(rec), "notes": notes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, required=True)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--truth", type=Path, help="synthetic ground truth JSON: adds the centroid error and class check")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    t = time.perf_counter()
    truth = json.loads(args.truth.read_text()) if args.truth else None
    result = run_seed_path(args.export, args.workdir, truth)
    result["wall_s"] = time.perf_counter() - t
    print_child_result(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
