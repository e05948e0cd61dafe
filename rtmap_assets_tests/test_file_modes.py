"""Issue 10: lake outputs are readable by other accounts — written with the process umask, not 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import SimpleITK as sitk

from rtmap_assets.lake import atomic_write, write_parquet


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_parquet_csv_html_png_follow_the_umask(tmp_path, umask):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    want = 0o666 & ~umask  # 0644 with the default umask, 0640 with 027
    df = pl.DataFrame({"patient_id": ["SYN-001"], "x": [1.0]})
    parquet = write_parquet(df, tmp_path / "t" / "patient=SYN-001" / "part-0.parquet")
    csv = atomic_write(tmp_path / "seed_csv" / "a.csv", lambda tmp: df.write_csv(tmp))
    html = atomic_write(tmp_path / "dashboards" / "d.html", lambda tmp: tmp.write_text("<html></html>"))
    fig, ax = plt.subplots()
    png = atomic_write(tmp_path / "files" / "overlay.png", lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    for p in (parquet, csv, html, png):
        assert _mode(p) == want, f"{p.name}: {oct(_mode(p))}"
    assert pl.read_parquet(parquet).equals(df)
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file left behind


def test_nifti_folders_follow_the_umask(tmp_path, umask):
    from rtmap_assets.pipeline.volumes import PatientVolumes, StructureMask

    img = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))
    mask = sitk.GetImageFromArray(np.ones((4, 5, 6), np.uint8))
    vol = PatientVolumes("SYN-001", img, img, [StructureMask("CTV_65", "ctv", "planning", mask)])
    folder = tmp_path / "files" / "patient=SYN-001" / "v-1"
    paths = vol.save(folder)
    assert paths
    for p in folder.rglob("*"):
        want = (0o777 if p.is_dir() else 0o666) & ~umask
        assert _mode(p) == want, f"{p}: {oct(_mode(p))}"


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = write_parquet(pl.DataFrame({"a": [1]}), tmp_path / "x.parquet")

    def boom(tmp: Path) -> None:
        tmp.write_bytes(b"PAR1 partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert pl.read_parquet(target)["a"].to_list() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["x.parquet"]


def test_stale_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "part-0.parquet"
    stale = tmp_path / ".part-0.parquet.abc123.tmp"  # what a SIGKILL mid-write leaves
    fresh = tmp_path / ".part-0.parquet.def456.tmp"  # a write in progress right now
    stale.write_bytes(b"PAR1 partial")
    fresh.write_bytes(b"PAR1 partial")
    os.utime(stale, (0, 0))
    write_parquet(pl.DataFrame({"a": [1]}), target)
    assert not stale.exists() and fresh.exists()
