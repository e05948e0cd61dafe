"""DeltaStore: per-patient replace in one transaction, schema from the contract, maintenance,
concurrent writers in two processes, readers that never see half a replace, DuckDB and dbt readers."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest

from rtmap_assets.lake.contract import TableSpec
from rtmap_assets.lake.delta_store import DeltaStore, LakeSchemaError, register_lake_views, snapshot_view_sql

try:
    from rtmap_assets_tests.lake_tables import CATALOG, ISSUES, METRICS, _writer, metrics_rows
except ImportError:  # pytest's rootdir-relative import mode
    from lake_tables import CATALOG, ISSUES, METRICS, _writer, metrics_rows


def test_missing_table_reads_empty_with_contract_schema(tmp_path):
    store = DeltaStore(tmp_path / "lake")
    assert not store.exists(METRICS)
    assert store.version(METRICS) is None
    df = store.read(METRICS)
    assert df.height == 0 and df.schema == pl.Schema(METRICS.schema)
    assert store.read(METRICS, patient_id="P1", columns=["run", "patient_id"]).columns == ["run", "patient_id"]
    assert store.uri(METRICS) == str(tmp_path / "lake" / "metrics")


def test_replace_patient_round_trip_keeps_types_and_other_patients(tmp_path):
    store = DeltaStore(tmp_path / "lake")
    v0 = store.replace_patient(METRICS, "P1", metrics_rows("P1", 3))
    v1 = store.replace_patient(METRICS, "P2", metrics_rows("P2", 2))
    assert (v0, v1) == (0, 1)
    assert store.exists(METRICS)
    all_rows = store.read(METRICS).sort("patient_id", "structure")
    assert all_rows.schema == pl.Schema(METRICS.schema)  # UInt32, Date, Datetime(us) come back as declared
    assert all_rows.equals(pl.concat([metrics_rows("P1", 3), metrics_rows("P2", 2)]))

    # Replace P1 with fewer, newer rows: P2 untouched, P1 exactly the new rows.
    v2 = store.replace_patient(METRICS, "P1", metrics_rows("P1", 1, run=7))
    assert v2 == 2 and store.version(METRICS) == 2
    assert store.read(METRICS, patient_id="P1").equals(metrics_rows("P1", 1, run=7))
    assert store.read(METRICS, patient_id="P2").height == 2
    assert store.read(METRICS, patient_id="P2", columns=["structure"]).to_series().to_list() == ["S0", "S1"]

    # An empty frame deletes the patient's rows.
    store.replace_patient(METRICS, "P1", metrics_rows("P1", 0))
    assert store.read(METRICS).get_column("patient_id").unique().to_list() == ["P2"]


def test_extra_keys_narrow_the_replace(tmp_path):
    store = DeltaStore(tmp_path / "lake")
    row = lambda p, s, c: pl.DataFrame({"patient_id": [p], "stage": [s], "code": [c], "message": ["m"]})
    store.replace_patient(ISSUES, "P1", row("P1", "imaging", "A"), stage="imaging")
    store.replace_patient(ISSUES, "P1", row("P1", "dosimetry", "B"), stage="dosimetry")
    store.replace_patient(ISSUES, "P1", row("P1", "imaging", "C"), stage="imaging")
    got = store.read(ISSUES).sort("stage")
    assert got.select("stage", "code").rows() == [("dosimetry", "B"), ("imaging", "C")]
    # An empty frame clears the stage's issues only (what the asset writes when a stage is clean).
    store.replace_patient(ISSUES, "P1", ISSUES.empty(), stage="imaging")
    assert store.read(ISSUES).select("stage", "code").rows() == [("dosimetry", "B")]
    # A quote in a key value is escaped, not SQL.
    store.replace_patient(ISSUES, "P'1", row("P'1", "imaging", "D"), stage="imaging")
    assert store.read(ISSUES, patient_id="P'1").get_column("code").to_list() == ["D"]


def test_schema_enforcement_names_the_columns(tmp_path):
    store = DeltaStore(tmp_path / "lake")
    good = metrics_rows("P1", 2)
    with pytest.raises(LakeSchemaError, match=r"missing columns \['run'\], extra columns \['oops'\]"):
        store.replace_patient(METRICS, "P1", good.drop("run").with_columns(oops=pl.lit(1)))
    with pytest.raises(LakeSchemaError, match=r"column 'n_voxels' .* cannot be cast"):
        store.replace_patient(METRICS, "P1", good.with_columns(n_voxels=pl.lit(-1)))
    with pytest.raises(LakeSchemaError, match=r"replacing patient_id='P1' but 2 of 2 rows have patient_id in \['P9'\]"):
        store.replace_patient(METRICS, "P1", metrics_rows("P9", 2))
    with pytest.raises(LakeSchemaError, match=r"replace keys not in the contract: \['stage'\]"):
        store.replace_patient(METRICS, "P1", good, stage="imaging")
    with pytest.raises(LakeSchemaError, match=r"replaced by \['patient_id', 'stage'\], got keys \['patient_id'\]"):
        store.replace_patient(ISSUES, "P1", ISSUES.empty())
    assert not store.exists(METRICS)  # nothing was written by the refused calls
    # Castable columns in another order/type are conformed: Int64 -> UInt32, column order from the contract.
    shuffled = good.with_columns(pl.col("n_voxels").cast(pl.Int64)).select(list(reversed(good.columns)))
    store.replace_patient(METRICS, "P1", shuffled)
    assert store.read(METRICS).columns == METRICS.columns


def test_contract_adds_a_column_old_rows_read_null(tmp_path):
    store = DeltaStore(tmp_path / "lake")
    store.replace_patient(METRICS, "P1", metrics_rows("P1", 2))
    wider = TableSpec(name="metrics", partitioning="patient", schema={**METRICS.schema, "note": pl.String})
    assert store.read(wider).get_column("note").to_list() == [None, None]
    store.replace_patient(wider, "P2", metrics_rows("P2", 1).with_columns(note=pl.lit("new")))
    got = store.read(wider).sort("patient_id")
    assert got.get_column("note").to_list() == [None, None, "new"]
    # The old, narrower contract can no longer write a per-patient replace: it would drop `note`.
    with pytest.raises(LakeSchemaError, match=r"columns the contract no longer has: \['note'\]"):
        store.replace_patient(METRICS, "P1", metrics_rows("P1", 1))


def test_replace_all_and_maintain_compacts_and_vacuums(tmp_path):
    store = DeltaStore(tmp_path / "lake")
    assert store.ensure(ISSUES) == 0 and store.exists(ISSUES) and store.read(ISSUES).height == 0
    store.replace_patient(ISSUES, "P1", pl.DataFrame({"patient_id": ["P1"], "stage": ["s"], "code": ["C"],
                                                      "message": ["m"]}), stage="s")
    assert store.ensure(ISSUES) == 1 and store.read(ISSUES).height == 1  # existing table untouched
    assert store.replace_all(CATALOG, pl.DataFrame({"patient_id": ["P1", "P2"], "n_files": [3, 4]})) == 0
    assert store.replace_all(CATALOG, pl.DataFrame({"patient_id": ["P3"], "n_files": [5]})) == 1
    assert store.read(CATALOG).rows() == [("P3", 5)]

    for i in range(6):
        store.replace_patient(METRICS, f"P{i}", metrics_rows(f"P{i}", 2))
    before = store.read(METRICS).sort("patient_id", "structure")
    table_dir = Path(store.uri(METRICS))
    assert len(list(table_dir.glob("*.parquet"))) == 6 and store.file_count(METRICS) == 6
    out = store.maintain(METRICS, vacuum_retention_hours=0)
    assert out["files_before"] == 6 and out["files_after"] == 1 and out["optimize"] == "z_order"
    assert out["files_compacted_removed"] == 6 and out["files_compacted_added"] == 1
    assert out["files_vacuumed"] == 6
    assert len(list(table_dir.glob("*.parquet"))) == 1 and store.file_count(METRICS) == 1
    assert list((table_dir / "_delta_log").glob("*.checkpoint.parquet"))
    assert store.read(METRICS).sort("patient_id", "structure").equals(before)
    assert store.maintain(METRICS, vacuum_retention_hours=0)["optimize"] == "skipped"  # one file already
    assert store.maintain(TableSpec(name="nope", partitioning="cohort", schema={})) == {"table": "nope", "exists": False}
    # After compaction every patient shares one file: a replace rewrites it and keeps the others' rows.
    store.replace_patient(METRICS, "P3", metrics_rows("P3", 1, run=9))
    got = store.read(METRICS)
    assert got.height == 11 and got.filter(pl.col("patient_id") == "P3").get_column("run").to_list() == [9]


# --- two processes ---------------------------------------------------------------------------

@pytest.mark.slow
def test_two_processes_replacing_different_patients_both_land(tmp_path):
    root = str(tmp_path / "lake")
    store = DeltaStore(root)
    for pid in ("P0", "PA", "PB"):
        store.replace_patient(METRICS, pid, metrics_rows(pid, 3))
    # One compacted file holds all three patients, so each replace rewrites a file the other writer
    # also rewrites: real conflicts that delta-rs cannot resolve alone, retried by DeltaStore.
    assert store.maintain(METRICS, vacuum_retention_hours=0)["files_after"] == 1
    start_version = store.version(METRICS)
    ctx = mp.get_context("spawn")
    retries = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(root, pid, 8, 3, retries)) for pid in ("PA", "PB")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    (r1, v1), (r2, v2) = retries.get(timeout=5), retries.get(timeout=5)
    print(f"commit retries in the two writers: {r1 + r2}")
    # Each replace returned the version of its own commit: all distinct, in order per writer.
    assert sorted(v1 + v2) == list(range(start_version + 1, start_version + 17))
    assert v1 == sorted(v1) and v2 == sorted(v2)
    got = store.read(METRICS)
    for pid in ("PA", "PB"):
        rows = got.filter(pl.col("patient_id") == pid)
        assert rows.height == 3 and rows.get_column("run").unique().to_list() == [7]
    assert store.read(METRICS, patient_id="P0").height == 3
    assert store.version(METRICS) == start_version + 16  # 2 x 8 commits: no write lost or merged


@pytest.mark.slow
def test_reader_sees_old_or_new_rows_never_half(tmp_path):
    """A writer process alternates P1 between 4 rows of run r and 4 rows of run r+1 (and P2 stays);
    the reader loop must see P1 as exactly one run's 4 rows every time."""
    root = str(tmp_path / "lake")
    store = DeltaStore(root)
    store.replace_patient(METRICS, "P1", metrics_rows("P1", 4, run=0))
    store.replace_patient(METRICS, "P2", metrics_rows("P2", 2, run=0))
    proc = mp.get_context("spawn").Process(target=_writer, args=(root, "P1", 25, 4))
    proc.start()
    seen_runs: set[int] = set()
    reads = 0
    while proc.is_alive() or reads < 5:
        p1 = store.read(METRICS, patient_id="P1")
        runs = p1.get_column("run").unique().to_list()
        assert p1.height == 4 and len(runs) == 1, f"half-written state seen: {p1}"
        assert store.read(METRICS, patient_id="P2").height == 2
        seen_runs.update(runs)
        reads += 1
    proc.join(60)
    assert proc.exitcode == 0
    assert len(seen_runs) >= 2  # the reader really overlapped several commits
    assert store.read(METRICS, patient_id="P1").get_column("run").unique().to_list() == [24]


