"""Where the pipeline reads and writes, as one typed resource (paths never live in code)."""

import os
import sys
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource

from rtmap_assets.config import TrialConfig, load_trial_config
from rtmap_assets.lake import Lake


DBT_DIR = Path(__file__).resolve().parents[2] / "dbt_models"
# The dbt next to this interpreter (the project's venv), whether or not the venv is activated.
DBT_EXECUTABLE = str(Path(sys.executable).with_name("dbt"))


def default_data_dir() -> Path:
    """`RTMAP_DATA_DIR` or `./data` — everything the pipeline writes lives under it."""
    return Path(os.environ.get("RTMAP_DATA_DIR", "data")).resolve()


class RtmapPaths(dg.ConfigurableResource):
    """Folders of one rtmap deployment. Defaults follow `RTMAP_DATA_DIR` (default `data/`)."""

    data_dir: str = ""  # empty: $RTMAP_DATA_DIR, else ./data
    trial_config: str = ""  # empty: $RTMAP_TRIAL_CONFIG, else the bundled synthetic trial

    @property
    def root(self) -> Path:
        return Path(self.data_dir).resolve() if self.data_dir else default_data_dir()

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
        return Lake(self.root / "lake")

    def config(self) -> TrialConfig:
        return load_trial_config(self.trial_config or os.environ.get("RTMAP_TRIAL_CONFIG") or None)

    def raw_trial_dir(self) -> Path:
        return self.raw_root / self.config().trial


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources={
        "paths": RtmapPaths(),
        "dbt": DbtCliResource(project_dir=str(DBT_DIR), profiles_dir=str(DBT_DIR), dbt_executable=DBT_EXECUTABLE),
    })
