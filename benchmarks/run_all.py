"""rtmap benchmarks, one command, side by side (issue 13 point 4).

    .venv/bin/python benchmarks/run_all.py                      # everything (about an hour on 2 idle cores)
    .venv/bin/python benchmarks/run_all.py --smoke              # every part, toy sizes (part b: 5 s idle)
    .venv/bin/python benchmarks/run_all.py --parts b c --smoke  # pick parts

Parts
  a  whole per-patient pipeline at clinical size (512x512x150): rtmap `run_imaging` + `run_dosimetry` per
     engine (sitk / elastix / skrt) and the research workflow's own path (scikit-rt `Patient` from the
     DICOM + elastix CLI, `benchmarks/seed_path.py`), alternating in one loop, each in a fresh
     subprocess (peak RSS = VmHWM and polled RSS of the process tree); ratio seed / rtmap per patient.
  b  the catalog in files/s on >= 5,000 files against plain pydicom `dcmread(stop_before_pixels=True,
     specific_tags=<the catalog's tags>)`, alternating passes.
  c  cohort SQL and the dbt build at 100 / 1,000 / 10,000 patients (lake rows replicated through the
     Lake API from a real `rtmap demo` run; `benchmarks/cohort_sql.py`).
  d  incremental refresh through Dagster on a 50-patient lake: one patient added, and nothing changed
     (`benchmarks/refresh_bench.py`).
  e  patients per hour through Dagster on 2 cores (small from part d's full run; clinical with
     --e-clinical N).

Every measurement records the 1-min load average before and after it (the machine is shared). The
JSON (machine, command, load, every figure) goes to benchmarks/out/run_all-<UTC time>.json, rewritten
after each part so a long run that is stopped keeps what finished; `--results-md` appends a Markdown
section (tables, command, load) to benchmarks/RESULTS.md; `--render JSON` re-renders a saved run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from bench_common import load1, machine, run_child_json  # noqa: E402

PARTS = ("a", "b", "c", "d", "e")
CLINICAL = ((512, 512, 150), (0.9765625, 0.9765625, 2.0))
SMALL = ((128, 128, 48), (2.0, 2.0, 3.0))


def log(msg: str) -> None:
    print(f"[{datetime.now(timezone.utc).strftime('%H:%M:%S')} load {load1():.1f}] {msg}", file=sys.stderr,
          flush=True)


# ------------------------------------------------------------------------------------------- part a
def part_a(work: Path, seeds: list[int], size: str, engines: list[str], with_seed: bool, threads: int,
           checkpoint=lambda partial: None) -> dict:
    from registration_benchmark import engine_available, prepare

    shape, spacing = CLINICAL if size == "clinical" else SMALL
    paths = [f"rtmap:{e}" for e in engines if engine_available(e)]
    skipped = [e for e in engines if not engine_available(e)]
    if with_seed:
        if shutil.which("elastix") and engine_available("skrt"):
            paths.append("seed")
        else:
            skipped.append("seed (needs scikit-rt and the elastix CLI)")
    rows: list[dict] = []

    def result() -> dict:
        return {"size": size, "shape": shape, "spacing_mm": spacing, "paths": paths, "skipped": skipped,
                "threads": threads, "seeds_planned": seeds, "rows": rows, "summary": summarise_a(rows)}

    for k, seed in enumerate(seeds):
        t = time.perf_counter()
        patient = prepare(seed, work, shape, spacing)
        log(f"a: seed {seed} prepared ({size}) in {time.perf_counter() - t:.0f} s")
        order = paths[k % len(paths):] + paths[: k % len(paths)]  # rotate: no path always runs first
        for p in order:
            if p == "seed":
                export = next((patient / "raw").glob("*/*"))
                seedwork = patient / "seedwork"
                shutil.rmtree(seedwork, ignore_errors=True)
                cmd = [sys.executable, str(HERE / "seed_path.py"), "--export", str(export), "--workdir", str(seedwork),
                       "--truth", str(patient / "truth.json")]
            else:
                cmd = [sys.executable, str(HERE / "pipeline_path.py"), "--patient-dir", str(patient), "--engine",
                       p.split(":")[1], "--threads", str(threads)]
            r = run_child_json(cmd)
            if p != "seed" and "error" not in r:  # truth metrics in a second, untimed process
                ev = run_child_json(cmd + ["--evaluate"])
                r.update({k: v for k, v in ev.items() if k not in ("process_wall_s", "peak_rss_mb", "load_before",
                                                                   "load_after", "self_hwm_mb")})
            r.update(seed=seed, path_name=p)
            rows.append(r)
            log(f"a: seed {seed} {p}: process {r['process_wall_s']:.1f} s, steps {r.get('steps_s', 0) or 0:.1f} s, "
                f"peak {r['peak_rss_mb']:.0f} MB{' ERROR ' + r['error'][:300] if 'error' in r else ''}")
            checkpoint(result())  # a stopped run keeps every finished measurement
        shutil.rmtree(patient, ignore_errors=True)
    return result()


def summarise_a(rows: list[dict]) -> dict:
    by: dict[str, list[dict]] = {}
    for r in rows:
        if "error" not in r:
            by.setdefault(r["path_name"], []).append(r)
    out: dict = {"per_path": {}}
    for p, rs in by.items():
        out["per_path"][p] = {
            "runs": len(rs), "median_process_s": statistics.median(r["process_wall_s"] for r in rs),
            "median_steps_s": statistics.median(r["steps_s"] for r in rs),
            "max_peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "loads": [r["load_before"] for r in rs], "complete": all(r.get("complete") for r in rs)}
    seed_rows = {r["seed"]: r for r in by.get("seed", [])}
    ratios: dict[str, dict] = {}
    for p, rs in by.items():
        if p == "seed":
            continue
        paired = [(seed_rows[r["seed"]], r) for r in rs if r["seed"] in seed_rows]
        if paired:
            proc = [s["process_wall_s"] / r["process_wall_s"] for s, r in paired]
            steps = [s["steps_s"] / r["steps_s"] for s, r in paired]
            mem = [s["peak_rss_mb"] / r["peak_rss_mb"] for s, r in paired]
            # the seed path without its classification and figure steps (what it measured before they were added)
            short = [(s["process_wall_s"] - (s.get("classify_s") or 0.0) - (s.get("figure_s") or 0.0))
                     / r["process_wall_s"] for s, r in paired]
            ratios[p] = {"pairs": len(paired), "median_process_ratio": statistics.median(proc),
                         "median_process_ratio_to_mapped_centroid": statistics.median(short),
                         "range_process_ratio_to_mapped_centroid": [min(short), max(short)],
                         "range_process_ratio": [min(proc), max(proc)], "median_steps_ratio": statistics.median(steps),
                         "median_memory_ratio": statistics.median(mem)}
    out["seed_over_rtmap"] = ratios
    return out


# ------------------------------------------------------------------------------------------- part b
def part_b(work: Path, n_files: int, repeat: int) -> dict:
    import pydicom

    from catalog_benchmark import make_folder
    from rtmap_assets.dicom import catalog as cat

    t = time.perf_counter()
    trial = make_folder(work, n_files)
    paths = sorted(p for p in trial.rglob("*") if p.is_file())
    log(f"b: generated {len(paths)} files in {time.perf_counter() - t:.0f} s")
    for p in paths:  # warm the page cache: the figures measure parsing, not the disk
        p.read_bytes()
    tags = list(cat._TAGS)  # the very tags the catalog keeps: the same facts from pydicom

    def baseline():
        for p in paths:
            try:
                pydicom.dcmread(p, stop_before_pixels=True, specific_tags=tags)
            except Exception:  # noqa: BLE001 - count a reject as work done, as the catalog does
                pass

    def baseline_pool(workers: int):
        from concurrent.futures import ProcessPoolExecutor

        chunks = [paths[i::workers] for i in range(workers)]
        with ProcessPoolExecutor(workers) as ex:
            list(ex.map(_read_chunk, chunks, [tags] * workers))

    cold = cat.catalog_folder(trial, workers=1)
    contenders = {
        "rtmap catalog, 1 process": lambda: cat.catalog_folder(trial, workers=1),
        "pydicom dcmread(stop_before_pixels, specific_tags), 1 process": baseline,
        "rtmap catalog, 2 workers": lambda: cat.catalog_folder(trial, workers=2),
        "pydicom dcmread(stop_before_pixels, specific_tags), 2 processes": lambda: baseline_pool(2),
        "rtmap catalog, incremental (nothing changed)": lambda: cat.catalog_folder(trial, cold.files, cold.rejects),
    }
    runs: dict[str, list[dict]] = {k: [] for k in contenders}
    for _ in range(repeat):  # alternate: every contender once per round
        for name, fn in contenders.items():
            before = load1()
            t = time.perf_counter()
            fn()
            runs[name].append({"seconds": time.perf_counter() - t, "load_before": before, "load_after": load1()})
    rows = []
    for name, rs in runs.items():
        med = statistics.median(r["seconds"] for r in rs)
        rows.append({"contender": name, "median_s": med, "files_per_s": len(paths) / med, "runs": rs})
        log(f"b: {name}: {len(paths) / med:.0f} files/s")
    return {"files": len(paths), "rows_catalogued": cold.files.height, "rejects": cold.rejects.height,
            "size_mb": round(sum(p.stat().st_size for p in paths) / 1e6, 1), "repeat": repeat, "rows": rows}


def _read_chunk(chunk, tags):
    import pydicom

    for p in chunk:
        try:
            pydicom.dcmread(p, stop_before_pixels=True, specific_tags=tags)
        except Exception:  # noqa: BLE001
            pass
    return len(chunk)


# ------------------------------------------------------------------------------------------- parts d/e
def part_d(work: Path, patients: int, unchanged: int, size: str = "small", refresh: bool = True) -> dict:
    cmd = [sys.executable, str(HERE / "refresh_bench.py"), "--workdir", str(work), "--patients", str(patients),
           "--size", size, "--unchanged", str(unchanged)] + ([] if refresh else ["--no-refresh"])
    r = run_child_json(cmd, timeout_s=4 * 3600)
    shutil.rmtree(work, ignore_errors=True)
    return r


def part_e(d: dict | None, clinical: dict | None) -> dict:
    out = {}
    for label, r in (("small", d), ("clinical", clinical)):
        if r and "full_run" in r:
            f = r["full_run"]
            out[label] = {"patients": r["patients"], "full_run_s": f["seconds"],
                          "patients_per_hour": f["patients_per_hour"],
                          "patients_per_hour_patient_jobs_only": f["patients_per_hour_patient_jobs_only"],
                          "median_patient_job_s": statistics.median(f["patient_job_s"]),
                          "cohort_job_s": f["cohort_s"], "cohort_ok": f["cohort_ok"],
                          "load_before": f["load_before"], "load_after": f["load_after"]}
    return out


# ------------------------------------------------------------------------------------------- report
def _f(v, nd=1) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def render(res: dict) -> str:
    m = res["machine"]
    lines = [f"## Benchmark suite, {res['started_utc'][:16].replace('T', ' ')} UTC (`benchmarks/run_all.py`)", "",
             f"Command: `{res['command']}`", "",
             f"Machine: nproc {m['nproc']}, {m['cpu']}, RAM {m['ram']}, {m['os']}; {m['versions']}.",
             f"Load average (1/5/15 min) at start {' '.join(map(str, m['loadavg_start']))}, at end "
             f"{' '.join(map(str, res.get('loadavg_end', [])))}. The machine is shared with other sessions: "
             "every figure has the 1-min load before (→ after) it; with load above 2 a figure is pessimistic.", ""]
    parts = res["parts"]
    if "a" in parts:
        a = parts["a"]
        lines += [f"### (a) Whole per-patient pipeline, {a['size']} ({'x'.join(map(str, a['shape']))}), one fresh "
                  "process per path, paths alternating", "",
                  "| patient | path | process wall s | in-process steps s | peak RSS MB | TRE mean / max mm | "
                  "recurrence centroid error mm | high-level centroid class (truth) | complete | load before → after |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in a["rows"]:
            if "error" in r:
                lines.append(f"| {r['seed']} | {r['path_name']} | {_f(r['process_wall_s'])} | ERROR | "
                             f"{_f(r['peak_rss_mb'], 0)} | | | | no | {r['load_before']} → {r['load_after']} |")
                continue
            tre = f"{_f(r.get('tre_mean_mm'), 2)} / {_f(r.get('tre_max_mm'), 2)}" if r["path"] == "rtmap" else "–"
            cls = (f"{r['high_centroid_class']} ({r['truth_high_centroid_class']})"
                   if r.get("high_centroid_class") is not None and r.get("truth_high_centroid_class") is not None else "–")
            lines.append(f"| {r['seed']} | {r['path_name']} | {_f(r['process_wall_s'])} | {_f(r['steps_s'])} | "
                         f"{_f(r['peak_rss_mb'], 0)} | {tre} | {_f(r.get('recurrence_centroid_error_mm'), 2)} | {cls} | "
                         f"{'yes' if r.get('complete') else 'no'} | "
                         f"{r['load_before']} → {r['load_after']} |")
        s = a["summary"]
        lines += ["", "| path | runs | median process s | median steps s | max peak RSS MB | seed/rtmap time "
                  "(median, range) | seed/rtmap memory |", "|---|---|---|---|---|---|---|"]
        for p, v in s["per_path"].items():
            ratio = s["seed_over_rtmap"].get(p)
            rt = (f"{ratio['median_process_ratio']:.2f}× ({ratio['range_process_ratio'][0]:.2f}–"
                  f"{ratio['range_process_ratio'][1]:.2f}); steps {ratio['median_steps_ratio']:.2f}×" + (
                      f"; seed path up to the mapped centroid's dose only: "
                      f"{ratio['median_process_ratio_to_mapped_centroid']:.2f}× "
                      f"({ratio['range_process_ratio_to_mapped_centroid'][0]:.2f}–"
                      f"{ratio['range_process_ratio_to_mapped_centroid'][1]:.2f})"
                      if "median_process_ratio_to_mapped_centroid" in ratio else "")) if ratio else "–"
            lines.append(f"| {p} | {v['runs']} | {_f(v['median_process_s'])} | {_f(v['median_steps_s'])} | "
                         f"{_f(v['max_peak_rss_mb'], 0)} | {rt} | "
                         f"{_f(ratio['median_memory_ratio'], 2) + '×' if ratio else '–'} |")
        notes = sorted({n for r in a["rows"] if r.get("path") == "seed" for n in r.get("notes", [])})
        if notes:
            lines += ["", "Seed path, what did not run: " + " / ".join(n[:400] for n in notes)]
        if a["skipped"]:
            lines += ["", f"Skipped (not installed): {', '.join(a['skipped'])}."]
        lines.append("")
    if "b" in parts:
        b = parts["b"]
        lines += [f"### (b) Catalog: {b['files']} files ({b['size_mb']} MB, page cache warm), median of "
                  f"{b['repeat']} alternating rounds", "", "| contender | median s | files/s | load before → after |",
                  "|---|---|---|---|"]
        for r in b["rows"]:
            lb = ", ".join(f"{x['load_before']}→{x['load_after']}" for x in r["runs"])
            lines.append(f"| {r['contender']} | {_f(r['median_s'], 2)} | {r['files_per_s']:.0f} | {lb} |")
        lines.append("")
    if "c" in parts:
        c = parts["c"]
        lines += [f"### (c) Cohort SQL and dbt build (storage: {c['storage_layout']}; rows replicated from a "
                  f"{c['base_patients']}-patient lake ({c.get('base_lake', 'rtmap demo')}) through the Lake API)", ""]
        names = [q["query"] for q in c["sizes"][0]["queries"]] if c["sizes"] and c["sizes"][0]["queries"] else []
        head = "| patients | lake files | lake MB | dbt parse s | dbt build s | dbt peak MB | " + " | ".join(
            f"Q{i + 1} s" for i in range(len(names))) + " | load before → after |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for sz in c["sizes"]:
            qs = " | ".join((_f(q["median_s"], 3) if not q["error"] else "ERR") for q in sz["queries"])
            d = sz["dbt_build"]
            lines.append(f"| {sz['patients']} | {sz['lake']['files']} | {sz['lake']['size_mb']} | {_f(d.get('parse_s'))} | "
                         f"{_f(d['seconds'])}{'' if d['ok'] else ' (FAILED)'} | {_f(d['peak_rss_mb'], 0)} | "
                         f"{qs}{' | ' if qs else ''}{d['load_before']} → {d['load_after']} |")
        lines += [""] + [f"Q{i + 1}: {n}" + ("" if i == len(names) - 1 else ";") for i, n in enumerate(names)]
        lines += ["", "Query times: median of fresh connections (DuckDB file read-only, or an in-memory connection "
                  "for direct-lake queries). dbt build: as the warehouse asset runs it, with dbt's partial-parse "
                  "cache of the unchanged project; `dbt parse` (paid once per project or vars change) apart."]
        notes = [n for n in c.get("notes", [])]
        if notes:
            lines += [""] + [f"- {n}" for n in notes]
        lines.append("")
    if "d" in parts and "full_run" in parts["d"]:
        d = parts["d"]
        f, n, o = d["full_run"], d.get("refresh_nothing_changed"), d.get("refresh_one_added")
        lines += [f"### (d) Incremental refresh through Dagster, {d['patients']} {d['size']} patients", "",
                  "| step | wall s | partitions recomputed | load before → after |", "|---|---|---|---|",
                  f"| load the definitions | {_f(d['load_definitions_s'])} | | |",
                  f"| full run (bronze, {d['patients']} patient_jobs, cohort_job{'' if f['cohort_ok'] else ' FAILED'}) | "
                  f"{_f(f['seconds'])} | {f['patients_ok']} | {f['load_before']} → {f['load_after']} |"]
        if o:
            lines.append(f"| one patient added: sensor → bronze → sensor → patient_job → cohort_job"
                         f"{'' if o['cohort_ok'] else ' (cohort FAILED)'} | {_f(o['seconds'])} "
                         f"({100 * o['fraction_of_full_run']:.0f} % of the full run) | {len(o['partitions_requested'])} "
                         f"requested; step materialisations recomputed {o['step_materialisations']['recomputed']}, "
                         f"reused {o['step_materialisations']['reused']} | {o['load_before']} → {o['load_after']} |")
        if n:
            per = n["patient_job_s_per_unchanged"]
            lines.append(f"| nothing changed: sensor tick | {_f(n['sensor_tick_s'], 3)} | {n['sensor_requests']} runs "
                         f"requested | |")
            if "schedule_tick_s" in n:
                lines.append(f"| nothing changed: nightly_refresh schedule tick ({n['patients_checked']} patients "
                             f"checked) | {_f(n['schedule_tick_s'], 3)} ({1000 * n['schedule_tick_s'] / max(1, n['patients_checked']):.1f} ms "
                             f"per patient) | {n['schedule_requests']} runs requested | |")
            lines.append(f"| nothing changed: patient_job forced on {n['unchanged_partitions_run']} unchanged partitions "
                         f"(a backfill) | median {_f(statistics.median(per))} per patient (range {_f(min(per))}–"
                         f"{_f(max(per))}) | recomputed {n['step_materialisations']['recomputed']}, reused "
                         f"{n['step_materialisations']['reused']} | {n['load_before']} → {n['load_after']} |")
            lines.append(f"| nothing changed: cohort_job{'' if n['cohort_ok'] else ' (FAILED)'} | "
                         f"{_f(n['cohort_job_s'])} | | |")
        lines += ["", f"Peak RSS of the whole Dagster process: {_f(d['peak_rss_mb'], 0)} MB.", ""]
    if "e" in parts and parts["e"]:
        lines += ["### (e) Patients per hour through Dagster (2 cores, in-process runs one after the other)", "",
                  "| size | patients | full run s | patients/hour (whole run) | patients/hour (patient_jobs only) | "
                  "median patient_job s | cohort_job s | load before → after |", "|---|---|---|---|---|---|---|---|"]
        for label, e in parts["e"].items():
            if not isinstance(e, dict):  # e.g. "reused_from"
                continue
            lines.append(f"| {label} | {e['patients']} | {_f(e['full_run_s'])} | {e['patients_per_hour']:.0f} | "
                         f"{e['patients_per_hour_patient_jobs_only']:.0f} | {_f(e['median_patient_job_s'])} | "
                         f"{_f(e['cohort_job_s'])}{'' if e['cohort_ok'] else ' (FAILED)'} | "
                         f"{e['load_before']} → {e['load_after']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--smoke", action="store_true", help="toy sizes everywhere (part b ~5 s on idle cores; a and c start a pipeline run, 1-4 min under load)")
    ap.add_argument("--a-seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--a-size", choices=["clinical", "small"], default="clinical")
    ap.add_argument("--a-engines", nargs="+", default=["sitk", "elastix", "skrt"])
    ap.add_argument("--a-no-seed-path", action="store_true", help="leave out the research workflow's path")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--b-files", type=int, default=5000)
    ap.add_argument("--b-repeat", type=int, default=3)
    ap.add_argument("--c-sizes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--c-base-patients", type=int, default=3)
    ap.add_argument("--c-repeat", type=int, default=3)
    ap.add_argument("--c-base-lake", type=Path, default=None,
                    help="replicate from this existing lake (e.g. part d's) instead of a fresh `rtmap demo` run")
    ap.add_argument("--d-patients", type=int, default=50)
    ap.add_argument("--d-unchanged", type=int, default=10)
    ap.add_argument("--e-clinical", type=int, default=0, metavar="N", help="also N clinical patients through Dagster")
    ap.add_argument("--reuse", nargs=2, action="append", default=[], metavar=("PART", "JSON"),
                    help="take a part's result from an earlier JSON (a run_all JSON or a part's own) instead of running it")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed afterwards")
    ap.add_argument("--json", type=Path, default=None, help="default: benchmarks/out/run_all-<UTC time>.json")
    ap.add_argument("--results-md", type=Path, default=None, help="append the Markdown section to this file")
    ap.add_argument("--render", type=Path, default=None, help="only render a saved JSON as Markdown")
    args = ap.parse_args(argv)

    if args.render:
        res = json.loads(args.render.read_text())
        md = render(res)
        if args.results_md:
            with open(args.results_md, "a") as fh:
                fh.write("\n" + md)
        print(md)
        return 0
    if args.smoke:
        args.a_seeds, args.a_size, args.a_engines, args.a_no_seed_path = [1], "small", ["sitk"], True
        args.b_files, args.b_repeat = 120, 1
        args.c_sizes, args.c_base_patients, args.c_repeat = [10, 30], 1, 1
        args.d_patients, args.d_unchanged = 2, 1

    started = datetime.now(timezone.utc)
    out_json = args.json or HERE / "out" / f"run_all-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    res: dict = {"started_utc": started.isoformat(), "command": "python benchmarks/run_all.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "machine": machine(), "parts": {}}
    reuse = {p: Path(f) for p, f in args.reuse}
    base = args.workdir or Path(tempfile.mkdtemp(prefix="rtmap_runall_"))

    def save():
        res["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
        out_json.write_text(json.dumps(res, indent=1, default=str))

    def checkpoint(part: str):
        def store(partial: dict) -> None:
            res["parts"][part] = {**partial, "partial": True}
            save()
        return store

    try:
        for part in args.parts:
            t = time.perf_counter()
            if part in reuse:
                old = json.loads(reuse[part].read_text())
                res["parts"][part] = old["parts"][part] if "parts" in old else old
                res["parts"][part]["reused_from"] = str(reuse[part])
                log(f"{part}: taken from {reuse[part]}")
            elif part == "a":
                res["parts"]["a"] = part_a(base / "a", args.a_seeds, args.a_size, args.a_engines,
                                           not args.a_no_seed_path, args.threads, checkpoint("a"))
            elif part == "b":
                res["parts"]["b"] = part_b(base / "b", args.b_files, args.b_repeat)
                shutil.rmtree(base / "b", ignore_errors=True)
            elif part == "c":
                from cohort_sql import run_part_c

                res["parts"]["c"] = run_part_c(base / "c", args.c_sizes, args.c_base_patients, args.c_repeat, log,
                                             base_lake=args.c_base_lake, checkpoint=checkpoint("c"))
                shutil.rmtree(base / "c", ignore_errors=True)
            elif part == "d":
                res["parts"]["d"] = part_d(base / "d", args.d_patients, args.d_unchanged)
            elif part == "e":
                clinical = part_d(base / "e", args.e_clinical, 0, "clinical", refresh=False) if args.e_clinical else None
                res["parts"]["e"] = part_e(res["parts"].get("d"), clinical)
            log(f"part {part} done in {time.perf_counter() - t:.0f} s")
            save()
    finally:
        if args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)
        save()
    md = render(res)
    if args.results_md:
        with open(args.results_md, "a") as fh:
            fh.write("\n" + md)
    print(md)
    print(f"JSON: {out_json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