# --- SQL readers -----------------------------------------------------------------------------

@pytest.mark.slow  # importing pyarrow.dataset (pandas) alone takes 2–4 s
def test_register_lake_views_for_python_duckdb(tmp_path):
    store = DeltaStore(tmp_path / "lake")
    store.replace_patient(METRICS, "P1", metrics_rows("P1", 3))
    store.replace_patient(METRICS, "P2", metrics_rows("P2", 2))
    con = duckdb.connect()
    register_lake_views(con, store, [METRICS, ISSUES])
    rows = con.execute("SELECT patient_id, count(*), sum(n_voxels) FROM metrics GROUP BY 1 ORDER BY 1").fetchall()
    assert rows == [("P1", 3, 30), ("P2", 2, 10)]
    assert con.execute("SELECT count(*) FROM issues").fetchall()[0] == (0,)  # not written yet: empty, typed
    assert [d[0] for d in con.sql("SELECT * FROM issues").description] == ISSUES.columns
    # A newer version is seen after registering again.
    store.replace_patient(METRICS, "P3", metrics_rows("P3", 1))
    register_lake_views(con, store, [METRICS])
    assert con.execute("SELECT count(DISTINCT patient_id) FROM metrics").fetchall()[0] == (3,)


def test_snapshot_views_persist_in_a_duckdb_file(tmp_path):
    store = DeltaStore(tmp_path / "lake")
    store.replace_patient(METRICS, "P1", metrics_rows("P1", 3))
    store.replace_patient(METRICS, "P1", metrics_rows("P1", 2, run=5))  # old file still on disk
    db = tmp_path / "stats.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE SCHEMA IF NOT EXISTS lake")
        con.execute(snapshot_view_sql(store, METRICS))
        con.execute(snapshot_view_sql(store, ISSUES))
    # A statistician's plain connection (no Python registration) reads the current snapshot only.
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT run, count(*) FROM lake.metrics GROUP BY 1").fetchall() == [(5, 2)]
        assert con.execute("SELECT count(*) FROM lake.issues").fetchall()[0] == (0,)


