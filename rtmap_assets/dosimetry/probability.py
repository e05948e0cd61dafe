"""Probability that the recurrence centroid lies inside each level's 95 % isodose (rule 13).

The mapped centroid is uncertain: the registration error at the recurrence is modelled as an
isotropic Gaussian displacement with standard deviation σ per axis. rtmap uses σ = the patient's
registration uncertainty (landmark distance, rule 5) per axis — a deliberately conservative choice
(the expected 3-D displacement is then ≈ 1.6 σ); the caller passes σ so another choice is one
argument away. P(dose ≥ 0.95·P) is estimated by Monte Carlo with a seeded generator (deterministic
for a given seed), with trilinear dose interpolation (0 outside the dose grid), using the same
samples for every level so the probabilities of nested isodoses stay ordered. σ = 0 reproduces the
hard centroid class exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk

from rtmap_assets.dosimetry.classification import dose_at_points
from rtmap_assets.dosimetry.regions import isodose_threshold


def displaced_points(centre_mm: np.ndarray, sigma_mm: float, samples: int, seed: int) -> np.ndarray:
    """`samples` points around the centre, isotropic Gaussian with σ per axis; σ = 0 -> the centre."""
    if sigma_mm < 0:
        raise ValueError(f"sigma must be >= 0 mm, got {sigma_mm}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    rng = np.random.default_rng(seed)
    return np.asarray(centre_mm, dtype=float)[None, :] + rng.normal(0.0, 1.0, size=(samples, 3)) * sigma_mm


def probability_inside(
    dose: sitk.Image,
    centre_mm: np.ndarray,
    sigma_mm: float,
    prescriptions: Mapping[str, float],
    fraction: float,
    *,
    samples: int,
    seed: int,
) -> dict[str, float | None]:
    """Level -> P(dose at the displaced centroid ≥ fraction·P); None for absent levels (P = 0)."""
    pts = displaced_points(centre_mm, sigma_mm, samples, seed)
    values, _ = dose_at_points(dose, pts)
    out: dict[str, float | None] = {}
    for level, p in prescriptions.items():
        thr = isodose_threshold(p, fraction)
        out[level] = None if thr is None else float(np.count_nonzero(values >= thr)) / len(values)
    return out
