"""Scale-out profile: per-patient steps run on Celery workers (dagster-celery), redis-server as broker.

One Dagster run per patient partition, as today; the Celery executor sends each step of the run to
the `dagster` queue and any worker on any machine picks it up. Workers need the same code, the same
DagsterInstance (DAGSTER_HOME; Postgres storage once workers are on other machines) and the same
lake root (a shared folder, or `s3://` through DeltaStore, whose per-patient commits from several
workers land side by side).

Settings come from the environment so one image serves every machine:
  RTMAP_CELERY_BROKER   broker URL, default redis://127.0.0.1:6379/0
  RTMAP_CELERY_BACKEND  result backend, default the broker's server, database 1

Wiring (the lead's `Definitions`): `Definitions(..., executor=celery_executor_def())` when
RTMAP_EXECUTOR=celery, or per job `define_asset_job(..., executor_def=celery_executor_def())`.
Workers: `dagster-celery worker start -A dagster_celery.app -y <worker yaml>` with the YAML from
`write_worker_config`, e.g. `worker_command(...)` below, one per core to give.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml
from dagster import ExecutorDefinition
from dagster_celery import celery_executor
from dagster_celery.defaults import broker_transport_options

BROKER_ENV = "RTMAP_CELERY_BROKER"
BACKEND_ENV = "RTMAP_CELERY_BACKEND"
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
QUEUE = "dagster"  # dagster-celery's queue; a step tag `dagster-celery/queue` may route elsewhere


def broker_url() -> str:
    return os.environ.get(BROKER_ENV, DEFAULT_BROKER)


def backend_url(broker: str | None = None) -> str:
    """Result backend: RTMAP_CELERY_BACKEND, else the broker's redis server with database 1.

    Not dagster-celery's default `rpc://`, which sends results back over AMQP only (RabbitMQ)."""
    if os.environ.get(BACKEND_ENV):
        return os.environ[BACKEND_ENV]
    broker = broker or broker_url()
    base, _, _db = broker.rpartition("/")
    return f"{base}/1" if broker.startswith("redis") and _db.isdigit() else broker


def celery_config(broker: str | None = None, backend: str | None = None) -> dict[str, Any]:
    """The `celery` executor's config block, shared by the run and its workers (must agree)."""
    broker = broker or broker_url()
    return {
        "broker": broker,
        "backend": backend or backend_url(broker),
        "config_source": {
            # A worker holds one step at a time and acknowledges it only when done: an idle worker
            # takes the next patient's step, and a worker that dies has its step redelivered
            # (the per-patient writes are replacements, so a re-run is harmless).
            "task_acks_late": True,
            "worker_prefetch_multiplier": 1,
            # Registration of one patient takes minutes; Redis must not hand the step to a second
            # worker before it is done (visibility timeout, default 1 h) — 6 h covers a slow case.
            "broker_transport_options": {**broker_transport_options, "visibility_timeout": 6 * 3600},
        },
    }


def celery_run_config(broker: str | None = None, backend: str | None = None) -> dict[str, Any]:
    """Run config that selects the Celery executor for one run (`execute_job(run_config=...)`,
    the launchpad, or a schedule's RunRequest)."""
    return {"execution": {"config": celery_config(broker, backend)}}


def celery_executor_def(broker: str | None = None, backend: str | None = None) -> ExecutorDefinition:
    """dagster-celery's executor, configured from the environment (runs need no run config)."""
    return celery_executor.configured(celery_config(broker, backend), name="celery")


def write_worker_config(path: str | Path, broker: str | None = None, backend: str | None = None) -> Path:
    """YAML for `dagster-celery worker start -y`: the same block the runs use."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"execution": {"config": celery_config(broker, backend)}}))
    return path


def worker_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a worker: `dagster-celery worker start` runs `celery` from PATH, so this
    Python's bin folder (the venv's) comes first."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), env.get("PATH")]))
    return env


def worker_command(config_yaml: str | Path, name: str, *, concurrency: int = 1,
                   loglevel: str = "INFO") -> list[str]:
    """argv of one worker (foreground; a process manager or the test keeps it running).

    `concurrency` processes per worker; 1 per patient registration (it already uses the cores its
    thread setting gives it)."""
    exe = Path(sys.executable).with_name("dagster-celery")
    return [str(exe), "worker", "start", "-A", "dagster_celery.app", "-y", str(config_yaml),
            "-n", name, "-q", QUEUE, "-l", loglevel, "--", f"--concurrency={concurrency}"]
