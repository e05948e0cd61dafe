"""Unattended operation of a local rtmap instance: dead runs, pool slots, long waits.

A run whose process was killed (kill -9, OOM, a closed laptop) stays STARTED in the run storage and
keeps its concurrency slot of pool `rtmap_patient_heavy`; every later run then waits for that slot
forever (issue 10). `reap_dead_runs` fails such runs and frees their slots. It is called by the CLI
while it holds the data-folder lock (`rtmap_assets.lock`), so no other rtmap process can be running
a run on this instance: an unfinished run that is not ours and whose recorded process is not alive
is dead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

PID_TAG = "rtmap/pid"  # the OS process that executes the run (set by `rtmap demo` on its runs)
HOST_TAG = "rtmap/host"


def run_tags() -> dict[str, str]:
    """Tags `rtmap demo` puts on its runs, so a later process can tell whether their worker lives."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: os.uname().nodename}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _run_alive(tags: dict[str, str]) -> bool:
    """Is the process recorded on the run (same host) still alive? Unknown process → not alive."""
    pid = tags.get(PID_TAG)
    if not pid or not pid.isdigit() or tags.get(HOST_TAG, os.uname().nodename) != os.uname().nodename:
        return False
    return int(pid) != os.getpid() and pid_alive(int(pid))


@dataclass(frozen=True)
class Reaped:
    run_id: str
    job_name: str
    partition: str | None
    status: str


def reap_dead_runs(instance, *, message: str = "run process gone (found by rtmap before starting new runs)"
                   ) -> list[Reaped]:
    """Fail unfinished runs whose process is gone and free every slot held by a finished run.

    Returns the runs it failed. Slots of runs that are already finished (e.g. canceled by hand while
    holding a slot) are freed too: that is what left queued runs QUEUED in issue 10.
    """
    import dagster as dg

    unfinished = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.CANCELING,
                  dg.DagsterRunStatus.NOT_STARTED]
    reaped: list[Reaped] = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=unfinished)):
        run = record.dagster_run
        if run.status == dg.DagsterRunStatus.NOT_STARTED and run.tags.get(PID_TAG) is None:
            continue  # created but never launched by anyone: harmless, holds no slot
        if _run_alive(dict(run.tags)):
            continue
        if run.status == dg.DagsterRunStatus.CANCELING:
            instance.report_run_canceled(run, message=message)
        else:
            instance.report_run_failed(run, message=message)
        reaped.append(Reaped(run.run_id, run.job_name, run.tags.get("dagster/partition"), str(run.status.value)))
    free_finished_run_slots(instance)
    return reaped


def free_finished_run_slots(instance) -> list[str]:
    """Free the concurrency slots still held by runs that are finished (or no longer exist)."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    freed = []
    for run_id in storage.get_concurrency_run_ids():
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            storage.free_concurrency_slots_for_run(run_id)
            freed.append(run_id)
    return freed


def pool_holders(instance, pool: str) -> list[str]:
    """Run ids holding a slot of `pool` (empty if the pool has free slots or no limit)."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    info = storage.get_concurrency_info(pool)
    if info.slot_count and info.active_slot_count < info.slot_count:
        return []
    return sorted(info.active_run_ids)


def wait_for_pool(instance, pool: str, *, say: Callable[[str], None] = print, poll_s: float = 2.0,
                  say_every_s: float = 30.0, timeout_s: float | None = None) -> float:
    """Block until `pool` has a free slot, saying which runs hold it every `say_every_s` seconds.

    Dead holders are reaped on every poll, so a run killed while we wait does not block us.
    Returns the seconds waited; raises TimeoutError after `timeout_s`.
    """
    t0 = time.monotonic()
    last_said = -float("inf")
    while holders := pool_holders(instance, pool):
        waited = time.monotonic() - t0
        if timeout_s is not None and waited > timeout_s:
            raise TimeoutError(f"pool {pool} still held by run(s) {', '.join(holders)} after {waited:.0f} s")
        if waited - last_said >= say_every_s:
            say(f"      waiting for a slot of pool {pool}, held by run(s) {', '.join(h[:8] for h in holders)} "
                f"({waited:.0f} s so far)")
            last_said = waited
        reap_dead_runs(instance)
        time.sleep(poll_s)
    return time.monotonic() - t0


# ----------------------------------------------------------------------------------------------
# One writer per data folder
# ----------------------------------------------------------------------------------------------

LOCK_NAME = ".rtmap.lock"


class DataDirLocked(RuntimeError):
    """Another rtmap process holds the data folder; the message says which."""


class DataDirLock:
    """An exclusive `flock` on `<data>/.rtmap.lock`, held for the life of one CLI command.

    The kernel drops the lock when the process dies (even by SIGKILL), so a stale lock cannot wedge
    the next run; the file's text (pid, host, command, start time) only tells a refused user who
    holds it.
    """

    def __init__(self, data_dir, command: str):
        from pathlib import Path

        self.path = Path(data_dir) / LOCK_NAME
        self.command = command
        self._fh = None

    def __enter__(self) -> "DataDirLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process (starting up)"
            fh.close()
            raise DataDirLocked(f"data folder {self.path.parent} is in use by {holder}") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"rtmap {self.command} (pid {os.getpid()} on {os.uname().nodename}, since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())})\n")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            self._fh.seek(0)
            self._fh.truncate()
            self._fh.close()  # closing releases the flock
            self._fh = None
