"""Issue 10: one writer per data folder (a lock), and DuckDB readers that never block a refresh."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rtmap_assets.cli import EXIT_LOCKED
from rtmap_assets.housekeeping import LOCK_NAME, DataDirLock, DataDirLocked
from rtmap_assets_tests.conftest import _generate


def _env(data: Path) -> dict[str, str]:
    return {**os.environ, "RTMAP_DATA_DIR": str(data), "DAGSTER_HOME": str(data / "dagster_home")}


def test_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    with DataDirLock(tmp_path, "demo"):
        with pytest.raises(DataDirLocked, match=rf"in use by rtmap demo \(pid {os.getpid()} on "):
            with DataDirLock(tmp_path, "ui"):
                pass
    with DataDirLock(tmp_path, "ui"):  # released on exit
        pass


def test_two_concurrent_cli_runs_second_refuses_then_lock_dies_with_its_holder(tmp_path):
    data = tmp_path / "data"
    (data / "raw" / "SYNTH-HN").mkdir(parents=True)  # an empty cohort: demo would generate one
    first = subprocess.Popen([sys.executable, "-m", "rtmap_assets.cli", "demo", "--data-dir", str(data),
                              "--patients", "1"], env=_env(data), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (data / LOCK_NAME).exists() or not (data / LOCK_NAME).read_text():
            assert time.monotonic() < deadline and first.poll() is None, "first demo never took the lock"
            time.sleep(0.2)
        second = subprocess.run([sys.executable, "-m", "rtmap_assets.cli", "demo", "--data-dir", str(data)],
                                env=_env(data), capture_output=True, text=True, timeout=120)
        assert second.returncode == EXIT_LOCKED, second.stdout + second.stderr
        assert f"is in use by rtmap demo (pid {first.pid} on" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with DataDirLock(data, "demo"):  # SIGKILL released it: no stale lock to clean by hand
        pass


_READER = textwrap.dedent("""
    import sys, duckdb
    con = duckdb.connect(sys.argv[1], read_only=True)
    q = "select open_issues from patient_summary where patient_id = 'SYN-001'"
    print(con.execute(q).fetchone()[0], flush=True)
    sys.stdin.readline()          # the cohort build runs now, with this connection open
    print(con.execute(q).fetchone()[0], flush=True)
""")


@pytest.fixture(scope="module")
def patient_lake(tmp_path_factory) -> Path:
    """A data dir whose lake holds one patient's results, and no cohort build ever (no rtmap.duckdb)."""
    import dagster as dg

    data = _generate(tmp_path_factory.mktemp("lake1") / "data", 1, seed=5)
    old = os.environ.get("RTMAP_DATA_DIR")
    os.environ["RTMAP_DATA_DIR"] = str(data)
    try:
        from rtmap_assets.definitions import defs as load_defs

        defs = load_defs()
        instance = dg.DagsterInstance.ephemeral()
        assert defs.resolve_job_def("bronze_job").execute_in_process(instance=instance).success
        instance.add_dynamic_partitions("patients", ["SYN-001"])
        assert defs.resolve_job_def("patient_job").execute_in_process(instance=instance,
                                                                      partition_key="SYN-001").success
    finally:
        os.environ.pop("RTMAP_DATA_DIR") if old is None else os.environ.__setitem__("RTMAP_DATA_DIR", old)
    return data


@pytest.fixture
def lake_copy(patient_lake, tmp_path, monkeypatch) -> Path:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(patient_lake, data)
    monkeypatch.setenv("RTMAP_DATA_DIR", str(data))
    return data


@pytest.mark.slow
def test_partial_dbt_selection_builds_its_staging_parents(lake_copy):
    """What the cohort automation does in UI mode: a subset of the dbt models, on a DuckDB never built."""
    import dagster as dg
    import duckdb

    from rtmap_assets.definitions import defs as load_defs

    assert not (lake_copy / "rtmap.duckdb").exists()
    result = load_defs().resolve_job_def("cohort_job").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
        asset_selection=[dg.AssetKey("trial_covariates"), dg.AssetKey(["warehouse", "patient_summary"])])
    assert result.success  # before: Catalog Error: Table with name stg_pipeline_issues does not exist
    mats = {e.asset_key for e in result.get_asset_materialization_events()}
    assert dg.AssetKey(["warehouse", "patient_summary"]) in mats
    assert dg.AssetKey(["warehouse", "classification_by_arm"]) not in mats  # still a partial build
    with duckdb.connect(str(lake_copy / "rtmap.duckdb"), read_only=True) as con:
        assert con.execute("select patient_id, open_issues from patient_summary").fetchall() == [("SYN-001", 0)]
        views = {r[0] for r in con.execute("select view_name from duckdb_views() where not internal").fetchall()}
    assert "stg_pipeline_issues" in views


@pytest.mark.slow
def test_duckdb_reader_open_during_cohort_build(lake_copy):
    import dagster as dg
    import duckdb

    from rtmap_assets.definitions import defs as load_defs
    from rtmap_assets.lake import Lake
    from rtmap_assets.pipeline.issues import record_issues

    data = lake_copy
    defs = load_defs()
    instance = dg.DagsterInstance.ephemeral()
    assert defs.resolve_job_def("cohort_job").execute_in_process(instance=instance).success
    duck = data / "rtmap.duckdb"

    reader = subprocess.Popen([sys.executable, "-c", _READER, str(duck)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "0"
        record_issues(Lake(data / "lake"), "SYN-001", "review", [{"code": "TEST_ISSUE", "message": "m"}])
        rebuilt = defs.resolve_job_def("cohort_job").execute_in_process(instance=instance, raise_on_error=False)
        assert rebuilt.success  # before: "Could not set lock on file" while the reader held it
        reader.stdin.write("\n")
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == "0"  # the reader's snapshot is the old one
    finally:
        reader.kill()
        reader.wait()
    with duckdb.connect(str(duck), read_only=True) as con:
        assert con.execute("select open_issues from patient_summary where patient_id = 'SYN-001'").fetchone()[0] == 1
    assert not list(data.glob(".rtmap.duckdb.building*"))
