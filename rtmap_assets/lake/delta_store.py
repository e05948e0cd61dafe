"""The lake tables in Delta Lake (delta-rs): one table per `TableSpec`, replaced per patient in one
ACID transaction, compacted and vacuumed by `maintain`.

Why Delta and not one Parquet file per patient: at 10,000 patients the per-patient layout is
~60,000 small files, and every SQL query or dbt build pays for opening them (issue 13). A Delta table
keeps a few large files plus a transaction log; a patient's rows are replaced by one commit
("replace where patient_id = …"), so a reader sees either the old or the new rows of that patient,
never half of them, and `maintain` compacts the small files each replace leaves behind.

Tables are NOT partitioned by patient: 10,000 partitions would be 10,000 small files again. Per-patient
reads use the Parquet statistics of the few files instead (compaction keeps their number small).

The root is a local folder or an `s3://bucket/prefix` URL. For S3, credentials and the endpoint come
only from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL,
AWS_ALLOW_HTTP for a plain-http endpoint); delta-rs reads them itself. Commits on S3 use conditional
put (If-None-Match: *, delta-rs' default since 0.23), so concurrent writers are safe on any store that
honours that header (AWS S3, MinIO, R2, moto); no DynamoDB lock and no AWS_S3_ALLOW_UNSAFE_RENAME.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import polars as pl
from deltalake import CommitProperties, DeltaTable, QueryBuilder, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from rtmap_assets.lake.contract import TableSpec

if TYPE_CHECKING:  # pyarrow only for the DuckDB registration: importing it costs seconds (pandas)
    import pyarrow as pa
    import pyarrow.dataset

# Bounded retry of a whole write when another process committed first (conflicting files, or the
# same version number taken): ~10 attempts, exponential backoff with jitter, ~6 s worst case in all.
MAX_COMMIT_ATTEMPTS = 10
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 1.0


class LakeSchemaError(ValueError):
    """A frame does not match its table's contract (missing/extra columns, a cast that loses data,
    rows of another patient). A programming error in the writer, not a problem with patient data."""


def _is_commit_conflict(err: BaseException) -> bool:
    """True for a lost commit race (retry the write), False for anything else (raise it)."""
    if isinstance(err, CommitFailedError):
        return True
    text = str(err).lower()
    # delta-rs reports some races as a generic DeltaError: the version file already exists (put-if-
    # absent lost), or the table was created by the other writer between our check and our write.
    return isinstance(err, DeltaError) and any(
        s in text for s in ("already exists", "conflict", "concurrent", "transaction failed")
    )


def _sql_literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def replace_predicate(keys: Mapping[str, str]) -> str:
    """Delta SQL predicate `a = 'x' AND b = 'y'` selecting the rows that one replace owns."""
    if not keys:
        raise ValueError("a replace needs at least one key (patient_id)")
    return " AND ".join(f'"{col}" = {_sql_literal(val)}' for col, val in keys.items())


def conform(spec: TableSpec, df: pl.DataFrame) -> pl.DataFrame:
    """`df` with exactly the contract's columns, in contract order, cast to the contract types.

    Refuses missing or extra columns (naming them) and casts that would lose values (strict cast).
    """
    missing = [c for c in spec.columns if c not in df.columns]
    extra = [c for c in df.columns if c not in spec.schema]
    if missing or extra:
        raise LakeSchemaError(
            f"table {spec.name!r}: frame does not match the lake contract: "
            f"missing columns {missing}, extra columns {extra}"
        )
    out = []
    for col, dtype in spec.schema.items():
        try:
            out.append(df.get_column(col).cast(dtype, strict=True))
        except Exception as err:  # polars raises InvalidOperationError / ComputeError here
            raise LakeSchemaError(
                f"table {spec.name!r}: column {col!r} ({df.schema[col]}) cannot be cast to the "
                f"contract type {dtype}: {err}"
            ) from err
    return pl.DataFrame(out)


class DeltaStore:
    """Every lake table as a Delta table under one root (local folder or `s3://bucket/prefix`)."""

    def __init__(self, root: str | os.PathLike[str], storage_options: dict[str, str] | None = None):
        root = os.fspath(root)
        if "://" not in root:
            root = os.path.abspath(root)  # delta-rs and DuckDB resolve relative paths differently
        self.root = root.rstrip("/")
        self.storage_options = dict(storage_options) if storage_options else None
        self.commit_retries = 0  # lost commit races retried by this instance (for tests and logs)

    @property
    def is_local(self) -> bool:
        return "://" not in self.root or self.root.startswith("file://")

    def uri(self, spec: TableSpec) -> str:
        return f"{self.root}/{spec.name}"

    def _table(self, spec: TableSpec) -> DeltaTable | None:
        try:
            return DeltaTable(self.uri(spec), storage_options=self.storage_options)
        except TableNotFoundError:
            return None

    def exists(self, spec: TableSpec) -> bool:
        # Opening the table, not DeltaTable.is_deltatable: that one keeps the GIL during its I/O in
        # deltalake 1.6.6 (it hung against an S3 server running in the same Python process).
        return self._table(spec) is not None

    def version(self, spec: TableSpec) -> int | None:
        dt = self._table(spec)
        return None if dt is None else dt.version()

    def file_count(self, spec: TableSpec) -> int:
        """Data files in the current snapshot: each replace adds one, so this says when `maintain`
        is due (a replace costs ~10 ms on a compacted table, ~200 ms with 300 small files)."""
        dt = self._table(spec)
        return 0 if dt is None else len(dt.file_uris())

    # --- reading ---------------------------------------------------------------------------

    def dataset(self, spec: TableSpec) -> pyarrow.dataset.Dataset | None:
        """The table's current snapshot as a pyarrow dataset (None if the table does not exist)."""
        dt = self._table(spec)
        return None if dt is None else dt.to_pyarrow_dataset()

    def read(
        self, spec: TableSpec, *, patient_id: str | None = None, columns: list[str] | None = None
    ) -> pl.DataFrame:
        """Rows of the current snapshot (one patient's if `patient_id`), typed by the contract.

        An empty frame with the contract schema when the table does not exist yet. Columns the
        contract has but the stored table lacks (a column added to the contract later) read as null.
        """
        wanted = list(columns) if columns is not None else spec.columns
        unknown = [c for c in wanted if c not in spec.schema]
        if unknown:
            raise LakeSchemaError(f"table {spec.name!r}: no such columns in the contract: {unknown}")
        schema = {c: spec.schema[c] for c in wanted}
        dt = self._table(spec)
        if dt is None:
            return pl.DataFrame(schema=schema)
        stored = [f.name for f in dt.schema().fields]
        if patient_id is not None and "patient_id" not in stored:
            raise LakeSchemaError(f"table {spec.name!r} has no patient_id column")
        # delta-rs' own SQL engine (DataFusion) prunes files by their patient_id statistics: 12–17 ms
        # for one patient among 300 uncompacted files, where a pyarrow dataset scan took 0.3–6 s.
        select = [c for c in wanted if c in stored] or stored[:1]
        sql = "SELECT " + ", ".join(f'"{c}"' for c in select) + " FROM t"
        if patient_id is not None:
            sql += " WHERE " + replace_predicate({"patient_id": patient_id})
        # Straight into polars over the Arrow C stream: `pa.table(...)` here cost ~3 s on first use in
        # a process (it imports pandas), and every Dagster step is a fresh process.
        df = pl.DataFrame(QueryBuilder().register("t", dt).execute(sql).read_all())
        return pl.DataFrame(
            [df.get_column(c).cast(t) if c in stored else pl.Series(c, [None] * df.height, dtype=t)
             for c, t in schema.items()]
        )

    # --- writing ---------------------------------------------------------------------------

    def _schema_mode(self, spec: TableSpec) -> str | None:
        """'merge' when the contract added columns the stored table lacks; refuse dropped columns."""
        dt = self._table(spec)
        if dt is None:
            return None
        stored = [f.name for f in dt.schema().fields]
        dropped = [c for c in stored if c not in spec.schema]
        if dropped:
            raise LakeSchemaError(
                f"table {spec.name!r} at {self.uri(spec)} has columns the contract no longer has: "
                f"{dropped}; rewrite it whole with replace_all (a per-patient replace cannot drop them)"
            )
        return "merge" if any(c not in stored for c in spec.schema) else None

    def _commit(self, spec: TableSpec, write) -> int:
        """Run `write(commit_properties)` until it commits, retrying lost commit races with bounded
        backoff; returns the version of OUR commit (another writer may have committed since)."""
        write_id = uuid.uuid4().hex
        props = CommitProperties(custom_metadata={"rtmap.write_id": write_id})
        delay = BACKOFF_FIRST_S
        for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
            try:
                write(props)
                break
            except (CommitFailedError, DeltaError) as err:
                if attempt == MAX_COMMIT_ATTEMPTS or not _is_commit_conflict(err):
                    raise
                self.commit_retries += 1
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, BACKOFF_MAX_S)
        dt = self._table(spec)
        assert dt is not None
        for entry in dt.history(limit=64):
            if entry.get("rtmap.write_id") == write_id:
                return int(entry["version"])
        # No commit of ours: a no-op (ensure on an existing table, nothing to optimize).
        return dt.version()

    def replace_patient(self, spec: TableSpec, patient_id: str, df: pl.DataFrame, **keys: str) -> int:
        """Replace the rows of `patient_id` (narrowed by `keys`, e.g. stage="imaging") with `df` in
        one transaction; an empty `df` deletes them. Returns the table version that holds the result.
        """
        match = {"patient_id": patient_id, **keys}
        unknown = [k for k in match if k not in spec.schema]
        if unknown:
            raise LakeSchemaError(f"table {spec.name!r}: replace keys not in the contract: {unknown}")
        if set(match) != set(spec.replace_keys):
            # e.g. pipeline_issues without stage= would delete the patient's issues of every stage
            raise LakeSchemaError(
                f"table {spec.name!r} is replaced by {list(spec.replace_keys)}, got keys {list(match)}"
            )
        data = conform(spec, df)
        for col, val in match.items():
            bad = data.filter(pl.col(col).cast(pl.String).ne_missing(str(val)))
            if bad.height:
                found = bad.get_column(col).unique().head(5).to_list()
                raise LakeSchemaError(
                    f"table {spec.name!r}: replacing {col}={val!r} but {bad.height} of {data.height} "
                    f"rows have {col} in {found}"
                )
        predicate = replace_predicate(match)

        def write(props: CommitProperties) -> None:
            # Re-evaluated on each attempt: the table may have been created by the other writer.
            write_deltalake(self.uri(spec), data, mode="overwrite", predicate=predicate,
                            schema_mode=self._schema_mode(spec), storage_options=self.storage_options,
                            commit_properties=props)

        return self._commit(spec, write)

    def ensure(self, spec: TableSpec) -> int:
        """Create the table empty, with the contract schema, if it does not exist (a no-op
        otherwise); returns its version. dbt's delta plugin fails on a missing table, so every
        contract table should exist before the first `dbt build`."""
        empty = conform(spec, spec.empty())

        def write(props: CommitProperties) -> None:
            write_deltalake(self.uri(spec), empty, mode="ignore", storage_options=self.storage_options,
                            commit_properties=props)

        return self._commit(spec, write)

    def replace_all(self, spec: TableSpec, df: pl.DataFrame) -> int:
        """Replace the whole table with `df` (cohort tables) in one transaction; the contract's
        schema replaces the stored one (columns dropped from the contract go too)."""
        data = conform(spec, df)

        def write(props: CommitProperties) -> None:
            write_deltalake(self.uri(spec), data, mode="overwrite", schema_mode="overwrite",
                            storage_options=self.storage_options, commit_properties=props)

        return self._commit(spec, write)

    # --- maintenance -----------------------------------------------------------------------

    def maintain(self, spec: TableSpec, *, vacuum_retention_hours: int = 168) -> dict:
        """Compact small files into large ones (sorted by patient_id where the table has one), checkpoint the log, and delete files no snapshot
        younger than `vacuum_retention_hours` needs. Returns what was done (file counts, version).

        A reader holding a snapshot older than the retention may lose its files: keep the default
        (7 days) unless no reader holds snapshots (tests, a quiet maintenance window).
        """
        dt = self._table(spec)
        if dt is None:
            return {"table": spec.name, "exists": False}
        files_before = len(dt.file_uris())
        metrics: dict = {}
        # Patient tables are rewritten sorted by patient_id (z-order on one column): each file then
        # covers a narrow patient range, so a per-patient read or replace touches one file, not all.
        # Not incremental (rewrites the table): fine nightly for tables of a few hundred MB.
        by_patient = "patient_id" in spec.schema
        strategy = "skipped" if files_before <= 1 else ("z_order" if by_patient else "compact")

        def optimize(props: CommitProperties) -> None:
            table = DeltaTable(self.uri(spec), storage_options=self.storage_options)
            if strategy == "z_order":
                metrics.update(table.optimize.z_order(["patient_id"], commit_properties=props))
            elif strategy == "compact":
                metrics.update(table.optimize.compact(commit_properties=props))

        self._commit(spec, optimize)
        dt = DeltaTable(self.uri(spec), storage_options=self.storage_options)
        # A checkpoint lets readers skip replaying thousands of small commits (one per patient run).
        dt.create_checkpoint()
        # Retention below the table's 7-day default is the caller's explicit choice.
        removed = dt.vacuum(retention_hours=vacuum_retention_hours, dry_run=False,
                            enforce_retention_duration=False)
        dt = DeltaTable(self.uri(spec), storage_options=self.storage_options)
        return {
            "table": spec.name,
            "exists": True,
            "version": dt.version(),
            "optimize": strategy,
            "files_before": files_before,
            "files_after": len(dt.file_uris()),
            "files_compacted_added": int(metrics.get("numFilesAdded", 0)),
            "files_compacted_removed": int(metrics.get("numFilesRemoved", 0)),
            "files_vacuumed": len(removed),
        }


