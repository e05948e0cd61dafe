"""Issue 10: `rtmap demo` exits non-zero when a patient failed, one console line per failure, tracebacks to a log."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rtmap_assets.cli import EXIT_PATIENT_FAILED
from rtmap_assets_tests.conftest import TRIAL, _generate
from rtmap_assets_tests.test_dagster_e2e import _break_patient

pytestmark = pytest.mark.slow


def _demo(data: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RTMAP_DATA_DIR": str(data), "DAGSTER_HOME": str(data / "dagster_home")}
    return subprocess.run([sys.executable, "-m", "rtmap_assets.cli", "demo", "--data-dir", str(data)],
                          env=env, capture_output=True, text=True, timeout=600)


def _log_file(out: str) -> Path:
    m = re.search(r"log file \(warnings, tracebacks\): (\S+)", out)
    assert m, out
    return Path(m.group(1))


def test_broken_patient_gives_exit_code_and_one_line(tmp_path):
    data = _generate(tmp_path / "data", 1, seed=5)
    _break_patient(data)  # a copy of SYN-001 without RTDOSE, as subject SYN-BROKEN
    run = _demo(data)
    out = run.stdout + run.stderr
    assert run.returncode == EXIT_PATIENT_FAILED, out
    lines = [l for l in run.stdout.splitlines() if "SYN-BROKEN: FAILED" in l]
    assert len(lines) == 1 and "[NO_RTDOSE]" in lines[0], out
    assert "SYN-001: ok" in run.stdout
    assert "Traceback" not in out
    assert "1 patient(s) failed: SYN-BROKEN (exit code 3)" in run.stdout
    log = _log_file(run.stdout)
    assert log.parent == data / "logs" and log.exists()
    assert "Per-patient summary" in run.stdout


def test_every_patient_failing_does_not_crash_the_summary(tmp_path):
    data = _generate(tmp_path / "data", 1, seed=5)
    _break_patient(data)
    raw = data / "raw" / TRIAL
    for d in raw.iterdir():
        if d.name != "SYN-BROKEN":
            shutil.rmtree(d)
    run = _demo(data)
    out = run.stdout + run.stderr
    assert run.returncode == EXIT_PATIENT_FAILED, out
    assert "Traceback" not in out and "does not exist" not in out
    assert "SYN-BROKEN: FAILED [NO_RTDOSE]" in run.stdout
    assert "per-patient runs (0)" in run.stdout
