"""Shared fixtures: small synthetic cohorts generated once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rtmap_assets.config import load_trial_config

TRIAL = "SYNTH-HN"


def _generate(root: Path, n: int, seed: int) -> Path:
    from rtmap_synth.cohort import GeneratorSettings, generate_cohort

    generate_cohort(root / "raw", root / "truth", root / "covariates" / f"{TRIAL}.csv", n_patients=n, seed=seed,
                    settings=GeneratorSettings(), config=load_trial_config())
    return root


@pytest.fixture(scope="session")
def small_cohort_2(tmp_path_factory) -> Path:
    """Data dir (raw/, truth/, covariates/) with 2 small synthetic patients; copy before mutating."""
    return _generate(tmp_path_factory.mktemp("cohort2"), 2, seed=11)


@pytest.fixture
def data_dir(tmp_path, small_cohort_2) -> Path:
    """A private, mutable copy of the 2-patient cohort as an rtmap data dir."""
    dst = tmp_path / "data"
    shutil.copytree(small_cohort_2, dst, symlinks=False)
    return dst


def load_script(name: str):
    """A module of the repository's scripts/ folder (they are run as files, not installed)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

