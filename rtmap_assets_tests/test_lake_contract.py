"""The lake contract is the one declaration of every table: dbt's sources list exactly its columns and
types, and a table written through `Lake` reads back in DuckDB with those types."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import yaml

from conftest import load_script
from rtmap_assets.lake import Lake
from rtmap_assets.lake.contract import TABLES

ROOT = Path(__file__).resolve().parents[1]


def _script():
    return load_script("dbt_sources")


def test_dbt_sources_are_generated_from_the_contract():
    committed = (ROOT / "dbt_models" / "models" / "sources.yml").read_text()
    assert committed == _script().sources_yaml(), "run scripts/dbt_sources.py after changing the lake contract"
    tables = {t["name"]: t for t in yaml.safe_load(committed)["sources"][0]["tables"]}
    assert set(tables) == set(TABLES)
    for name, spec in TABLES.items():
        assert [c["name"] for c in tables[name]["columns"]] == spec.columns


def test_tables_read_back_in_duckdb_with_the_declared_types(tmp_path):
    """Each table written through `Lake` (Delta) reads back in DuckDB with the types dbt's sources declare."""
    from rtmap_assets.lake.delta_store import register_lake_views

    lake = Lake(tmp_path)
    declared = {t["name"]: {c["name"]: c["data_type"] for c in t["columns"]}
                for t in yaml.safe_load(_script().sources_yaml())["sources"][0]["tables"]}
    lake.ensure_all(TABLES.values())
    con = duckdb.connect()
    register_lake_views(con, lake.store, TABLES.values())
    for name in TABLES:
        got = con.sql(f"describe select * from {name}").fetchall()
        assert {c: t for c, t, *_ in got} == declared[name], name
