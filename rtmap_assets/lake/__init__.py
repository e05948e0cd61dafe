"""The Parquet lake: where tables and per-patient files live, and how they are written.

Every write goes to a temporary name in the destination folder and is renamed into place, so a
reader (DuckDB, a statistician, the next asset) never sees half a file.
"""

from __future__ import annotations

import glob
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

# Tables whose rows are per patient live under <lake>/<table>/patient=<id>/part-0.parquet (hive
# style); cohort-wide tables (catalog, manifest) are a single file <lake>/<table>/data.parquet.
PATIENT_FILE = "part-0.parquet"
COHORT_FILE = "data.parquet"


def _umask() -> int:
    """The process umask, read without changing it (os.umask can only be read by setting it)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and rename the result to `path` (same folder, so the rename is atomic).

    The file gets the mode an ordinary write would (0666 minus the umask, 0644 by default): mkstemp
    creates 0600 and that mode would survive the rename, hiding lake files from other accounts.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    _remove_stale_temporaries(path)
    return path


STALE_TMP_S = 3600.0


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files of `path` left by a killed writer (older than an hour: not a live write)."""
    now = time.time()
    for old in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if now - old.stat().st_mtime > STALE_TMP_S:
                old.unlink()
        except OSError:
            pass


def write_parquet(df: pl.DataFrame, path: Path) -> Path:
    return atomic_write(Path(path), lambda tmp: df.write_parquet(tmp))


class Lake:
    """Paths inside one lake root (default `data/lake`)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def table_dir(self, table: str) -> Path:
        return self.root / table

    def cohort_table(self, table: str) -> Path:
        return self.root / table / COHORT_FILE

    def patient_table(self, table: str, patient_id: str) -> Path:
        return self.root / table / f"patient={patient_id}" / PATIENT_FILE

    def patient_files(self, patient_id: str) -> Path:
        """Folder for a patient's NIfTI volumes, masks, transforms and figures."""
        return self.root / "files" / f"patient={patient_id}"

    def write_cohort_table(self, table: str, df: pl.DataFrame) -> Path:
        return write_parquet(df, self.cohort_table(table))

    def write_patient_table(self, table: str, patient_id: str, df: pl.DataFrame) -> Path:
        return write_parquet(df, self.patient_table(table, patient_id))

    def read_table(self, table: str) -> pl.DataFrame:
        """All rows of a table (cohort file or every patient partition); empty frame if none yet."""
        d = self.table_dir(table)
        if (d / COHORT_FILE).exists():
            return pl.read_parquet(d / COHORT_FILE)
        parts = sorted(d.glob(f"patient=*/{PATIENT_FILE}"))
        if not parts:
            return pl.DataFrame()
        return pl.concat([pl.read_parquet(p) for p in parts], how="diagonal_relaxed")
