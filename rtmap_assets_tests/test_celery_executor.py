"""The Celery deployment profile for real: redis-server on a free loopback port, two
`dagster-celery` workers, and two patient partitions of a small partitioned job
(rtmap_assets.deploy.smoke_job, not the imaging job: seconds instead of minutes) run through the
Celery executor against a real DagsterInstance; the steps write a Delta table side by side."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest

from rtmap_assets.deploy.celery_profile import (
    backend_url,
    celery_config,
    celery_run_config,
    worker_command,
    worker_env,
    write_worker_config,
)

REDIS = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """Stop a process we started in its own session, and its children (the celery pool)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def test_run_config_and_backend_follow_the_environment(monkeypatch):
    monkeypatch.setenv("RTMAP_CELERY_BROKER", "redis://10.0.0.5:6380/3")
    monkeypatch.delenv("RTMAP_CELERY_BACKEND", raising=False)
    cfg = celery_run_config()["execution"]["config"]
    assert cfg["broker"] == "redis://10.0.0.5:6380/3"
    assert cfg["backend"] == "redis://10.0.0.5:6380/1"
    assert cfg["config_source"]["task_acks_late"] is True
    assert cfg["config_source"]["broker_transport_options"]["visibility_timeout"] == 6 * 3600
    monkeypatch.setenv("RTMAP_CELERY_BACKEND", "redis://other:6379/2")
    assert backend_url() == "redis://other:6379/2"


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(REDIS is None, reason="needs Debian's redis-server (scripts/setup.sh RTMAP_SYSTEM_PACKAGES=1)")
def test_two_partitions_run_on_two_celery_workers(tmp_path, monkeypatch):
    import dagster as dg
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app

    from rtmap_assets.deploy.smoke_job import SMOKE_STEPS, smoke_job, smoke_run_config
    from rtmap_assets.lake.delta_store import DeltaStore

    port = _free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    repo_root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(repo_root), os.environ.get("PYTHONPATH")])))
    lake = tmp_path / "lake"
    worker_yaml = write_worker_config(tmp_path / "celery.yaml", broker=broker)

    # Create the instance's sqlite storage once, before two worker CLIs open it at the same moment
    # (concurrent first opens race on the schema migration).
    dg.DagsterInstance.get().dispose()

    procs: list[subprocess.Popen] = []
    logs = []
    try:
        procs.append(subprocess.Popen(
            [REDIS, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        for name in ("w1", "w2"):
            log = open(tmp_path / f"{name}.log", "w")
            logs.append(log)
            procs.append(subprocess.Popen(worker_command(worker_yaml, name), cwd=repo_root, env=worker_env(), stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))

        # Both workers answer a ping before any run starts.
        app = make_app(CeleryExecutor.for_cli(**{k: v for k, v in celery_config(broker).items()
                                                 if k != "config_source"}).app_args())
        deadline = time.time() + 240
        replies: list = []
        while time.time() < deadline:
            assert all(p.poll() is None for p in procs), (tmp_path / "w1.log").read_text()[-3000:]
            try:
                replies = app.control.ping(timeout=1.0)
            except Exception:  # broker not up yet
                replies = []
            if len(replies) >= 2:
                break
            time.sleep(1)
        assert len(replies) >= 2, f"workers did not come up: {replies}"
        workers = {next(iter(r)) for r in replies}
        assert workers == {f"w1@{socket.gethostname()}", f"w2@{socket.gethostname()}"}

        with dg.DagsterInstance.get() as instance:
            run_config = smoke_run_config(str(lake), celery_run_config(broker), step_seconds=2.0)
            used_workers: set[str] = set()
            for patient in ("SMOKE-01", "SMOKE-02"):
                result = dg.execute_job(dg.reconstructable(smoke_job), instance=instance,
                                        run_config=run_config, tags={"dagster/partition": patient})
                assert result.success, patient
                run = instance.get_run_by_id(result.run_id)
                assert run.tags["dagster/partition"] == patient
                for rec in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
                    meta = rec.dagster_event.engine_event_data.metadata
                    if "Celery worker" in meta:  # "Executing steps … in celery worker"
                        used_workers.add(meta["Celery worker"].value)
            # Each run's two steps overlapped (2 s each, one step per worker at a time): both workers ran steps.
            assert used_workers == workers, used_workers

        steps = DeltaStore(lake).read(SMOKE_STEPS).sort("patient_id", "step")
        assert steps.select("patient_id", "step").rows() == [
            ("SMOKE-01", "issues"), ("SMOKE-01", "metrics"), ("SMOKE-02", "issues"), ("SMOKE-02", "metrics")]
        assert os.getpid() not in steps.get_column("pid").to_list()  # ran in the workers, not here
        # The two steps of one patient ran at the same time on the two workers.
        for patient in ("SMOKE-01", "SMOKE-02"):
            both = steps.filter(pl.col("patient_id") == patient)
            assert both.get_column("pid").n_unique() == 2
            assert both.get_column("started_s").max() < both.get_column("ended_s").min()
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for log in logs:
            log.close()
