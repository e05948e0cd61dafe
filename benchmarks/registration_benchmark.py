"""Registration benchmark: raw DICOM -> mapped structures for each engine on clinical-size synthetic pairs.

For each seed a synthetic patient is generated (512 x 512 x 150 at 0.98 x 0.98 x 2 mm, ~13 mm mean
displacement: a few degrees of rotation, a translation and a smooth warp of a few mm; not timed),
catalogued and resolved by the manifest. Then each engine runs `run_imaging` in a FRESH subprocess
(so peak RSS is that engine's alone: the process's VmHWM, and the summed RSS of the process and its
children, i.e. the elastix CLI under scikit-rt, polled every 50 ms) and reports per-step times, TRE against the known warp and the
recurrence Dice against the true recurrence. Results are written as a Markdown table with the
machine description.

    .venv/bin/python benchmarks/registration_benchmark.py --seeds 1 2 3 --engines sitk elastix skrt \
        --cohort 9 --out benchmarks/RESULTS.md

`--cohort N` adds the per-patient spread of the default engine on a demo-style cohort (arms and
recurrence cases cycling, every third relapse an MR), the same kind of patients `rtmap demo` makes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("registration_benchmark")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout
sys.path.insert(0, str(HERE))  # the benchmarks' shared helpers (bench_common)


def child(args: argparse.Namespace) -> None:
    """Run one engine on one prepared patient; print one JSON line."""
    import polars as pl

    from rtmap_assets.config import load_trial_config
    from rtmap_assets.pipeline.imaging_patient import run_imaging
    from rtmap_synth.evaluation import evaluate_imaging_dir

    work = Path(args.patient_dir)
    rows = pl.read_parquet(work / "manifest.parquet")
    truth = json.loads((work / "truth.json").read_text())
    config = load_trial_config()
    out = work / f"out_{args.engine}"
    if out.exists():
        shutil.rmtree(out)
    t = time.perf_counter()
    raw_root = Path(args.raw_root) if args.raw_root else work / "raw"
    result = run_imaging(rows, config, out, raw_root=raw_root, engine=args.engine, threads=args.threads)
    wall = time.perf_counter() - t
    qc = result.registration_qc.row(0, named=True)
    # ground truth: TRE against the known warp and recurrence Dice, from what run_imaging stored (not timed)
    qc.update(evaluate_imaging_dir(out, truth, qc["relapse_modality"]))
    # VmHWM is this process's own high-water mark (reset by exec, unlike ru_maxrss, which Linux carries
    # over from the parent); elastix CLI children are covered by the parent's polling of the tree.
    hwm_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmHWM"))
    qc.update(wall_s=wall, self_hwm_mb=hwm_kb / 1024.0)
    print("RESULT " + json.dumps(qc, default=str))


def prepare(seed: int, base: Path, shape, spacing) -> Path:
    """Generate one patient, catalog it and store its manifest rows + truth under base/seed<N>/."""
    from rtmap_assets.config import load_trial_config
    from rtmap_assets.dicom.catalog import catalog_folder
    from rtmap_assets.dicom.manifest import build_manifest
    from rtmap_synth.cohort import GeneratorSettings, generate_patient

    config = load_trial_config()
    work = base / f"seed{seed}"
    raw = work / "raw" / config.trial
    pid = f"B{seed:03d}"
    truth = generate_patient(raw, work / "truth", pid, seed=seed, arm="A", case="inside",
                             settings=GeneratorSettings(ct_shape=tuple(shape), ct_spacing=tuple(spacing),
                                                        layout="nested"), config=config)
    manifest, issues = build_manifest(catalog_folder(raw).files, config)
    if issues.height:
        raise RuntimeError(f"manifest issues for seed {seed}: {issues.to_dicts()}")
    manifest.write_parquet(work / "manifest.parquet")
    (work / "truth.json").write_text(json.dumps(truth))
    return work


def prepare_cohort(n_patients: int, seed: int, base: Path, shape, spacing) -> list[tuple[dict, Path]]:
    """A demo-style cohort (arms and inside/peripheral/outside cases cycling, every third relapse an MR)
    at clinical size; one work folder per patient with its manifest rows and truth."""
    import polars as pl

    from rtmap_assets.config import load_trial_config
    from rtmap_assets.dicom.catalog import catalog_folder
    from rtmap_assets.dicom.manifest import build_manifest
    from rtmap_synth.cohort import GeneratorSettings, generate_cohort

    config = load_trial_config()
    root = base / f"cohort{seed}"
    truths = generate_cohort(root / "raw", root / "truth", root / "covariates.csv", n_patients=n_patients, seed=seed,
                             settings=GeneratorSettings(ct_shape=tuple(shape), ct_spacing=tuple(spacing), mr_every=3),
                             config=config)
    manifest, issues = build_manifest(catalog_folder(root / "raw" / config.trial).files, config)
    if issues.height:
        raise RuntimeError(f"manifest issues in the cohort: {issues.to_dicts()}")
    out = []
    for truth in truths:
        pid = truth["patient_id"]
        work = root / pid
        work.mkdir(parents=True, exist_ok=True)
        manifest.filter(pl.col("patient_id") == pid).write_parquet(work / "manifest.parquet")
        (work / "truth.json").write_text(json.dumps(truth))
        out.append((truth, work))
    return out


def machine() -> dict[str, str]:
    import numpy
    import SimpleITK

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
        ram = f"{mem_kb / 1024**2:.1f} GiB"
    except (OSError, StopIteration):
        ram = "unknown"
    versions = {"python": platform.python_version(), "SimpleITK": SimpleITK.Version.VersionString(),
                "numpy": numpy.__version__}
    for mod in ("itk", "skrt", "scipy"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional packages; absent means "not installed"
            versions[mod] = "not installed"
    from bench_common import elastix_cli_version

    versions["elastix CLI"] = elastix_cli_version()
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "ram": ram, "os": platform.platform(),
            "load_before": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "versions": ", ".join(f"{k} {v}" for k, v in versions.items())}


def engine_available(engine: str) -> bool:
    if engine == "elastix":
        try:
            import itk  # noqa: F401

            return hasattr(__import__("itk"), "elastix_registration_method")
        except ImportError:
            return False
    if engine == "skrt":
        try:
            import skrt  # noqa: F401
        except ImportError:
            return False
        return shutil.which("elastix") is not None and shutil.which("transformix") is not None
    return True


def run_child(work: Path, engine: str, threads: int, raw_root: Path | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--patient-dir", str(work), "--engine", engine,
           "--threads", str(threads)] + (["--raw-root", str(raw_root)] if raw_root else [])
    import psutil

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        peak = 0
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:  # peak of the summed RSS of the child and its own children (elastix CLI)
            try:
                total = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
                peak = max(peak, total)
            except psutil.Error:
                pass
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[len("RESULT "):])
            r["peak_rss_mb"] = max(peak / 1024**2, r["self_hwm_mb"])
            return r
    raise RuntimeError(f"{engine} failed (exit {proc.returncode}):\n{stderr[-3000:]}")


def fmt(v, nd=1) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def table(results: list[dict]) -> str:
    head = ("| engine | seed | read s | grid s | registration s | mapping s | DICOM→mapped s | QC+write s | "
            "peak RSS MB | TRE mean / max mm | rec. Dice | landmark dist mm | Jacobian min |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in results:
        d2m = r["read_s"] + r["grid_s"] + r["registration_s"] + r["mapping_s"]
        lines.append(
            f"| {r['engine']} | {r['seed']} | {fmt(r['read_s'])} | {fmt(r['grid_s'])} | {fmt(r['registration_s'])} | "
            f"{fmt(r['mapping_s'])} | {fmt(d2m)} | {fmt(r['wall_s'] - d2m)} | {fmt(r['peak_rss_mb'], 0)} | "
            f"{fmt(r['tre_mean_mm'], 2)} / {fmt(r['tre_max_mm'], 2)} | {fmt(r['recurrence_dice_truth'], 3)} | "
            f"{fmt(r['landmark_distance_mm'], 2)} | {fmt(r['jacobian_min'], 2)} |")
    return "\n".join(lines)


def summary(results: list[dict]) -> str:
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["engine"], []).append(r)
    head = "| engine | runs | median DICOM→mapped s | median total s | max peak RSS MB | mean TRE mean / worst max mm | min rec. Dice |"
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    med = {}
    for eng, rs in by.items():
        d2m = statistics.median(r["read_s"] + r["grid_s"] + r["registration_s"] + r["mapping_s"] for r in rs)
        med[eng] = d2m
        lines.append(
            f"| {eng} | {len(rs)} | {d2m:.1f} | {statistics.median(r['wall_s'] for r in rs):.1f} | "
            f"{max(r['peak_rss_mb'] for r in rs):.0f} | {statistics.mean(r['tre_mean_mm'] for r in rs):.2f} / "
            f"{max(r['tre_max_mm'] for r in rs):.2f} | {min(r['recurrence_dice_truth'] for r in rs):.3f} |")
    out = "\n".join(lines)
    if "sitk" in med:
        ratios = [f"{eng}/sitk = {m / med['sitk']:.1f}x" for eng, m in med.items() if eng != "sitk"]
        if ratios:
            out += "\n\nMedian DICOM→mapped time ratios: " + ", ".join(ratios) + "."
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--engines", nargs="+", default=["sitk", "elastix", "skrt"])
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 150])
    ap.add_argument("--spacing", type=float, nargs=3, default=[0.9765625, 0.9765625, 2.0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed afterwards")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown report here")
    ap.add_argument("--cohort", type=int, default=0, metavar="N",
                    help="also run the default engine on a demo-style cohort of N clinical-size patients "
                         "(cases and arms cycling, every third relapse an MR): the per-patient spread")
    ap.add_argument("--cohort-seed", type=int, default=0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--raw-root", help=argparse.SUPPRESS)
    ap.add_argument("--patient-dir", help=argparse.SUPPRESS)
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.child:
        child(args)
        return
    info = machine()
    base = args.workdir or Path(tempfile.mkdtemp(prefix="rtmap_regbench_"))
    results: list[dict] = []
    cohort_results: list[dict] = []
    engines = [e for e in args.engines if engine_available(e)]
    skipped = [e for e in args.engines if e not in engines]
    try:
        for seed in args.seeds:
            t = time.perf_counter()
            work = prepare(seed, base, args.shape, args.spacing)
            log.info("seed %d prepared in %.0f s", seed, time.perf_counter() - t)
            for engine in engines:
                load = os.getloadavg()[0]
                r = run_child(work, engine, args.threads)
                r.update(seed=seed, load_1min_before=load)
                log.info("seed %d %s: %s", seed, engine, {k: r[k] for k in (
                    "wall_s", "registration_s", "peak_rss_mb", "tre_mean_mm", "tre_max_mm", "recurrence_dice_truth")})
                results.append(r)
        if args.cohort:
            t = time.perf_counter()
            patients = prepare_cohort(args.cohort, args.cohort_seed, base, args.shape, args.spacing)
            log.info("cohort of %d prepared in %.0f s", args.cohort, time.perf_counter() - t)
            for truth, work in patients:
                load = os.getloadavg()[0]
                r = run_child(work, "sitk", args.threads, raw_root=work.parent / "raw")
                r.update(seed=truth["patient_id"], case=truth["case"], load_1min_before=load)
                log.info("cohort %s (%s, %s): TRE %.2f / %.2f, Dice %.3f", truth["patient_id"], r["relapse_modality"],
                         truth["case"], r["tre_mean_mm"], r["tre_max_mm"], r["recurrence_dice_truth"])
                cohort_results.append(r)
    finally:
        if args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    info["load_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    report = render(results, info, args, skipped) + cohort_section(cohort_results, args)
    if args.out:
        args.out.write_text(report)
    print(report)


def cohort_section(results: list[dict], args: argparse.Namespace) -> str:
    if not results:
        return ""
    head = ("| patient | relapse | case | DICOM→mapped s | registration s | peak RSS MB | TRE mean / max mm | "
            "rec. Dice | landmark dist mm | Jacobian min |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in results:
        d2m = r["read_s"] + r["grid_s"] + r["registration_s"] + r["mapping_s"]
        lines.append(f"| {r['seed']} | {r['relapse_modality']} | {r['case']} | {fmt(d2m)} | {fmt(r['registration_s'])} | "
                     f"{fmt(r['peak_rss_mb'], 0)} | {fmt(r['tre_mean_mm'], 2)} / {fmt(r['tre_max_mm'], 2)} | "
                     f"{fmt(r['recurrence_dice_truth'], 3)} | {fmt(r['landmark_distance_mm'], 2)} | "
                     f"{fmt(r['jacobian_min'], 2)} |")
    d2m = [r["read_s"] + r["grid_s"] + r["registration_s"] + r["mapping_s"] for r in results]
    bars = [("DICOM → mapped ≤ 20 s", sum(v <= 20 for v in d2m)),
            ("peak RSS ≤ 1.5 GB", sum(r["peak_rss_mb"] <= 1536 for r in results)),
            ("TRE mean ≤ 1.0 mm", sum(r["tre_mean_mm"] <= 1.0 for r in results)),
            ("TRE max ≤ 3 mm", sum(r["tre_max_mm"] <= 3.0 for r in results)),
            ("recurrence Dice ≥ 0.85", sum(r["recurrence_dice_truth"] >= 0.85 for r in results))]
    n = len(results)
    met = "; ".join(f"{name}: {k}/{n}" for name, k in bars)
    tre_mean = [r["tre_mean_mm"] for r in results]
    dice = [r["recurrence_dice_truth"] for r in results]
    stats = (f"Median DICOM→mapped {statistics.median(d2m):.1f} s (max {max(d2m):.1f} s); TRE mean "
             f"{min(tre_mean):.2f}–{max(tre_mean):.2f} mm, worst max {max(r['tre_max_mm'] for r in results):.2f} mm; "
             f"recurrence Dice {min(dice):.3f}–{max(dice):.3f}.")
    return f"""
