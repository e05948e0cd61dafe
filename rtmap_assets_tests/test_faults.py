"""Fault-injection suite (issue 10): what a user sees and what the lake holds after each fault.

Faults covered elsewhere, by name (not repeated here, they need a full pipeline run):
* SIGKILL during a patient run, then a plain re-run: test_self_healing.py::test_sigkill_during_patient_run_then_plain_demo_completes
* two concurrent CLI runs: test_many_readers.py::test_two_concurrent_cli_runs_second_refuses_then_lock_dies_with_its_holder
* a DuckDB reader open during the cohort build: test_many_readers.py::test_duckdb_reader_open_during_cohort_build
* a file from another patient (PatientID/MRN mismatch): test_subject_key.py, and below on a catalog.

Tests run as root, for whom chmod 000 does not make a file unreadable; the unreadable file is
simulated by a header reader raising PermissionError (EACCES) for it, and by a FIFO (a path that
would block a naive reader forever).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from rtmap_assets.dicom import catalog
from rtmap_assets.dicom.catalog import EMPTY_REASON, IO_REASON_PREFIX, MISMATCH_CODE, NON_UTF8_REASON, catalog_folder

try:
    from rtmap_assets_tests.dicom_factory import uid, write_image_series, write_patient
except ImportError:  # rootdir-less import mode
    from dicom_factory import uid, write_image_series, write_patient

_WRITER = textwrap.dedent("""
    import sys, polars as pl
    from rtmap_assets.lake import Lake
    from rtmap_assets.lake.contract import TableSpec
    spec = TableSpec("t", "patient", {"patient_id": pl.String(), "version": pl.Int64(), "x": pl.Int64()})
    lake, n = Lake(sys.argv[1]), 200_000
    i = 0
    while True:       # replace patient P's rows with alternating versions, each a few MB, as fast as possible
        i += 1
        lake.replace_patient(spec, "P", pl.DataFrame({"patient_id": ["P"] * n, "version": [i % 2] * n,
                                                      "x": list(range(n))}))
        print(i, flush=True)
""")


@pytest.mark.slow  # ~30 s on the loaded 2-core machine: four writer processes
def test_sigkill_during_lake_writes_leaves_old_or_new_never_partial(tmp_path):
    """A writer killed in the middle of replacing a patient's rows (Delta commit): readers see the old
    or the new rows, never a mixture or a broken table, and the next write lands."""
    from rtmap_assets.lake import Lake
    from rtmap_assets.lake.contract import TableSpec

    spec = TableSpec("t", "patient", {"patient_id": pl.String(), "version": pl.Int64(), "x": pl.Int64()})
    lake = Lake(tmp_path / "lake")
    lake.replace_patient(spec, "Q", pl.DataFrame({"patient_id": ["Q"], "version": [7], "x": [0]}))
    for trial in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / "lake")], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline()  # at least one complete replace
        time.sleep(0.05 + 0.11 * trial)  # kill at different points of a commit
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        df = lake.read(spec, patient_id="P")
        assert df.height == 200_000 and df["version"].n_unique() == 1
        assert df["x"].to_list()[-1] == 199_999
        assert lake.read(spec, patient_id="Q")["version"].to_list() == [7]  # another patient untouched
    lake.replace_patient(spec, "P", pl.DataFrame({"patient_id": ["P"], "version": [9], "x": [1]}))
    assert lake.read(spec, patient_id="P")["version"].to_list() == [9]


@pytest.fixture
def trial(tmp_path: Path) -> Path:
    t = tmp_path / "data" / "raw" / "T1"
    write_patient(t / "S1", "MRN-1")
    return t


def test_unreadable_file_is_a_reject_that_is_retried(trial, monkeypatch):
    victim = next((trial / "S1").rglob("CT001.dcm"))
    real = catalog.read_header

    def reader(path):
        if Path(path) == victim:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(catalog, "read_header", reader)
    first = catalog_folder(trial)
    (reason,) = first.rejects.filter(pl.col("path").str.ends_with("CT001.dcm"))["reason"].to_list()
    assert reason == f"{IO_REASON_PREFIX}Permission denied"
    monkeypatch.setattr(catalog, "read_header", real)  # permissions fixed
    again = catalog_folder(trial, first.files, first.rejects)
    assert again.rejects.is_empty() and again.n_read == 1  # only the once-unreadable file is re-read


def test_fifo_in_an_export_does_not_hang_the_catalog(trial):
    os.mkfifo(trial / "S1" / "pipe.dcm")
    t0 = time.perf_counter()
    res = catalog_folder(trial)
    assert time.perf_counter() - t0 < 30
    assert not res.files["path"].str.contains("pipe").any()  # not a regular file: not cataloged


def test_zero_byte_file_has_its_own_reason(trial):
    (trial / "S1" / "IM_copying.dcm").write_bytes(b"")
    res = catalog_folder(trial)
    assert res.rejects.select("path", "reason").rows() == [("T1/S1/IM_copying.dcm", EMPTY_REASON)]
    assert set(res.files["patient_id"]) == {"S1"}


def test_mrn_mismatch_is_refused_on_the_subject(trial):
    write_image_series(trial / "S1" / "other", "other", "MRN-2", uid("o-study"), uid("o-for"), "20200110",
                       n_slices=1)
    res = catalog_folder(trial)
    (reason,) = res.rejects["reason"].to_list()
    assert reason.startswith(f"{MISMATCH_CODE}: PatientID #") and "MRN-2" not in reason
    assert "MRN" not in str(res.files.to_dicts())


def test_symlink_loop_and_non_utf8_name(trial):
    (trial / "S1" / "loop").symlink_to(trial / "S1", target_is_directory=True)
    bad = os.fsencode(str(trial / "S1")) + b"/caf\xe9.dcm"
    with open(bad, "wb") as fh:
        fh.write(b"junk")
    res = catalog_folder(trial)
    assert res.files.height == 4 + 1 + 1 + 4 + 1  # the patient, once: the loop is not followed
    rejects = dict(res.rejects.select("path", "reason").rows())
    assert rejects["T1/S1/caf\\xe9.dcm"] == NON_UTF8_REASON.format(what="file")
    assert rejects["T1/S1/loop"].startswith("symbolic link loop") and len(rejects) == 2
    res.rejects.write_parquet(trial.parent.parent / "rejects.parquet")  # the name survives a lake write
