"""dbt models over the lake (DuckDB file for SQL users) and the cohort dashboard.

The dbt sources are the lake tables the other assets write, so the dbt models sit downstream of
them in one graph and follow them by declarative automation.
"""

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets
from rtmap_assets.defs.cohort import COHORT, COHORT_AUTOMATION
from rtmap_assets.config import TrialConfig
from rtmap_assets.defs.resources import DBT_DIR, DBT_EXECUTABLE, RtmapPaths, TrialSettings
from rtmap_assets.figures.dashboard import build_cohort_dashboard
from rtmap_assets.lake.contract import TABLES

# The manifest is built by scripts/setup.sh (`dbt parse`); under `dagster dev` it is refreshed on load.
dbt_project = DbtProject(project_dir=DBT_DIR, profiles_dir=DBT_DIR)
dbt_project.prepare_if_dev()


class LakeTranslator(DagsterDbtTranslator):
    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return dg.AssetKey(dbt_resource_props["name"])  # the lake table asset of the same name
        return dg.AssetKey(["warehouse", dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return COHORT

    def get_automation_condition(self, dbt_resource_props: Mapping[str, Any]) -> dg.AutomationCondition | None:
        return COHORT_AUTOMATION


def dbt_vars(paths: RtmapPaths, config: TrialConfig, *, duckdb_path: Path | None = None) -> list[str]:
    """`--vars`: where this deployment's lake and DuckDB file are (or the copy being built), and the
    trial's QC limits the marts use (no environment writes)."""
    return ["--vars", json.dumps({"rtmap_lake": str(paths.lake.root),
                                  "rtmap_duckdb": str(duckdb_path or paths.duckdb_path), **qc_limits(config)})]


def qc_limits(config: TrialConfig) -> dict[str, float]:
    return {"qc_max_landmark_distance_mm": config.qc.max_landmark_distance_mm,
            "qc_max_folding_fraction": config.qc.max_folding_fraction}


DBT_RUNS_KEPT = 10
PARTIAL_PARSE = "partial_parse.msgpack"  # dbt's parse cache, valid while the project and --vars are unchanged


def dbt_run_target(paths: RtmapPaths, run_id: str) -> Path:
    """This run's dbt target folder, `<data>/logs/dbt/<run id>`, after pruning all but the newest runs.

    dagster-dbt's default is a new folder per run inside the dbt project (~2.4 MB each), which grows
    without bound under a nightly schedule and sits in the source tree rather than with the data.
    The newest run's `partial_parse.msgpack` is copied in, so dbt re-parses only what changed in the
    project instead of the whole project on every run.
    """
    runs = paths.root / "logs" / "dbt"
    runs.mkdir(parents=True, exist_ok=True)
    old = sorted((p for p in runs.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for stale in old[: max(len(old) - (DBT_RUNS_KEPT - 1), 0)]:
        shutil.rmtree(stale, ignore_errors=True)
    target = runs / run_id
    previous = [p / PARTIAL_PARSE for p in reversed(old) if (p / PARTIAL_PARSE).exists()]
    if previous and not (target / PARTIAL_PARSE).exists():
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(previous[0], target / PARTIAL_PARSE)
    return target


def staging_parents_args(context: dg.AssetExecutionContext) -> list[str] | None:
    """dbt args building the upstream models of a partial selection (not the selection itself).

    dagster-dbt runs exactly the selected models; in a DuckDB file where a full build never ran, their
    staging parents do not exist yet. None for a full build.
    """
    selected = sorted(k.path[-1] for k in context.selected_asset_keys if k.path[0] == "warehouse")
    if not selected or not context.is_subset:  # (assets_def is itself subsetted: compare nothing to it)
        return None
    return ["run", "--select", *(f"+{name}" for name in selected), "--exclude", *selected]


@contextlib.contextmanager
def swapped_duckdb(target: Path, run_id: str):
    """Yield a private copy of `target` to build into, then os.replace it over `target`.

    Builders are serialised by a lock file next to it (two cohort runs would otherwise each swap in
    a copy lacking the other's models); readers are never waited for: an open reader keeps the old
    inode. The copy replaces the target even after a failed build, as an in-place build would have
    kept the models that did succeed.
    """
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".build-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for stale in target.parent.glob(f".{target.name}.building*"):  # left by a killed build
            stale.unlink(missing_ok=True)
        # a fixed name (builders are serialised by the lock): dbt's --vars stay the same run to run, so its
        # partial-parse cache stays valid
        building = target.with_name(f".{target.name}.building")
        if target.exists():
            shutil.copy2(target, building)
        try:
            yield building
        finally:
            try:
                if building.exists():
                    with duckdb.connect(str(building)) as con:  # fold the WAL in before the swap
                        con.execute("checkpoint")
                    os.replace(building, target)  # copy2 kept the mode; a new file has the umask's
            finally:
                building.unlink(missing_ok=True)
                building.with_name(building.name + ".wal").unlink(missing_ok=True)


@dbt_assets(manifest=dbt_project.manifest_path, dagster_dbt_translator=LakeTranslator(), name="warehouse_models")
def warehouse_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, paths: RtmapPaths,
                     trial: TrialSettings):
    """Staging views and mart tables in data/rtmap.duckdb, with the YAML tests as asset checks.

    dbt builds into a copy that replaces rtmap.duckdb atomically when done, so a statistician with
    the file open keeps a consistent snapshot and never blocks the refresh.
    """
    target = dbt_run_target(paths, context.run.run_id)
    paths.lake.ensure_all(TABLES.values())  # dbt's delta plugin needs every source table to exist
    with swapped_duckdb(paths.duckdb_path, context.run.run_id) as building:
        dbt_args = dbt_vars(paths, trial.config, duckdb_path=building)
        parents = staging_parents_args(context)
        if parents:  # a partial selection (automation): first the models it reads, e.g. stg_pipeline_issues
            # plain dbt, not dbt.cli: dagster-dbt would rewrite the selection to its own asset subset
            done = subprocess.run([DBT_EXECUTABLE, *parents, *dbt_args, "--project-dir", str(DBT_DIR),
                                   "--profiles-dir", str(DBT_DIR), "--target-path", str(target / "parents"),
                                   "--log-path", str(target / "parents")], capture_output=True, text=True)
            if done.returncode:
                raise dg.Failure(f"dbt could not build the upstream models of the selection {parents}: "
                                 f"{(done.stdout + done.stderr)[-2000:]}")
        yield from dbt.cli(["build", *dbt_args], context=context, target_path=target).stream()


@dg.asset(
    deps=[dg.AssetKey(["warehouse", "patient_summary"]), dg.AssetKey(["warehouse", "classification_by_arm"])],
    description="Plotly HTML dashboard of the cohort: classes per arm and scheme, uncertainty vs probability of "
    "being inside, registration quality, patients with open issues.",
    group_name=COHORT,
    kinds={"plotly", "html"},
    automation_condition=COHORT_AUTOMATION,
)
def cohort_dashboard(paths: RtmapPaths, trial: TrialSettings) -> dg.MaterializeResult:
    with duckdb.connect(str(paths.duckdb_path), read_only=True) as con:
        summary = con.sql("select * from main.patient_summary").pl()
        by_arm = con.sql("select * from main.classification_by_arm").pl()
    # Links to each patient's viewer (dashboards/viewers/<id>.html, written by the patient's classification).
    out = build_cohort_dashboard(summary, by_arm, paths.lake.root / "dashboards" / "cohort_dashboard.html",
                                 qc_limits=qc_limits(trial.config))
    return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(out)), "patients": summary.height,
                                          "classified": int(summary["classified"].sum()) if summary.height else 0})
