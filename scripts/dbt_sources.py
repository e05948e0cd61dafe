"""Write dbt_models/models/sources.yml from the lake contract (rtmap_assets/lake/contract.py).

The dbt sources list every table's columns and types exactly as the contract declares them;
`rtmap_assets_tests/test_lake_contract.py` fails when the two disagree. Run after changing the contract:

    .venv/bin/python scripts/dbt_sources.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "dbt_models" / "models" / "sources.yml"
sys.path.insert(0, str(ROOT))

HEADER = "# Generated from rtmap_assets/lake/contract.py by scripts/dbt_sources.py: edit the contract, not this file.\n"
# Every table is a Delta Lake table read through dbt-duckdb's `delta` plugin (deltalake, no DuckDB
# extension), copied into the DuckDB file at build time (`materialization: table`: the plugin's default
# view would point at a data frame that exists only during the dbt run).
LAKE = "{{ var('rtmap_lake', env_var('RTMAP_LAKE', '../data/lake')) }}"


def duckdb_type(t: pl.DataType) -> str:
    """The DuckDB type polars' Parquet writer gives a column of this polars type."""
    if isinstance(t, pl.List):
        return duckdb_type(t.inner) + "[]"
    if isinstance(t, pl.Datetime):
        return "TIMESTAMP WITH TIME ZONE" if t.time_zone else "TIMESTAMP"
    simple = {pl.String: "VARCHAR", pl.Int64: "BIGINT", pl.Int32: "INTEGER", pl.Float64: "DOUBLE",
              pl.Float32: "FLOAT", pl.Boolean: "BOOLEAN", pl.Date: "DATE"}
    for k, v in simple.items():
        if t == k:
            return v
    raise ValueError(f"no DuckDB type for {t}")


def sources_yaml() -> str:
    from rtmap_assets.lake.contract import TABLES

    tables = []
    for spec in TABLES.values():
        tables.append({
            "name": spec.name,
            "description": spec.description,
            "meta": {"partitioning": spec.partitioning, "delta_table_path": f"{LAKE}/{spec.name}"},
            "columns": [{"name": c, "data_type": duckdb_type(t),
                         **({"description": spec.column_descriptions[c]} if c in spec.column_descriptions else {})}
                        for c, t in spec.schema.items()],
        })
    doc = {"version": 2, "sources": [{
        "name": "lake",
        "description": "Delta Lake tables the Dagster assets write under data/lake, declared in the lake contract.",
        "schema": "lake",
        "config": {"plugin": "delta"},
        "meta": {"materialization": "table"},
        "tables": tables,
    }]}
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=200)


if __name__ == "__main__":
    SOURCES.write_text(sources_yaml())
    print(f"wrote {SOURCES}")