## Cohort spread (default engine, `--cohort {args.cohort} --cohort-seed {args.cohort_seed}`)
Demo-style cohort at the same size: arms and recurrence cases (inside / peripheral / outside) cycling,
every third relapse image an MR; one fresh subprocess per patient.
{stats}
Patients meeting each bar: {met}.

{chr(10).join(lines)}
"""


def render(results: list[dict], info: dict, args: argparse.Namespace, skipped: list[str]) -> str:
    loads = ", ".join(f"{r['engine']}/{r['seed']}: {r['load_1min_before']:.1f}" for r in results)
    cmd = "python benchmarks/registration_benchmark.py " + " ".join(
        ["--seeds", *map(str, args.seeds), "--engines", *args.engines, "--threads", str(args.threads)]
        + (["--cohort", str(args.cohort), "--cohort-seed", str(args.cohort_seed)] if args.cohort else []))
    return f"""# Registration benchmark

Raw DICOM -> mapped structures (`rtmap_assets.pipeline.imaging_patient.run_imaging`) on clinical-size
synthetic pairs: {args.shape[0]}x{args.shape[1]}x{args.shape[2]} at {args.spacing[0]:.3g}x{args.spacing[1]:.3g}x{args.spacing[2]:.3g} mm,
CT relapse, ~13 mm mean displacement (rotation of a few degrees + translation + smooth Gaussian-bump warp).
Each engine runs in a fresh subprocess; peak RSS = max(VmHWM of the process, polled (50 ms) RSS sum of the process and its children).
Steps: read = DICOM series/RTSTRUCT/RTDOSE reading; grid = working grids (2 mm, body box) + planning
rasterisation + dose resampling + relapse rasterisation; registration = landmark start ->
translation -> rigid -> B-spline 30 mm (MI); mapping = relapse masks -> planning + registered image.
QC+write = Jacobian, structure overlaps, NIfTI writes. TRE (200 planning points >= 10 mm inside both body outlines /
fields of view) and truth Dice come afterwards from the stored outputs (`rtmap_synth.evaluation`), not timed.

Command: `{cmd}`{' (skipped, not installed: ' + ', '.join(skipped) + ')' if skipped else ''}

## Machine
- nproc {info['nproc']}, CPU {info['cpu']}, RAM {info['ram']}, {info['os']}
- {info['versions']}
- load average before: {info['load_before']}; after: {info['load_after']}; 1-min load before each run: {loads}
- The machine is shared with other sessions: timings are pessimistic when the load exceeds the core count.

## Summary
{summary(results) if results else 'no results'}

## Runs
{table(results) if results else 'no results'}
"""


if __name__ == "__main__":
    main()
