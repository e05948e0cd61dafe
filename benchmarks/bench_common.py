"""Shared pieces of the benchmark suite: load average, a child-process runner with peak memory, timers.

The peak-memory rule is the one of `registration_benchmark.run_child`: peak = max(the child's own
VmHWM, the polled (50 ms) RSS sum of the child and all its descendants — e.g. the elastix CLI under
scikit-rt). The load average is recorded before and after every measurement because the machine is
shared: a figure is only comparable with the load beside it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def measured(fn: Callable[[], object]) -> tuple[object, dict]:
    """Run fn once; return its value and {"seconds", "load_before", "load_after"}."""
    before = load1()
    t = time.perf_counter()
    value = fn()
    return value, {"seconds": time.perf_counter() - t, "load_before": before, "load_after": load1()}


def run_child_json(cmd: list[str], *, env: dict | None = None, timeout_s: float = 3600) -> dict:
    """Run `cmd` (a Python child printing one `RESULT {json}` line); add wall, peak RSS and load."""
    import psutil

    before = load1()
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
        peak = 0
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                total = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
                peak = max(peak, total)
            except psutil.Error:
                pass
            if time.perf_counter() - t > timeout_s:
                proc.kill()
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    wall = time.perf_counter() - t
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[len("RESULT "):])
            r["process_wall_s"] = wall
            r["peak_rss_mb"] = max(peak / 1024**2, r.get("self_hwm_mb") or 0.0)
            r["load_before"], r["load_after"] = before, load1()
            return r
    return {"error": f"exit {proc.returncode}: {stderr[-2000:]}", "process_wall_s": wall,
            "peak_rss_mb": peak / 1024**2, "load_before": before, "load_after": load1()}


def machine() -> dict:
    """Machine description + load at the start. Package versions from their metadata (importing itk or
    scikit-rt just to ask costs tens of seconds on a loaded machine)."""
    import platform
    from importlib import metadata

    cpu, ram = "unknown", "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
        ram = f"{mem_kb / 1024**2:.1f} GiB"
    except (OSError, StopIteration):
        pass
    versions = {"python": platform.python_version()}
    for dist in ("SimpleITK", "itk-elastix", "scikit-rt", "pydicom", "polars", "duckdb", "dbt-core", "dbt-duckdb",
                 "dagster"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    versions["elastix CLI"] = elastix_cli_version()
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "ram": ram, "os": platform.platform(),
            "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
            "loadavg_start": [round(v, 2) for v in os.getloadavg()]}


def print_child_result(result: dict) -> None:
    """The one line a benchmark child prints for `run_child_json`, with its own memory high-water mark (VmHWM:
    reset by exec, unlike ru_maxrss)."""
    hwm_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmHWM"))
    print("RESULT " + json.dumps({**result, "self_hwm_mb": hwm_kb / 1024.0}, default=str))


def elastix_cli_version() -> str:
    """Version of the elastix command line the seed path uses ('not installed' without it)."""
    try:
        out = subprocess.run(["elastix", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    except FileNotFoundError:
        return "not installed"
    return out.split()[-1] if out else "unknown"


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def python() -> str:
    return sys.executable
