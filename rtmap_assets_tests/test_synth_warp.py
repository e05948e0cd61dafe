"""The known relapse -> planning warp: inverse accuracy, calibration, serialisation, phantom basics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rtmap_synth.phantom import Grid, Phantom
from rtmap_synth.warp import RelapseWarp


@pytest.fixture(scope="module")
def warp() -> RelapseWarp:
    return RelapseWarp.random(np.random.default_rng(42), 13.0)


def test_inverse_is_accurate_both_ways(warp):
    rng = np.random.default_rng(1)
    q = rng.uniform(-90, 90, size=(5000, 3))
    p = warp.relapse_to_planning(q)
    assert np.max(np.linalg.norm(warp.planning_to_relapse(p) - q, axis=1)) < 0.01
    p2 = rng.uniform(-90, 90, size=(5000, 3))
    assert np.max(np.linalg.norm(warp.relapse_to_planning(warp.planning_to_relapse(p2)) - p2, axis=1)) < 0.01


def test_component_form_matches_point_form(warp):
    q = np.random.default_rng(2).uniform(-50, 50, size=(100, 3))
    px, py, pz = warp.relapse_to_planning_xyz(q[:, 0], q[:, 1], q[:, 2])
    assert np.allclose(np.column_stack([px, py, pz]), warp.relapse_to_planning(q), atol=1e-12)


def test_random_warp_hits_the_mean_displacement_and_is_mostly_rigid():
    rng = np.random.default_rng(7)
    u = rng.uniform(-1, 1, size=(6000, 3))
    pts = (u[np.sum(u * u, axis=1) <= 1] * [60, 55, 70])[:2000]
    for target in (5.0, 13.0):
        w = RelapseWarp.random(np.random.default_rng(3), target, calibration_points_mm=pts)
        assert np.mean(w.displacement_mm(pts)) == pytest.approx(target, abs=0.01)
        assert max(abs(a) for a in w.rotation_deg) <= 3.0
    # The non-rigid part is a few mm: bumps' amplitudes are bounded.
    assert all(np.linalg.norm(a) <= 5.0 + 1e-9 for a in w.bump_amplitudes_mm)


def test_warp_round_trips_through_json(warp):
    back = RelapseWarp.from_dict(json.loads(json.dumps(warp.to_dict())))
    q = np.random.default_rng(4).uniform(-80, 80, size=(50, 3))
    assert np.array_equal(back.relapse_to_planning(q), warp.relapse_to_planning(q))


def test_phantom_round_trips_and_ctvs_are_nested():
    ph = Phantom.random(np.random.default_rng(9))
    back = Phantom.from_dict(json.loads(json.dumps(ph.to_dict())))
    assert back == ph
    g = Grid((64, 64, 40), (3.0, 3.0, 4.0), (-94.5, -94.5, -78.0))
    m = ph.masks(*g.broadcast_axes())
    assert m["ctv_high"].sum() > 100
    assert not np.any(m["ctv_high"] & ~m["ctv_intermediate"])
    assert not np.any(m["ctv_intermediate"] & ~m["ctv_low"])
    assert not np.any(m["ctv_low"] & ~m["body"])
    assert m["thyroid_cartilage"].sum() > 20 and not np.any(m["thyroid_cartilage"] & ~m["body"])
    hu = ph.hu(*g.broadcast_axes(), m)
    assert -1000 <= hu.min() and hu.max() <= 1100
    assert 150 < np.mean(hu[m["thyroid_cartilage"]]) < 250
    assert np.median(hu[m["mandible"]]) > 700
