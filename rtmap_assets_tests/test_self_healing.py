"""Issue 10 / rule 17 operations: a run killed with SIGKILL never blocks the next `rtmap demo`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rtmap_assets.cli import DAGSTER_YAML, INSTANCE_HEADER, prepare_instance
from rtmap_assets_tests.conftest import _generate

# A patient run in its own process: the catalog, then the heavy step of the one patient.
_PATIENT_RUN = textwrap.dedent("""
    import os, sys
    import dagster as dg
    from rtmap_assets.cli import prepare_instance
    from pathlib import Path
    prepare_instance(Path(sys.argv[1]))
    from rtmap_assets.definitions import defs as load_defs
    from rtmap_assets.housekeeping import run_tags
    defs = load_defs()
    instance = dg.DagsterInstance.get()
    defs.resolve_job_def("bronze_job").execute_in_process(instance=instance)
    instance.add_dynamic_partitions("patients", ["SYN-001"])
    defs.resolve_job_def("patient_job").execute_in_process(instance=instance, partition_key="SYN-001",
                                                            tags=run_tags())
""")


def _env(data: Path) -> dict[str, str]:
    return {**os.environ, "RTMAP_DATA_DIR": str(data), "DAGSTER_HOME": str(data / "dagster_home")}


def test_old_instance_config_is_updated_and_user_config_kept(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_HEADER + "\nconcurrency:\n  pools:\n    default_limit: 1\n")
    prepare_instance(tmp_path)
    text = (home / "dagster.yaml").read_text()
    assert text == DAGSTER_YAML and "free_slots_after_run_end_seconds: 60" in text
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")  # the user's own file
    prepare_instance(tmp_path)
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"


def test_instance_config_is_valid_for_dagster(tmp_path):
    import dagster as dg

    prepare_instance(tmp_path)
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 60


@pytest.mark.slow
def test_sigkill_during_patient_run_then_plain_demo_completes(tmp_path):
    import dagster as dg

    data = _generate(tmp_path / "data", 1, seed=5)
    proc = subprocess.Popen([sys.executable, "-c", _PATIENT_RUN, str(data)], env=_env(data),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prepare_instance(data)
    deadline = time.monotonic() + 240
    held = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            with dg.DagsterInstance.from_config(str(data / "dagster_home")) as instance:
                info = instance.event_log_storage.get_concurrency_info("rtmap_patient_heavy")
                if info.active_run_ids:
                    held = next(iter(info.active_run_ids))
                    break
            time.sleep(0.5)
        assert held, "the patient run never claimed its pool slot"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    with dg.DagsterInstance.from_config(str(data / "dagster_home")) as instance:
        assert instance.get_run_by_id(held).status == dg.DagsterRunStatus.STARTED  # what kill -9 leaves
        assert instance.event_log_storage.get_concurrency_info("rtmap_patient_heavy").active_run_ids == {held}

    t0 = time.monotonic()
    demo = subprocess.run([sys.executable, "-m", "rtmap_assets.cli", "demo", "--data-dir", str(data)],
                          env=_env(data), capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "failed 1 dead run(s) left by a killed process" in demo.stdout
    assert "SYN-001: ok" in demo.stdout
    print(f"recovered in {time.monotonic() - t0:.0f} s")
    with dg.DagsterInstance.from_config(str(data / "dagster_home")) as instance:
        assert instance.get_run_by_id(held).status == dg.DagsterRunStatus.FAILURE
        assert not instance.event_log_storage.get_concurrency_info("rtmap_patient_heavy").active_run_ids

    # rule 17 on the whole folder the demo left: no name, birth date or study date outside bronze
    from conftest import load_script

    privacy_scan = load_script("privacy_scan")
    identifiers, scan = privacy_scan.identifiers, privacy_scan.scan

    wanted = identifiers(data / "raw" / "SYNTH-HN")
    assert wanted["name"] and wanted["birth_date"] and wanted["study_date"]  # the scan looks for something
    findings = scan(data, wanted)
    print("privacy findings:", findings)
    assert findings == []
