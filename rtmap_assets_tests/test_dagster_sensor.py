"""The raw-exports sensor: new patient → catalog run, then partition + run; unchanged → nothing;
a changed file → catalog and a re-run of that patient only."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from rtmap_assets.defs.automation import raw_exports_sensor
from rtmap_assets.defs.resources import RtmapPaths, TrialSettings

TRIAL = "SYNTH-HN"


@pytest.fixture
def env(data_dir, monkeypatch):
    monkeypatch.setenv("RTMAP_DATA_DIR", str(data_dir))
    from rtmap_assets.definitions import defs

    return data_dir, defs(), dg.DagsterInstance.ephemeral()


def _tick(instance, cursor, data_dir):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor,
                                  resources={"paths": RtmapPaths(data_dir=str(data_dir)), "trial": TrialSettings()})
    result = raw_exports_sensor(ctx)
    for req in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return result


def test_sensor_new_unchanged_changed(env):
    data_dir, defs, instance = env
    raw = data_dir / "raw" / TRIAL
    exports = sorted(p.name for p in raw.iterdir())
    assert len(exports) == 2
    held = data_dir / "held_back"
    shutil.move(str(raw / exports[1]), held)  # the second patient arrives later

    r1 = _tick(instance, None, data_dir)
    assert [r.job_name for r in r1.run_requests] == ["bronze_job"]
    assert not r1.dynamic_partitions_requests  # nothing catalogued yet
    defs.resolve_job_def("bronze_job").execute_in_process(instance=instance)

    r2 = _tick(instance, r1.cursor, data_dir)
    assert [(r.job_name, r.partition_key) for r in r2.run_requests] == [("patient_job", "SYN-001")]
    assert instance.get_dynamic_partitions("patients") == ["SYN-001"]
    run_key = r2.run_requests[0].run_key

    r3 = _tick(instance, r2.cursor, data_dir)
    assert r3.run_requests == [] and r3.cursor == r2.cursor

    shutil.move(str(held), raw / exports[1])  # new patient folder lands
    r4 = _tick(instance, r3.cursor, data_dir)
    assert [r.job_name for r in r4.run_requests] == ["bronze_job"]
    assert exports[1] in r4.run_requests[0].tags["rtmap/changed_exports"]
    defs.resolve_job_def("bronze_job").execute_in_process(instance=instance)
    r5 = _tick(instance, r4.cursor, data_dir)
    assert [(r.job_name, r.partition_key) for r in r5.run_requests] == [("patient_job", "SYN-002")]

    # A changed file of patient 1 (re-exported RTDOSE: new mtime) → catalog, then patient 1 alone again.
    dose = next(p for p in (raw / exports[0]).rglob("*") if p.is_file() and _modality(p) == "RTDOSE")
    st = dose.stat()
    os.utime(dose, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    r6 = _tick(instance, r5.cursor, data_dir)
    assert [r.job_name for r in r6.run_requests] == ["bronze_job"]
    defs.resolve_job_def("bronze_job").execute_in_process(instance=instance)
    r7 = _tick(instance, r6.cursor, data_dir)
    assert [(r.job_name, r.partition_key) for r in r7.run_requests] == [("patient_job", "SYN-001")]
    assert r7.run_requests[0].run_key != run_key
    assert json.loads(r7.cursor)["patients"].keys() == {"SYN-001", "SYN-002"}


def _modality(path: Path) -> str | None:
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"]).Modality
    except Exception:  # noqa: BLE001 - non-DICOM files simply are not the dose
        return None
