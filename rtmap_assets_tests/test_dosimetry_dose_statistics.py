"""Rule 14: dose statistics against analytic dose fields (uniform, linear gradient, step edge)."""

from __future__ import annotations

import numpy as np
import pytest

from rtmap_assets.dosimetry.dose_statistics import cumulative_dvh, dose_at_volume, structure_statistics

PRES = {"low": 54.0, "intermediate": 60.0, "high": 65.0}  # thresholds 51.3, 57, 61.75
VOX_CC = 0.008  # 2 mm isotropic
W = 0.01


def stats(doses, prescriptions=PRES):
    return structure_statistics(np.asarray(doses, dtype=np.float32), VOX_CC, prescriptions, 0.95, W)


def test_uniform_field():
    s = stats(np.full(1000, 60.0))
    assert s["volume_cc"] == pytest.approx(8.0)
    for k in ("mean_gy", "min_gy", "max_gy", "d98_gy", "d95_gy", "d50_gy", "d2_gy"):
        assert s[k] == pytest.approx(60.0, abs=0.1), k
    assert (s["v95_low_pct"], s["v95_intermediate_pct"], s["v95_high_pct"]) == (100.0, 100.0, 0.0)


def test_linear_gradient():
    # A 100-voxel-long box with dose rising linearly from 50 to 60 Gy along it (voxel-centre sampled,
    # 16 voxels per plane): the continuous answer is mean 55, D95 50.5, D50 55, D2 59.8, D98 50.2,
    # V95(54 Gy) = 87 %, V95(60 Gy) = 30 %, V95(65 Gy) = 0 %.
    plane = 50.0 + 0.1 * (np.arange(100) + 0.5)
    s = stats(np.repeat(plane, 16))
    assert s["mean_gy"] == pytest.approx(55.0, abs=0.1)
    assert s["d95_gy"] == pytest.approx(50.5, abs=0.1)
    assert s["d98_gy"] == pytest.approx(50.2, abs=0.1)
    assert s["d50_gy"] == pytest.approx(55.0, abs=0.1)
    assert s["d2_gy"] == pytest.approx(59.8, abs=0.1)
    assert s["v95_low_pct"] == pytest.approx(87.0, abs=1.0)
    assert s["v95_intermediate_pct"] == pytest.approx(30.0, abs=1.0)
    assert s["v95_high_pct"] == 0.0


def test_step_edge():
    # Half the volume at 60 Gy, half at 30 Gy: mean 45, D95 = D98 = 30, D50 = D2 = 60 (the hottest half
    # all gets 60), V95(60 Gy) = 50 %.
    s = stats(np.concatenate([np.full(500, 60.0), np.full(500, 30.0)]))
    assert s["mean_gy"] == pytest.approx(45.0, abs=0.1)
    assert s["d95_gy"] == pytest.approx(30.0, abs=0.1) and s["d98_gy"] == pytest.approx(30.0, abs=0.1)
    assert s["d50_gy"] == pytest.approx(60.0, abs=0.1) and s["d2_gy"] == pytest.approx(60.0, abs=0.1)
    assert s["v95_intermediate_pct"] == pytest.approx(50.0, abs=1.0)
    assert s["min_gy"] == 30.0 and s["max_gy"] == 60.0


def test_dx_agrees_with_the_voxel_quantile_and_is_ordered():
    rng = np.random.default_rng(0)
    d = rng.normal(50.0, 5.0, 20000)
    s = stats(d)
    for x in (98, 95, 50, 2):
        assert s[f"d{x}_gy"] == pytest.approx(np.percentile(d, 100 - x), abs=0.05)
    seq = [s[k] for k in ("min_gy", "d98_gy", "d95_gy", "d50_gy", "d2_gy", "max_gy")]
    assert seq == sorted(seq)


def test_cumulative_dvh_shape():
    edges, v = cumulative_dvh(np.array([0.0, 1.0, 2.0, 3.0]), 0.5)
    assert v[0] == 1.0 and v[-1] == 0.0 and np.all(np.diff(v) <= 0)
    # V(2.0) = 0.5 and V(2.5) = 0.25 (the voxel at 2 Gy spread over [2, 2.5)); V(3.0) = 0.25
    assert dose_at_volume(edges, v, 50) == pytest.approx(2.0)
    assert dose_at_volume(edges, v, 40) == pytest.approx(2.2)
    assert dose_at_volume(edges, v, 25) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        dose_at_volume(edges, v, 0)
    with pytest.raises(ValueError):
        cumulative_dvh(np.array([]), 0.5)


def test_empty_structure_and_unknown_prescriptions():
    s = stats(np.array([]))
    assert s["volume_cc"] == 0.0 and s["mean_gy"] is None and s["d95_gy"] is None and s["v95_low_pct"] is None
    s = stats(np.full(10, 60.0), prescriptions=None)
    assert s["mean_gy"] == pytest.approx(60.0) and s["v95_high_pct"] is None
    s = stats(np.full(10, 60.0), prescriptions={"low": 0.0, "intermediate": 0.0, "high": 50.0})
    assert s["v95_low_pct"] is None and s["v95_high_pct"] == 100.0
