"""Registration settings side by side: the default engine alone on cached working grids, one fresh process per
(variant, patient), variants alternating, with TRE against the synthetic truth and the optimiser's counts.

    # once per prepared patient folder (speed_profile.py prepare / registration_benchmark.prepare_cohort):
    .venv/bin/python benchmarks/registration_settings.py cache /tmp/speed/data/seed1 /tmp/speed/data/seed2
    # variants: label=source tree[:JSON of SitkSettings overrides]
    .venv/bin/python benchmarks/registration_settings.py compare /tmp/speed/data/seed1 /tmp/speed/data/seed2 \\
        --variant base=/tmp/base --variant ftol3e-6='.:{"bspline_ftol": 3e-6}'

`cache` stores the planning and relapse working grids, the planning body and the landmark centroids (as
`run_imaging` makes them) under <patient>/regcache/. TRE is measured at 400 fixed planning points 10 mm inside
the planning body (drawn once per patient and reused by every variant, so variants are compared at the same
points; some may lie outside the relapse field of view, which the pipeline's own TRE excludes). Each line:
load, wall and CPU seconds of `register`, B-spline objective evaluations, TRE mean / max, and per B-spline
level "iterations/evaluations/L-BFGS-B stop message".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cache(work: Path) -> Path:
    import polars as pl
    import SimpleITK as sitk

    from rtmap_assets.config import load_trial_config
    from rtmap_assets.pipeline.imaging_patient import planning_step, read_inputs, relapse_step

    out = work / "regcache"
    if (out / "meta.json").exists():
        return out
    out.mkdir(exist_ok=True)
    config = load_trial_config()
    raw = work / "raw" if (work / "raw").exists() else work.parent / "raw"  # cohort folders share one raw/
    inputs = read_inputs(pl.read_parquet(work / "manifest.parquet"), config, raw, None)
    planning, relapse = planning_step(inputs, config), relapse_step(inputs, config)
    sitk.WriteImage(planning.image, str(out / "fixed.nii"))
    sitk.WriteImage(relapse.image, str(out / "moving.nii"))
    sitk.WriteImage(planning.body, str(out / "body.nii"))
    (out / "meta.json").write_text(json.dumps({"fixed_landmark_mm": [float(v) for v in planning.landmark_centroid_mm],
                                               "moving_landmark_mm": [float(v) for v in relapse.landmark_centroid_mm]}))
    return out


def run_one(work: Path, overrides: dict) -> dict:
    """register() once with SitkSettings(**overrides); counts the objective's evaluations and L-BFGS-B's result."""
    import numpy as np
    import SimpleITK as sitk
    from scipy import optimize

    from rtmap_assets.imaging.qc import erode_by_mm
    from rtmap_assets.imaging.registration import SitkSettings, register
    from rtmap_synth.evaluation import tre_mm

    c = work / "regcache"
    meta = json.loads((c / "meta.json").read_text())
    fixed, moving, body = (sitk.ReadImage(str(c / f"{n}.nii")) for n in ("fixed", "moving", "body"))
    levels: list[str] = []
    evaluations = [0]
    real_minimize = optimize.minimize

    def counted_minimize(fun, x0, **kw):
        def f(x):
            evaluations[0] += 1
            return fun(x)
        res = real_minimize(f, x0, **kw)
        levels.append(f"{res.nit}/{res.nfev}/{str(res.message)[:24]}")
        return res

    optimize.minimize = counted_minimize  # bspline_mi looks it up on scipy.optimize at call time
    settings = SitkSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    t, cpu = time.perf_counter(), time.process_time()
    result = register(fixed, moving, fixed_landmark_mm=meta["fixed_landmark_mm"],
                      moving_landmark_mm=meta["moving_landmark_mm"], settings=settings, fixed_mask=body, threads=2)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    optimize.minimize = real_minimize
    points_file = c / "tre_points.npy"
    if not points_file.exists():
        kji = np.argwhere(sitk.GetArrayViewFromImage(erode_by_mm(body, 10.0)) > 0)
        pick = kji[np.random.default_rng(0).choice(len(kji), min(400, len(kji)), replace=False)]
        np.save(points_file, np.array([fixed.TransformIndexToPhysicalPoint([int(v) for v in i[::-1]]) for i in pick]))
    tre = tre_mm(result.transform, np.load(points_file), json.loads((work / "truth.json").read_text()))
    return {"wall_s": wall, "cpu_s": cpu, "evaluations": evaluations[0], "tre_mean_mm": float(tre.mean()),
            "tre_max_mm": float(tre.max()), "levels": levels,
            "bspline_s": result.timings.get("bspline_s"), "rigid_s": result.timings.get("rigid_s")}


def compare(patients: list[Path], variants: list[str]) -> None:
    parsed = []
    for v in variants:
        label, spec = v.split("=", 1)
        tree, _, overrides = spec.partition(":")
        parsed.append((label, str(Path(tree).resolve()), overrides or "{}"))
    for k, patient in enumerate(patients):
        order = parsed[k % len(parsed):] + parsed[: k % len(parsed)]  # no variant always runs first
        for label, tree, overrides in order:
            load = os.getloadavg()[0]
            proc = subprocess.run([sys.executable, __file__, "_one", str(patient), overrides], capture_output=True,
                                  text=True, env={**os.environ, "PYTHONPATH": tree}, cwd=tree)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"{label:14s} {patient.name:8s} ERROR {proc.stderr[-400:]}", flush=True)
                continue
            r = json.loads(line[7:])
            print(f"{label:14s} {patient.name:8s} load {load:.1f} wall {r['wall_s']:.2f} s cpu {r['cpu_s']:.2f} s "
                  f"(rigid {r['rigid_s']:.2f}, B-spline {r['bspline_s']:.2f}) evaluations {r['evaluations']:4d} "
                  f"TRE {r['tre_mean_mm']:.3f} / {r['tre_max_mm']:.3f} mm  levels {r['levels']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("cache")
    a.add_argument("patients", type=Path, nargs="+")
    a = sub.add_parser("compare")
    a.add_argument("patients", type=Path, nargs="+")
    a.add_argument("--variant", action="append", required=True, help="label=tree[:JSON overrides]")
    a = sub.add_parser("_one")
    a.add_argument("patient", type=Path)
    a.add_argument("overrides")
    args = ap.parse_args(argv)
    if args.cmd == "cache":
        for p in args.patients:
            print(cache(p))
    elif args.cmd == "compare":
        compare(args.patients, args.variant)
    else:
        print("RESULT " + json.dumps(run_one(args.patient, json.loads(args.overrides))))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.environ.get("PYTHONPATH", str(HERE.parent)).split(os.pathsep)[0])
    raise SystemExit(main())
