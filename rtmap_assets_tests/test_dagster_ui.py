"""The real web UI: start dagster-webserver on a free loopback port, open the asset graph in
headless Chromium and find the asset names in the rendered page."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="Debian chromium not installed")
def test_asset_graph_in_chromium(tmp_path):
    assert CHROMIUM, "CI must install chromium (scripts/test.sh does)"
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "RTMAP_DATA_DIR": str(tmp_path / "data")}
    (tmp_path / "home").mkdir()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-webserver")), "-h", "127.0.0.1", "-p", str(port),
         "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, "dagster-webserver exited"
                assert time.time() < deadline, "dagster-webserver did not come up"
                time.sleep(1)
        groups = {"bronze": ["dicom_files", "dicom_rejects", "patient_manifest", "manifest_issues"],
                  "patient_silver": ["registration_qc", "mapped_structures", "imaging_issues"],
                  "patient_gold": ["recurrence_classification", "dose_statistics", "patient_overlay",
                                   "patient_viewer", "patient_seed_csv", "dosimetry_issues"],
                  "cohort": ["cohort_uncertainty", "cohort_dashboard", "patient_summary"],
                  "maintenance": ["lake_maintenance"]}
        for group, names in groups.items():
            for _attempt in range(2):  # an empty dump is Chromium failing to start (seen under load), not the page
                dom = subprocess.run(
                    [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=30000",
                     "--window-size=1600,5000",  # the graph renders only nodes in view: tall enough for 6
                     "--dump-dom", f"http://127.0.0.1:{port}/locations/rtmap_assets/asset-groups/{group}"],
                    capture_output=True, text=True, timeout=180).stdout
                if dom.strip():
                    break
            for name in names:
                assert name in dom, f"{name} not on the {group} asset graph"
    finally:
        server.terminate()
        server.wait(timeout=30)
