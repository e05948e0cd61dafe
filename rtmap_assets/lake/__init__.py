"""The lake: tables declared in `rtmap_assets.lake.contract`, stored under one root, and files beside them.

Every reader and writer goes through `Lake` with a `TableSpec` from the contract (never a table name
typed as a string). Rows are conformed to the contract on every write. Today's storage: Parquet,
"cohort" tables one file `<table>/data.parquet`, "patient" tables one file per patient (and per extra
replace key, e.g. stage) under `<table>/patient=<id>/`. Every write goes to a temporary name in the
destination folder and is renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import glob
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    from rtmap_assets.lake.contract import TableSpec

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


def _part_name(keys: dict[str, str]) -> str:
    return "-".join(f"{k}={v}" for k, v in keys.items()) + ".parquet" if keys else PATIENT_FILE


class Lake:
    """Tables and per-patient files inside one lake root (default `data/lake`)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ------------------------------------------------------------------ files beside the tables
    def patient_files(self, patient_id: str) -> Path:
        """Folder for a patient's NIfTI volumes, masks and transforms (silver)."""
        return self.root / "files" / f"patient={patient_id}"

    def patient_figures(self, patient_id: str) -> Path:
        """Folder for a patient's overlay and viewer (gold)."""
        return self.root / "figures" / f"patient={patient_id}"

    def relative(self, path: str | Path) -> str:
        """A stored path: relative to the lake root, so moving the data folder keeps it valid."""
        return Path(path).resolve().relative_to(self.root.resolve()).as_posix()

    def absolute(self, stored: str) -> Path:
        p = Path(stored)
        return p if p.is_absolute() else self.root / p

    # ------------------------------------------------------------------ tables
    def table_dir(self, spec: TableSpec) -> Path:
        return self.root / spec.name

    def _patient_part(self, spec: TableSpec, patient_id: str, keys: dict[str, str]) -> Path:
        return self.table_dir(spec) / f"patient={patient_id}" / _part_name(keys)

    def replace_all(self, spec: TableSpec, df: pl.DataFrame) -> Path:
        """A cohort table rewritten whole."""
        from rtmap_assets.lake.contract import conform

        assert spec.partitioning == "cohort", f"{spec.name} is a per-patient table"
        return write_parquet(conform(spec, df), self.table_dir(spec) / COHORT_FILE)

    def replace_patient(self, spec: TableSpec, patient_id: str, df: pl.DataFrame, **keys: str) -> Path:
        """Replace one patient's rows (narrowed by `keys`, e.g. stage=...) in one atomic step."""
        from rtmap_assets.lake.contract import conform

        assert spec.partitioning == "patient", f"{spec.name} is a cohort table"
        extra = [k for k in spec.replace_keys if k != "patient_id"]
        if sorted(keys) != sorted(extra):
            raise ValueError(f"{spec.name} rows are replaced by {spec.replace_keys}; got patient_id + {list(keys)}")
        return write_parquet(conform(spec, df), self._patient_part(spec, patient_id, keys))

    def read(self, spec: TableSpec, *, patient_id: str | None = None, columns: list[str] | None = None,
             **keys: str) -> pl.DataFrame:
        """Rows of a table (one patient's with `patient_id`); the contract's empty frame if none yet."""
        d = self.table_dir(spec)
        if spec.partitioning == "cohort":
            files = [d / COHORT_FILE] if (d / COHORT_FILE).exists() else []
        elif patient_id is not None:
            folder = d / f"patient={patient_id}"
            files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
        else:
            files = sorted(d.glob("patient=*/*.parquet"))
        if not files:
            out = spec.empty()
        else:
            out = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
            # Rows written before a column was added read back with nulls, in the contract's shape.
            out = out.with_columns([pl.lit(None, dtype=t).alias(c) for c, t in spec.schema.items()
                                    if c not in out.columns])
            out = out.select([pl.col(c).cast(t) for c, t in spec.schema.items()])
        if patient_id is not None and spec.partitioning == "cohort":
            out = out.filter(pl.col("patient_id") == patient_id)
        for k, v in keys.items():
            out = out.filter(pl.col(k) == v)
        return out.select(columns) if columns else out

    def patients_with_rows(self, spec: TableSpec) -> list[str]:
        """Patient IDs that have rows in a per-patient table (from folder names: no table read)."""
        d = self.table_dir(spec)
        return sorted(p.name.removeprefix("patient=") for p in d.glob("patient=*") if p.is_dir())
