"""Mapping relapse structures into planning space (rule 4): speed and agreement of two source trees.

    # once per patient: the mapping step's inputs after a real registration (relapse masks on their 1 mm boxes,
    # the planning working grid, the transform, the relapse image) under OUT/seed<N>/
    .venv/bin/python benchmarks/mapping_speed.py capture --work /tmp/speed/data --out /tmp/mapfast/cap --seeds 1 2 3
    # old and new trees alternating, one fresh process per (tree, seed): CPU and wall of map_mask per structure
    # and of the registered-image resample (the rest of `mapping_step`) + the Jacobian QC, then the masks voxel by voxel
    git archive main | tar -x -C /tmp/mapfast_base
    .venv/bin/python benchmarks/mapping_speed.py compare --cap /tmp/mapfast/cap --seeds 1 2 3 --repeats 2 \
        --tree old=/tmp/mapfast_base --tree new=.
    # the one-evaluation-per-voxel path against T evaluated at every sub-sample, on the boxes map_mask resamples
    .venv/bin/python benchmarks/mapping_speed.py accuracy --cap /tmp/mapfast/cap --seeds 1 2 3

`--work` holds patients prepared by `speed_profile.py prepare` (raw/, manifest.parquet). Results in
benchmarks/SPEED.md ("Round 3: mapping").
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


def cmd_capture(args: argparse.Namespace) -> None:
    import polars as pl
    import SimpleITK as sitk

    from rtmap_assets.config import load_trial_config
    from rtmap_assets.imaging.registration import register
    from rtmap_assets.pipeline import imaging_patient as ip

    config = load_trial_config()
    for seed in args.seeds:
        work, out = Path(args.work) / f"seed{seed}", Path(args.out) / f"seed{seed}"
        out.mkdir(parents=True, exist_ok=True)
        inputs = ip.read_inputs(pl.read_parquet(work / "manifest.parquet"), config, work / "raw", None)
        planning, relapse = ip.planning_step(inputs, config), ip.relapse_step(inputs, config)
        result = register(planning.image, relapse.image, fixed_landmark_mm=planning.landmark_centroid_mm,
                          moving_landmark_mm=relapse.landmark_centroid_mm, engine=args.engine or config.registration.engine,
                          bspline_grid_mm=config.registration.bspline_grid_mm, fixed_mask=planning.body)
        sitk.WriteTransform(result.transform, str(out / "transform.h5"))
        sitk.WriteImage(planning.ref, str(out / "ref.nii.gz"))
        sitk.WriteImage(relapse.image, str(out / "relapse_image.nii.gz"))
        names = {}
        for i, (name, mask) in enumerate(relapse.masks.items()):
            sitk.WriteImage(mask, str(out / f"mask{i}.nii.gz"))
            names[f"mask{i}"] = name
        (out / "meta.json").write_text(json.dumps({"names": names, "default": relapse.default_value,
                                                   "engine": result.engine}))
        print(seed, result.engine, names, flush=True)


def load_capture(cap: Path):
    import SimpleITK as sitk

    meta = json.loads((cap / "meta.json").read_text())
    masks = {key: sitk.ReadImage(str(cap / f"{key}.nii.gz")) for key in meta["names"]}
    return meta, sitk.ReadTransform(str(cap / "transform.h5")), sitk.ReadImage(str(cap / "ref.nii.gz")), masks


def cmd_child(args: argparse.Namespace) -> None:
    """One tree (on sys.path via PYTHONPATH), one seed: map every structure, write the masks, print timings."""
    import SimpleITK as sitk

    from rtmap_assets.imaging import grid as wg
    from rtmap_assets.imaging.mapping import map_mask

    cap = Path(args.cap) / f"seed{args.seed}"
    meta, transform, ref, masks = load_capture(cap)
    image = sitk.ReadImage(str(cap / "relapse_image.nii.gz"))
    out = Path(args.masks_out)
    out.mkdir(parents=True, exist_ok=True)
    per = {}
    for key, mask in masks.items():
        cpu, wall = time.process_time(), time.perf_counter()
        mapped = map_mask(mask, transform, ref)
        per[meta["names"][key]] = (time.process_time() - cpu, time.perf_counter() - wall)
        sitk.WriteImage(mapped, str(out / f"{key}.nii.gz"))
    # the rest of the mapping step (registered image) and the Jacobian QC, as each tree's run_imaging does them
    # (the Jacobian over the whole grid: the body mask is not captured)
    from rtmap_assets.imaging.qc import jacobian_stats

    cpu, wall = time.process_time(), time.perf_counter()
    if hasattr(wg, "displacement_field"):  # one field of T for both
        field = wg.displacement_field(transform, ref)
        wg.resample_with_field(image, field, default_value=meta["default"])
        jacobian_stats(transform, ref, field=field)
    else:
        wg.resample(image, ref, transform=transform, default_value=meta["default"])
        jacobian_stats(transform, ref)
    print("RESULT " + json.dumps({"per": per, "image_cpu_s": time.process_time() - cpu,
                                  "image_wall_s": time.perf_counter() - wall,
                                  "threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}))


def _uptime() -> str:
    return "{:.2f}/{:.2f}/{:.2f}".format(*os.getloadavg())


def cmd_compare(args: argparse.Namespace) -> None:
    import numpy as np
    import SimpleITK as sitk

    trees = [t.split("=", 1) for t in args.tree]
    rows = []
    for rep in range(args.repeats):
        for seed in args.seeds:
            for label, tree in (trees if (rep + seed) % 2 == 0 else trees[::-1]):  # alternate who goes first
                tree = str(Path(tree).resolve())
                load = _uptime()
                cmd = [sys.executable, str(Path(__file__).resolve()), "child", "--cap", args.cap, "--seed", str(seed),
                       "--masks-out", str(Path(args.cap) / "mapped" / label / f"seed{seed}")]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tree, env={**os.environ, "PYTHONPATH": tree})
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    raise RuntimeError(f"{label} seed {seed} failed:\n{proc.stderr[-3000:]}")
                r = {"label": label, "seed": seed, "rep": rep, "load": load, **json.loads(line[7:])}
                r["masks_cpu_s"] = sum(v[0] for v in r["per"].values())
                r["masks_wall_s"] = sum(v[1] for v in r["per"].values())
                rows.append(r)
                print(json.dumps(r), flush=True)
    a, b = trees[0][0], trees[1][0]
    pick = lambda rep, seed, label: next(r for r in rows if (r["rep"], r["seed"], r["label"]) == (rep, seed, label))  # noqa: E731
    print(f"\n| seed | rep | map_mask CPU s {a} → {b} | map_mask wall s {a} → {b} | CPU ratio "
          f"| registered image + Jacobian QC CPU s {a} → {b} | together CPU s {a} → {b} | load 1/5/15 before {a} / {b} |")
    print("|---|---|---|---|---|---|---|---|")
    for rep in range(args.repeats):
        for seed in args.seeds:
            o, n = pick(rep, seed, a), pick(rep, seed, b)
            print(f"| {seed} | {rep} | {o['masks_cpu_s']:.2f} → {n['masks_cpu_s']:.2f} | {o['masks_wall_s']:.2f} → "
                  f"{n['masks_wall_s']:.2f} | {o['masks_cpu_s'] / n['masks_cpu_s']:.1f}× | {o['image_cpu_s']:.2f} → "
                  f"{n['image_cpu_s']:.2f} | {o['masks_cpu_s'] + o['image_cpu_s']:.2f} → "
                  f"{n['masks_cpu_s'] + n['image_cpu_s']:.2f} | {o['load']} / {n['load']} |")
    print(f"\n| seed | structure | CPU s {a} → {b} (last rep) | voxels {a} | voxels {b} | differing voxels | volume difference % |")
    print("|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        meta = json.loads((Path(args.cap) / f"seed{seed}" / "meta.json").read_text())
        o, n = pick(args.repeats - 1, seed, a), pick(args.repeats - 1, seed, b)
        for key, name in meta["names"].items():
            va, vb = (sitk.GetArrayFromImage(sitk.ReadImage(str(Path(args.cap) / "mapped" / lab / f"seed{seed}" /
                                                                f"{key}.nii.gz"))) > 0 for lab in (a, b))
            print(f"| {seed} | {name} | {o['per'][name][0]:.2f} → {n['per'][name][0]:.2f} | {va.sum()} | {vb.sum()} "
                  f"| {np.count_nonzero(va ^ vb)} | {100 * (vb.sum() / va.sum() - 1):+.3f} |")


def cmd_accuracy(args: argparse.Namespace) -> None:
    """On the box map_mask resamples for each structure: max |T(p) - interpolated| over the sub-samples, the
    occupancy integral with T at every sub-sample (ITK, as before) and the fast one, and the voxels skipped."""
    import numpy as np
    import SimpleITK as sitk

    import rtmap_assets.imaging.mapping as mapping
    from rtmap_assets.imaging import grid as wg

    boxes = []
    real = mapping.resample_mask
    mapping.resample_mask = lambda m, ref, t: boxes.append(ref) or real(m, ref, t)
    print("| seed | structure | box voxels | sub-samples | max position error mm | integral, T at every sub-sample "
          "| integral, fast | difference (voxels) | voxels not sub-sampled |")
    print("|---|---|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        meta, transform, ref, masks = load_capture(Path(args.cap) / f"seed{seed}")
        for key, mask in masks.items():
            boxes.clear()
            mapping.map_mask(mask, transform, ref)
            shifted = sitk.Image(boxes[0])
            shifted.SetOrigin(tuple(np.asarray(shifted.GetOrigin()) + np.asarray(shifted.GetSpacing()) * wg._TIE_SHIFT))
            occupancy = sitk.Cast(wg._crop_to_mask(mask, wg.CROP_PAD_VOXELS) > 0, sitk.sitkFloat32)
            k = int(min(4, max(2, np.ceil(max(shifted.GetSpacing()) / min(occupancy.GetSpacing()) - 1e-6))))
            fine = sitk.Image([n * k for n in shifted.GetSize()], sitk.sitkUInt8)
            spacing = np.asarray(shifted.GetSpacing()) / k
            fine.SetSpacing(tuple(spacing))
            fine.SetOrigin(tuple(np.asarray(shifted.GetOrigin()) - spacing * (k - 1) / 2.0))
            exact_q = wg.mapped_positions_mm(fine, transform)  # T at every sub-sample, [Z, Y, X, 3]
            q = wg._pad_linear(wg.mapped_positions_mm(shifted, transform), (0, 1, 2))
            offsets = [(j - (k - 1) / 2.0) / k for j in range(k)]
            err = 0.0
            for a, ox in enumerate(offsets):
                for b, oy in enumerate(offsets):
                    qxy = wg._lerp_axis(wg._lerp_axis(q, 2, ox), 1, oy)
                    for c, oz in enumerate(offsets):
                        diff = wg._lerp_axis(qxy, 0, oz) - exact_q[c::k, b::k, a::k]
                        err = max(err, float(np.linalg.norm(diff, axis=-1).max()))
            values = sitk.GetArrayFromImage(wg.resample(occupancy, fine, transform=transform, default_value=0.0))
            exact = float(values.sum(dtype=np.float64)) / k**3
            fast = wg._mapped_voxels(occupancy, shifted, transform)
            reach = max(abs(o) for o in offsets) * sum(float(np.linalg.norm(np.diff(q, axis=ax), axis=-1).max())
                                                       for ax in range(3))
            empty, full = wg._uniform_voxels(occupancy, q[1:-1, 1:-1, 1:-1], reach)
            n = int(np.prod(shifted.GetSize()))
            print(f"| {seed} | {meta['names'][key]} | {n} | {n * k**3} | {err:.4f} | {exact:.3f} | {fast:.3f} "
                  f"| {fast - exact:+.3f} | {100 * np.count_nonzero(empty | full) / n:.0f} % |", flush=True)
    print(f"load {_uptime()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("capture")
    c.add_argument("--work", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    c.add_argument("--engine", default=None, help="registration engine (default: the trial configuration's)")
    c = sub.add_parser("child")
    c.add_argument("--cap", required=True)
    c.add_argument("--seed", type=int, required=True)
    c.add_argument("--masks-out", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--cap", required=True)
    c.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    c.add_argument("--repeats", type=int, default=2)
    c.add_argument("--tree", action="append", required=True, help="label=path, twice")
    c = sub.add_parser("accuracy")
    c.add_argument("--cap", required=True)
    c.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = p.parse_args()
    if args.cmd != "child" and not os.environ.get("PYTHONPATH"):
        sys.path.insert(0, str(HERE.parent))
    {"capture": cmd_capture, "child": cmd_child, "compare": cmd_compare, "accuracy": cmd_accuracy}[args.cmd](args)


if __name__ == "__main__":
    main()
