"""Reads travel through the asset graph: an asset reads a lake table only if it declares it upstream.

`read_upstream` refuses an undeclared read, so the lineage in the UI is the real data flow (a table
read without being declared would not make its reader stale when it changes).
"""

import polars as pl

import dagster as dg
from rtmap_assets.lake import Lake
from rtmap_assets.lake.contract import TableSpec


def read_upstream(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, lake: Lake, spec: TableSpec,
                  **filters) -> pl.DataFrame:
    """Rows of `spec` (optionally one patient's: `patient_id=...`), which the running asset must declare."""
    declared = {k.to_user_string() for k in context.assets_def.dependency_keys}
    if spec.name not in declared:
        raise dg.DagsterInvariantViolationError(
            f"{[k.to_user_string() for k in context.assets_def.keys]} reads lake table '{spec.name}' without "
            f"declaring it as an upstream asset (declared: {sorted(declared)})")
    return lake.read(spec, **filters)
