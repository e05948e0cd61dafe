"""Per-patient speed (issue 13 point 6): profile the clinical-size path and compare two source trees.

    # once: clinical-size synthetic patients (512 x 512 x 150 @ 0.98 x 0.98 x 2 mm) under WORK/seed<N>/
    .venv/bin/python benchmarks/speed_profile.py prepare --work /tmp/speed/data --seeds 1 2 3
    # cProfile of run_imaging + run_dosimetry on one patient (top entries by own time and cumulative)
    .venv/bin/python benchmarks/speed_profile.py profile --work /tmp/speed/data --seed 1
    # side by side: old and new source trees alternating per seed, each run in a fresh subprocess
    git archive <base> | tar -x -C /tmp/speed/base
    .venv/bin/python benchmarks/speed_profile.py compare --work /tmp/speed/data --seeds 1 2 3 \
        --tree old=/tmp/speed/base --tree new=.

    # fresh-process cost of importing the per-patient path (bytecode caches or not), N processes
    .venv/bin/python benchmarks/speed_profile.py imports --repeats 3
    PYTHONPYCACHEPREFIX=$(mktemp -d) .venv/bin/python benchmarks/speed_profile.py imports   # as without .pyc

Each compared run reports the 1-min load average before it, DICOM -> mapped seconds (read + grid +
registration + mapping), the whole run_imaging seconds (with QC and NIfTI writes), run_dosimetry seconds,
TRE mean/max and recurrence Dice against the known warp (`rtmap_synth.evaluation.evaluate_imaging_dir` on
the stored output) and the classes `run_dosimetry` gives, so a speed change is judged beside its accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLINICAL_SHAPE = (512, 512, 150)
CLINICAL_SPACING = (0.9765625, 0.9765625, 2.0)
CLASS_COLUMNS = ("level", "centroid_class", "volume_class", "dawson_class")


def run_patient(work: Path, out: Path, threads: int) -> dict:
    """run_imaging + evaluation + run_dosimetry on one prepared patient (imports from sys.path)."""
    import polars as pl

    from rtmap_assets.config import load_trial_config
    from rtmap_assets.pipeline.dosimetry_patient import run_dosimetry
    from rtmap_assets.pipeline.imaging_patient import run_imaging
    from rtmap_assets.pipeline.volumes import PatientVolumes
    from rtmap_synth.evaluation import evaluate_imaging_dir

    rows = pl.read_parquet(work / "manifest.parquet")
    truth = json.loads((work / "truth.json").read_text())
    config = load_trial_config()
    if out.exists():
        shutil.rmtree(out)
    t = time.perf_counter()
    cpu = time.process_time()
    result = run_imaging(rows, config, out, raw_root=work / "raw", threads=threads)
    imaging_s = time.perf_counter() - t
    imaging_cpu_s = time.process_time() - cpu  # all threads; less sensitive than wall time to a loaded machine
    qc = result.registration_qc.row(0, named=True)
    t = time.perf_counter()
    volumes = PatientVolumes.load(out)  # as the dosimetry asset does: from the stored NIfTI files
    dos = run_dosimetry(volumes, config, radius_mm=5.0, sigma_mm=float(qc["landmark_distance_mm"]))
    dosimetry_s = time.perf_counter() - t
    ev = evaluate_imaging_dir(out, truth, qc["relapse_modality"])  # not timed
    cls = dos.classification
    classes = [" ".join(str(r.get(c)) for c in CLASS_COLUMNS if c in cls.columns) for r in cls.iter_rows(named=True)]
    return {
        "read_s": qc["read_s"], "grid_s": qc["grid_s"], "registration_s": qc["registration_s"],
        "mapping_s": qc["mapping_s"], "qc_s": qc["qc_s"], "stage_timings": qc["stage_timings"],
        "mapped_s": qc["read_s"] + qc["grid_s"] + qc["registration_s"] + qc["mapping_s"],
        "imaging_s": imaging_s, "imaging_cpu_s": imaging_cpu_s, "dosimetry_s": dosimetry_s,
        "tre_mean_mm": ev.get("tre_mean_mm"), "tre_max_mm": ev.get("tre_max_mm"),
        "rec_dice": ev.get("recurrence_dice_truth"), "jacobian_min": qc["jacobian_min"],
        "landmark_mm": qc["landmark_distance_mm"], "classes": "; ".join(classes),
    }


def cmd_prepare(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))
    from registration_benchmark import prepare

    for seed in args.seeds:
        print(prepare(seed, Path(args.work), CLINICAL_SHAPE, CLINICAL_SPACING), flush=True)


def cmd_profile(args: argparse.Namespace) -> None:
    import cProfile
    import io
    import pstats

    if not os.environ.get("PYTHONPATH"):  # PYTHONPATH=<tree> profiles another source tree
        sys.path.insert(0, str(HERE.parent))
    work = Path(args.work) / f"seed{args.seed}"
    # --timer cpu: process CPU time (all threads), much less sensitive than wall time to a loaded machine
    prof = cProfile.Profile(time.process_time) if args.timer == "cpu" else cProfile.Profile()
    # imports first, so the profile shows the patient's work (this environment may not cache bytecode)
    import rtmap_assets.pipeline.dosimetry_patient  # noqa: F401
    import rtmap_assets.pipeline.imaging_patient  # noqa: F401
    import rtmap_synth.evaluation  # noqa: F401
    load = os.getloadavg()[0]
    prof.enable()
    r = run_patient(work, work / "out_profile", args.threads)
    prof.disable()
    if args.dump:
        prof.dump_stats(args.dump)
    print(f"load1 {load:.2f}; timer {args.timer}; " + json.dumps(r))
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(key).print_stats(args.top)
        print(f"\n### top {args.top} by {key}\n" + buf.getvalue().split("\n\n", 2)[-1].strip())


def cmd_child(args: argparse.Namespace) -> None:
    work = Path(args.work) / f"seed{args.seed}"
    r = run_patient(work, work / f"out_{args.label}", args.threads)
    hwm_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmHWM"))
    r["peak_rss_mb"] = hwm_kb / 1024.0
    print("RESULT " + json.dumps(r))


IMPORTS = ("polars", "rtmap_assets.config", "rtmap_assets.dosimetry.uncertainty",
           "rtmap_assets.pipeline.dosimetry_patient", "rtmap_assets.pipeline.imaging_patient",
           "rtmap_assets.pipeline.volumes", "rtmap_synth.evaluation")  # what benchmarks/pipeline_path.py imports


def cmd_imports(args: argparse.Namespace) -> None:
    """Wall and CPU seconds of a fresh interpreter importing the per-patient path, `--repeats` times (with
    PYTHONDONTWRITEBYTECODE=1 and no .pyc files, every module is compiled again in every process)."""
    code = ("import time; t = time.perf_counter()\n" + "".join(f"import {m}\n" for m in IMPORTS)
            + "import sys; print(time.perf_counter() - t, time.process_time(), "
              "sum(m.startswith(('plotly', 'dagster')) for m in sys.modules))")
    for k in range(args.repeats):
        load = os.getloadavg()[0]
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             cwd=str(HERE.parent)).stdout.split()
        print(f"run {k + 1}: load1 {load:.2f}, imports {float(out[0]):.2f} s wall, process CPU {float(out[1]):.2f} s, "
              f"plotly/dagster modules loaded: {out[2]}; "
              f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE')}", flush=True)


def cmd_compare(args: argparse.Namespace) -> None:
    trees = [t.split("=", 1) for t in args.tree]
    results = []
    for rep in range(args.repeats):
        for seed in args.seeds:
            order = trees if (rep + seed) % 2 == 0 else trees[::-1]  # alternate who goes first
            for label, tree in order:
                tree = str(Path(tree).resolve())
                load = os.getloadavg()[0]
                cmd = [sys.executable, str(Path(__file__).resolve()), "child", "--work", args.work, "--seed",
                       str(seed), "--label", label, "--threads", str(args.threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tree,
                                      env={**os.environ, "PYTHONPATH": tree})
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    raise RuntimeError(f"{label} seed {seed} failed:\n{proc.stderr[-3000:]}")
                r = {"label": label, "seed": seed, "rep": rep, "load1": load, **json.loads(line[7:])}
                results.append(r)
                print(json.dumps(r), flush=True)
    print("\n| tree | seed | load1 | DICOM→mapped s | read | grid | registration | mapping | run_imaging s "
          "| run_imaging CPU s | run_dosimetry s | peak RSS MB | TRE mean / max mm | rec. Dice | classes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['label']} | {r['seed']} | {r['load1']:.1f} | {r['mapped_s']:.1f} | {r['read_s']:.1f} "
              f"| {r['grid_s']:.1f} | {r['registration_s']:.1f} | {r['mapping_s']:.1f} | {r['imaging_s']:.1f} "
              f"| {r.get('imaging_cpu_s', float('nan')):.1f} "
              f"| {r['dosimetry_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['tre_mean_mm']:.2f} / {r['tre_max_mm']:.2f} "
              f"| {r['rec_dice']:.3f} | {r['classes']} |")
    print(summary(results, [label for label, _ in trees]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def summary(results: list[dict], labels: list[str]) -> str:
    """Per tree: medians of the times, mean of the TRE means, worst TRE max, lowest Dice, and on how many
    runs the classes equal those of the first tree on the same seed."""
    import statistics

    ref = {(r["seed"], r["rep"]): r["classes"] for r in results if r["label"] == labels[0]}
    lines = ["| tree | runs | median load1 | median DICOM→mapped s | median registration s | median run_imaging s "
             "| median run_imaging CPU s | TRE mean (avg) / max (worst) mm | min rec. Dice "
             f"| classes = {labels[0]} |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label in labels:
        rs = [r for r in results if r["label"] == label]
        if not rs:
            continue
        med = {k: statistics.median(r[k] for r in rs if r.get(k) is not None) if any(r.get(k) is not None for r in rs)
               else float("nan") for k in ("load1", "mapped_s", "registration_s", "imaging_s", "imaging_cpu_s")}
        same = sum(r["classes"] == ref.get((r["seed"], r["rep"])) for r in rs)
        lines.append(f"| {label} | {len(rs)} | {med['load1']:.1f} | {med['mapped_s']:.1f} | {med['registration_s']:.1f} "
                     f"| {med['imaging_s']:.1f} | {med['imaging_cpu_s']:.1f} "
                     f"| {statistics.mean(r['tre_mean_mm'] for r in rs):.2f} / {max(r['tre_max_mm'] for r in rs):.2f} "
                     f"| {min(r['rec_dice'] for r in rs):.3f} | {same}/{len(rs)} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--work", required=True)
    a.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    a = sub.add_parser("profile")
    a.add_argument("--work", required=True)
    a.add_argument("--seed", type=int, default=1)
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--top", type=int, default=25)
    a.add_argument("--timer", choices=("wall", "cpu"), default="wall")
    a.add_argument("--dump", help="write the cProfile stats to this file")
    a = sub.add_parser("child")
    a.add_argument("--work", required=True)
    a.add_argument("--seed", type=int, required=True)
    a.add_argument("--label", required=True)
    a.add_argument("--threads", type=int, default=2)
    a = sub.add_parser("compare")
    a.add_argument("--work", required=True)
    a.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    a.add_argument("--tree", action="append", required=True, help="label=path of a source tree (twice)")
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--repeats", type=int, default=1)
    a.add_argument("--json")
    a = sub.add_parser("imports")
    a.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    {"prepare": cmd_prepare, "profile": cmd_profile, "child": cmd_child, "compare": cmd_compare,
     "imports": cmd_imports}[args.cmd](args)


if __name__ == "__main__":
    main()