DBT_PROJECT = """
name: lake_demo
version: "1.0"
profile: lake_demo
config-version: 2
model-paths: ["models"]
"""
DBT_PROFILES = """
lake_demo:
  target: dev
  outputs:
    dev:
      type: duckdb
      path: "{{ env_var('DEMO_DUCKDB') }}"
      threads: 1
      plugins:
        - module: delta
"""
DBT_SOURCES = """
version: 2
sources:
  - name: lake
    schema: lake
    config:
      plugin: delta
    tables:
      - name: metrics
        meta:
          delta_table_path: "{{ env_var('RTMAP_LAKE') }}/metrics"
          materialization: table
"""
DBT_MODEL = """
select patient_id, count(*) as n_structures, sum(volume_cc) as volume_cc
from {{ source('lake', 'metrics') }}
group by patient_id
"""


@pytest.mark.slow
def test_dbt_duckdb_delta_plugin_builds_a_model_over_a_delta_table(tmp_path):
    store = DeltaStore(tmp_path / "lake")
    store.replace_patient(METRICS, "P1", metrics_rows("P1", 3))
    store.replace_patient(METRICS, "P2", metrics_rows("P2", 2))
    proj = tmp_path / "dbt"
    (proj / "models").mkdir(parents=True)
    (proj / "dbt_project.yml").write_text(DBT_PROJECT)
    (proj / "profiles.yml").write_text(DBT_PROFILES)
    (proj / "models" / "sources.yml").write_text(DBT_SOURCES)
    (proj / "models" / "per_patient.sql").write_text(DBT_MODEL)
    db = tmp_path / "out.duckdb"
    env = {**os.environ, "DEMO_DUCKDB": str(db), "RTMAP_LAKE": store.root,
           "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    dbt = Path(sys.executable).with_name("dbt")
    res = subprocess.run([str(dbt), "build", "--profiles-dir", str(proj), "--project-dir", str(proj)],
                         cwd=proj, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    with duckdb.connect(str(db), read_only=True) as con:
        got = con.execute("SELECT patient_id, n_structures, volume_cc FROM per_patient ORDER BY 1").fetchall()
        assert got == [("P1", 3, 4.5), ("P2", 2, 1.5)]
        # The source was copied into the DuckDB file (materialization: table), so a statistician's
        # plain connection reads it too; the default "view" would point at an Arrow object that only
        # lived inside dbt's process.
        assert con.execute("SELECT count(*) FROM lake.metrics").fetchall()[0] == (5,)