def empty_arrow(spec: TableSpec) -> "pa.Table":
    return spec.empty().to_arrow()


def register_lake_views(con, store: DeltaStore, specs: Iterable[TableSpec]) -> None:
    """Make every table queryable by its name on a DuckDB connection (`SELECT … FROM imaging_metrics`).

    Each table's current Delta snapshot is registered as an Arrow dataset (projection and filter
    pushdown to the Parquet files; works for local and s3:// roots alike, through delta-rs' own
    object store, no DuckDB extension needed). A table that does not exist yet is registered empty
    with the contract schema, so queries stay valid. The registration lives as long as `con`; call
    again to see newer versions.
    """
    for spec in specs:
        ds = store.dataset(spec)
        con.register(spec.name, ds if ds is not None else empty_arrow(spec))


def snapshot_view_sql(store: DeltaStore, spec: TableSpec, schema: str = "lake") -> str:
    """`CREATE OR REPLACE VIEW` over the Parquet files of the table's current snapshot, for a
    persistent DuckDB file read by plain SQL clients (no Python, no extension). Local roots only.

    Correct because delta-rs writes neither deletion vectors nor column mapping (checked below), so a
    snapshot is exactly the union of its data files. The view must be re-created after each write to
    see new rows, and before vacuum deletes its files (vacuum keeps 7 days by default).
    """
    if not store.is_local:
        raise ValueError("snapshot views over s3:// need DuckDB's httpfs; use register_lake_views")
    dt = store._table(spec)
    qualified = f'"{schema}"."{spec.name}"'
    if dt is None or not dt.file_uris():
        cols = ", ".join(f'NULL::{_duckdb_type(t)} AS "{c}"' for c, t in spec.schema.items())
        return f"CREATE OR REPLACE VIEW {qualified} AS SELECT {cols} WHERE false"
    protocol = dt.protocol()
    features = set(protocol.reader_features or [])
    if features & {"deletionVectors", "columnMapping"}:
        raise ValueError(f"{spec.name}: reader features {features} need a Delta reader, not read_parquet")
    files = ", ".join(_sql_literal(f) for f in dt.file_uris())
    cols = ", ".join(f'"{c}"' for c in spec.columns)
    return f"CREATE OR REPLACE VIEW {qualified} AS SELECT {cols} FROM read_parquet([{files}])"


def _duckdb_type(dtype: pl.DataType) -> str:
    import duckdb

    con = duckdb.connect()
    try:
        rel = con.from_arrow(pl.DataFrame(schema={"x": dtype}).to_arrow())
        return str(rel.types[0])
    finally:
        con.close()
