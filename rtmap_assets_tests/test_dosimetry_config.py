"""Trial configuration: the bundled file loads; an invalid file gets one clear message naming the field."""

from __future__ import annotations

import pytest
import yaml

from rtmap_assets.config import DEFAULT_CONFIG_PATH, ConfigError, load_trial_config


def write(tmp_path, data) -> str:
    p = tmp_path / "trial.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def test_bundled_config_has_the_design_defaults():
    cfg = load_trial_config()
    assert cfg.trial == "SYNTH-HN"
    assert cfg.prescriptions("B") == {"low": 0.0, "intermediate": 54.0, "high": 60.0}
    assert (cfg.uncertainty.policy, cfg.uncertainty.radius_mm) == ("fixed", 5.0)
    t = cfg.thresholds
    assert (t.isodose_fraction, t.arm_tolerance_gy, t.volume_inside_fraction, t.dawson_infield, t.dawson_marginal) == (
        0.95, 0.5, 0.95, 0.95, 0.20)
    assert cfg.probability.samples >= 100 and cfg.dose_statistics.bin_width_gy == 0.01
    assert load_trial_config(DEFAULT_CONFIG_PATH) == cfg


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"trial": "T", "thresholds": {"isodose_fraktion": 0.9}}, "thresholds.isodose_fraktion"),  # typo
        ({"trial": "T", "thresholds": {"isodose_fraction": 1.5}}, "thresholds.isodose_fraction"),
        ({"trial": "T", "thresholds": {"dawson_marginal": 0.96}}, "thresholds"),  # marginal ≥ in-field
        ({"trial": "T", "uncertainty": {"policy": "median"}}, "uncertainty.policy"),
        ({"trial": "T", "uncertainty": {"radius_mm": 0}}, "uncertainty.radius_mm"),
        ({"trial": "T", "uncertainty": {"cohort_percentile": 101}}, "uncertainty.cohort_percentile"),
        ({"trial": "T", "arms": {"A": [54, 60, 0]}}, "arms"),  # the high level must be present
        ({"trial": "T", "arms": {"A": [-1, 60, 65]}}, "arms"),
        ({"trial": "T", "arms": {"A": [60, 65]}}, "arms.A"),
        ({"trial": "T", "probability": {"samples": 10}}, "probability.samples"),
        ({"trial": "T", "dose_statistics": {"bin_width_gy": 0}}, "dose_statistics.bin_width_gy"),
        ({"trial": "T", "aliases": {"ctv": ["CTV_high"]}}, "aliases.ctv"),  # no {dose} placeholder
        ({"arms": {"A": [54, 60, 65]}}, "trial"),
        ({"trial": "bad name!"}, "trial"),
    ],
)
def test_invalid_field_is_named_in_one_message(tmp_path, data, field):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_trial_config(path)
    msg = str(err.value)
    assert f"field '{field}" in msg and str(path) in msg
    assert "\n" not in msg  # one line, not pydantic's multi-line dump


def test_several_errors_report_the_first_and_count_the_rest(tmp_path):
    path = write(tmp_path, {"trial": "T", "uncertainty": {"radius_mm": -1}, "probability": {"samples": 1}})
    with pytest.raises(ConfigError, match=r"and 1 more"):
        load_trial_config(path)


@pytest.mark.parametrize(("text", "needle"), [("trial: [unclosed", "not valid YAML"), ("- a\n- b\n", "mapping")])
def test_unreadable_files(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=needle):
        load_trial_config(write(tmp_path, text))
    with pytest.raises(ConfigError, match="not found"):
        load_trial_config(tmp_path / "missing.yaml")
