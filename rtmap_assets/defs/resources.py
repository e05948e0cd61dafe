"""Configuration at the edge: where the pipeline reads and writes, and the trial configuration.

Both are typed resources bound once in the definitions (from `RTMAP_DATA_DIR` / `RTMAP_TRIAL_CONFIG`
when set); the trial YAML is parsed once per process, not per asset.
"""

import os
import sys
from functools import lru_cache
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource

from rtmap_assets.config import TrialConfig, load_trial_config
from rtmap_assets.lake import Lake

DBT_DIR = Path(__file__).resolve().parents[2] / "dbt_models"
# The dbt next to this interpreter (the project's venv), whether or not the venv is activated.
DBT_EXECUTABLE = str(Path(sys.executable).with_name("dbt"))


class RtmapPaths(dg.ConfigurableResource):
    """Folders of one rtmap deployment; everything the pipeline writes lives under `data_dir`."""

    data_dir: str = "data"
    # Where the Delta tables live: empty = <data_dir>/lake; or an s3://bucket/prefix URL (credentials and
    # endpoint from the environment only, see docs/SCALE.md). Per-patient files stay under data_dir.
    lake_uri: str = ""

    @property
    def root(self) -> Path:
        return Path(self.data_dir).resolve()

    @property
    def raw_root(self) -> Path:
        return self.root / "raw"

    @property
    def truth_root(self) -> Path:
        return self.root / "truth"

    @property
    def covariates_dir(self) -> Path:
        return self.root / "covariates"

    @property
    def duckdb_path(self) -> Path:
        return self.root / "rtmap.duckdb"

    @property
    def lake(self) -> Lake:
        return Lake(self.root / "lake", tables_uri=self.lake_uri or None)


@lru_cache(maxsize=8)
def _parsed(path: str, mtime_ns: int) -> TrialConfig:
    return load_trial_config(path or None)


class TrialSettings(dg.ConfigurableResource):
    """The trial configuration (YAML): empty path = the bundled synthetic trial."""

    config_path: str = ""

    @property
    def config(self) -> TrialConfig:
        # Parsed once per file version (keyed by mtime, so an edited file is picked up by the next run).
        mtime = Path(self.config_path).stat().st_mtime_ns if self.config_path and Path(self.config_path).exists() else 0
        return _parsed(self.config_path, mtime)


def _from_env(name: str, default: str):
    """`dg.EnvVar(name)` when the variable is set (resolved per run, shown in the UI), else `default`."""
    return dg.EnvVar(name) if os.environ.get(name) else default


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources={
        "paths": RtmapPaths(data_dir=_from_env("RTMAP_DATA_DIR", "data"), lake_uri=_from_env("RTMAP_LAKE_URI", "")),
        "trial": TrialSettings(config_path=_from_env("RTMAP_TRIAL_CONFIG", "")),
        "dbt": DbtCliResource(project_dir=str(DBT_DIR), profiles_dir=str(DBT_DIR), dbt_executable=DBT_EXECUTABLE),
    })
