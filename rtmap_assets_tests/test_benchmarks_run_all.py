"""benchmarks/run_all.py: the smoke mode of the catalog part writes JSON of the documented shape and a
Markdown section with the load beside every figure; the seed/rtmap ratio is paired per patient."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import run_all  # noqa: E402


@pytest.mark.slow  # generates ~120 DICOM files and reads them 5 ways: ~5 s on 2 idle cores
def test_smoke_catalog_part_writes_json_and_markdown(tmp_path):
    out = tmp_path / "bench.json"
    md = tmp_path / "RESULTS.md"
    assert run_all.main(["--smoke", "--parts", "b", "--json", str(out), "--results-md", str(md)]) == 0

    res = json.loads(out.read_text())
    assert set(res) >= {"started_utc", "command", "machine", "parts", "loadavg_end"}
    assert res["machine"]["nproc"] and len(res["machine"]["loadavg_start"]) == 3
    b = res["parts"]["b"]
    assert b["files"] >= 100 and b["rows_catalogued"] + b["rejects"] == b["files"]
    contenders = [r["contender"] for r in b["rows"]]
    assert "rtmap catalog, 1 process" in contenders
    assert any(c.startswith("pydicom dcmread(stop_before_pixels, specific_tags)") for c in contenders)
    for r in b["rows"]:
        assert r["files_per_s"] > 0 and r["median_s"] > 0
        assert all({"seconds", "load_before", "load_after"} <= set(x) for x in r["runs"])
    text = md.read_text()
    assert "### (b) Catalog" in text and "files/s" in text and "Load average" in text


def test_seed_ratio_is_paired_per_patient():
    rows = [
        {"seed": 1, "path_name": "rtmap:sitk", "process_wall_s": 10.0, "steps_s": 8.0, "peak_rss_mb": 800.0,
         "load_before": 1.0, "complete": True},
        {"seed": 1, "path_name": "seed", "process_wall_s": 60.0, "steps_s": 50.0, "peak_rss_mb": 1600.0,
         "load_before": 1.0, "complete": False},
        {"seed": 2, "path_name": "rtmap:sitk", "process_wall_s": 20.0, "steps_s": 16.0, "peak_rss_mb": 800.0,
         "load_before": 3.0, "complete": True},
        {"seed": 2, "path_name": "seed", "process_wall_s": 60.0, "steps_s": 48.0, "peak_rss_mb": 1600.0,
         "load_before": 3.0, "complete": False},
        {"seed": 3, "path_name": "rtmap:sitk", "process_wall_s": 5.0, "error": "exit 1", "peak_rss_mb": 1.0,
         "load_before": 1.0},
    ]
    s = run_all.summarise_a(rows)
    r = s["seed_over_rtmap"]["rtmap:sitk"]
    assert r["pairs"] == 2  # the failed run of seed 3 has no pair and is left out
    assert r["median_process_ratio"] == pytest.approx(4.5)  # (6 + 3) / 2
    assert r["range_process_ratio"] == [pytest.approx(3.0), pytest.approx(6.0)]
    assert r["median_memory_ratio"] == pytest.approx(2.0)
    assert s["per_path"]["seed"]["complete"] is False
