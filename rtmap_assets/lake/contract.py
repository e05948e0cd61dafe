"""The lake contract: every table declared once — name, partitioning, schema, description.

Every reader and writer of the lake (the Dagster assets, the storage layer, the dbt sources, the
tests) takes a table's shape from here, never from a string typed elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import polars as pl

Partitioning = Literal["cohort", "patient"]


@dataclass(frozen=True)
class TableSpec:
    """One lake table.

    `partitioning` says how rows are replaced: "cohort" tables are rewritten whole by one asset;
    "patient" tables have their rows replaced per patient (`patient_id`), optionally narrowed by
    `replace_keys` (e.g. `pipeline_issues` is replaced per patient and stage).
    """

    name: str
    partitioning: Partitioning
    schema: dict[str, pl.DataType]
    description: str = ""
    replace_keys: tuple[str, ...] = ("patient_id",)
    column_descriptions: dict[str, str] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return list(self.schema)

    def empty(self) -> pl.DataFrame:
        return pl.DataFrame(schema=self.schema)
