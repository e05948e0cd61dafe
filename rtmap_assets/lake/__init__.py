"""The lake: tables declared in `rtmap_assets.lake.contract`, stored as Delta Lake tables, and files
beside them.

Every reader and writer goes through `Lake` with a `TableSpec` from the contract (never a table name
typed as a string). Tables live in Delta Lake (`delta_store.DeltaStore`): rows are conformed to the
contract on every write, a patient's rows are replaced in one ACID commit (readers see the old or the
new rows, never half), and `maintain` compacts and vacuums. The tables' root may be a local folder
(default: the lake folder itself) or an `s3://` URL; per-patient files (NIfTI volumes, masks,
transforms, figures, dashboards, CSVs) stay in the local lake folder and are written to a temporary
name and renamed, so a reader never sees half a file.
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
    """Tables (Delta, under `tables_uri`, default `root`) and per-patient files (under `root`)."""

    def __init__(self, root: str | Path, tables_uri: str | None = None,
                 storage_options: dict[str, str] | None = None):
        from rtmap_assets.lake.delta_store import DeltaStore

        self.root = Path(root)
        self.store = DeltaStore(tables_uri or self.root, storage_options)

    # ------------------------------------------------------------------ files beside the tables
    def patient_files(self, patient_id: str) -> Path:
        """Folder for a patient's NIfTI volumes, masks and transforms (silver)."""
        return self.root / "files" / f"patient={patient_id}"

    def patient_figures(self, patient_id: str) -> Path:
        """Folder for a patient's overlay (gold)."""
        return self.root / "figures" / f"patient={patient_id}"

    def relative(self, path: str | Path) -> str:
        """A stored path: relative to the lake root, so moving the data folder keeps it valid."""
        return Path(path).resolve().relative_to(self.root.resolve()).as_posix()

    def absolute(self, stored: str) -> Path:
        p = Path(stored)
        return p if p.is_absolute() else self.root / p

    # ------------------------------------------------------------------ tables
    def replace_all(self, spec: TableSpec, df: pl.DataFrame) -> str:
        """A table rewritten whole, in one commit (cohort tables; or a bulk load); returns the table's URI."""
        self.store.replace_all(spec, df)
        return self.store.uri(spec)

    def replace_patient(self, spec: TableSpec, patient_id: str, df: pl.DataFrame, **keys: str) -> str:
        """Replace one patient's rows (narrowed by `keys`, e.g. stage=...) in one commit; returns the URI."""
        assert spec.partitioning == "patient", f"{spec.name} is a cohort table"
        self.store.replace_patient(spec, patient_id, df, **keys)
        return self.store.uri(spec)

    def read(self, spec: TableSpec, *, patient_id: str | None = None, columns: list[str] | None = None,
             **keys: str) -> pl.DataFrame:
        """Rows of a table (one patient's with `patient_id`, narrowed by equality `keys`); the contract's
        empty frame if the table does not exist yet."""
        wanted = None if columns is None else list(dict.fromkeys([*columns, *keys]))
        out = self.store.read(spec, patient_id=patient_id, columns=wanted)
        for k, v in keys.items():
            out = out.filter(pl.col(k) == v)
        return out.select(columns) if columns is not None else out

    def patients_with_rows(self, spec: TableSpec) -> list[str]:
        """Patient IDs that have rows in a table."""
        return sorted(self.read(spec, columns=["patient_id"])["patient_id"].unique().drop_nulls().to_list())

    def ensure_all(self, specs) -> None:
        """Create every table that does not exist yet, empty with its contract schema (SQL readers need them)."""
        for spec in specs:
            self.store.ensure(spec)

    def maintain(self, spec: TableSpec, **kwargs) -> dict:
        return self.store.maintain(spec, **kwargs)

    def duckdb_scan(self, spec: TableSpec) -> str:
        """A DuckDB table expression over the table's current Delta snapshot (local lakes): its data files,
        nothing a later commit removed."""
        from rtmap_assets.lake.delta_store import snapshot_view_sql

        return "(" + snapshot_view_sql(self.store, spec).split(" AS ", 1)[1] + ")"

    def describe_storage(self) -> str:
        return f"Delta Lake tables under {self.store.root} (one table per contract table, not partitioned)"
