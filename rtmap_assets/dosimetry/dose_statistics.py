"""Dose statistics per structure (rule 14). Conventions: docs/DOSIMETRY.md.

- Occupancy: a voxel belongs to a structure when its mask value (rasterised with the contours'
  volume, rule 3) is set; each voxel carries the dose at its centre and the volume of one voxel.
- Volume: voxel count × voxel volume, in cc.
- Mean / min / max: over the voxel doses (float64 accumulation).
- Dx (D98, D95, D50, D2): the minimum dose received by the hottest x % of the volume, read off the
  cumulative DVH built with bins of `bin_width_gy`; within a bin the voxels' volume is taken as
  spread uniformly, so the cumulative DVH is piecewise linear and Dx is interpolated linearly
  (error ≤ one bin width against the exact voxel quantile), then clipped to [min, max].
- V95 % of a level: percentage of the voxels with dose ≥ 0.95·P (direct count; None when P = 0).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rtmap_assets.config import LEVELS
from rtmap_assets.dosimetry.regions import isodose_threshold

DX_PERCENTS: tuple[int, ...] = (98, 95, 50, 2)
STAT_COLUMNS: tuple[str, ...] = (
    "volume_cc", "mean_gy", "min_gy", "max_gy", "d98_gy", "d95_gy", "d50_gy", "d2_gy",
    "v95_low_pct", "v95_intermediate_pct", "v95_high_pct",
)


def cumulative_dvh(doses: np.ndarray, bin_width_gy: float) -> tuple[np.ndarray, np.ndarray]:
    """(edges, V) with V[i] = fraction of the volume receiving ≥ edges[i]; V[0] = 1, V[-1] = 0."""
    d = np.asarray(doses, dtype=np.float64).ravel()
    if d.size == 0:
        raise ValueError("cumulative_dvh: no voxels")
    if not bin_width_gy > 0:
        raise ValueError(f"bin width must be > 0 Gy, got {bin_width_gy}")
    start = np.floor(d.min() / bin_width_gy)
    stop = np.floor(d.max() / bin_width_gy) + 1
    edges = np.arange(start, stop + 1) * bin_width_gy
    counts, _ = np.histogram(np.clip(d, edges[0], edges[-1] - 1e-9 * bin_width_gy), bins=edges)
    above = np.concatenate([np.cumsum(counts[::-1])[::-1], [0]])
    return edges, above / d.size


def dose_at_volume(edges: np.ndarray, volume_fraction: np.ndarray, percent: float) -> float:
    """Dx: the largest dose D with V(D) ≥ x % on the piecewise-linear cumulative DVH."""
    x = percent / 100.0
    if not 0 < x <= 1:
        raise ValueError(f"Dx needs 0 < x ≤ 100, got {percent}")
    i = int(np.nonzero(volume_fraction >= x)[0][-1])  # V[0] = 1 ≥ x, V[-1] = 0 < x: i < len - 1
    v_hi, v_lo = volume_fraction[i], volume_fraction[i + 1]
    return float(edges[i] + (v_hi - x) / (v_hi - v_lo) * (edges[i + 1] - edges[i]))


def structure_statistics(
    doses: np.ndarray,
    voxel_volume_cc: float,
    prescriptions: Mapping[str, float] | None,
    fraction: float,
    bin_width_gy: float,
) -> dict[str, float | None]:
    """Statistics of one structure from its voxel doses; an empty structure has volume 0 and null doses.

    `prescriptions` None (arm not resolved) leaves every V95 null.
    """
    d = np.asarray(doses, dtype=np.float64).ravel()
    out: dict[str, float | None] = {c: None for c in STAT_COLUMNS}
    out["volume_cc"] = d.size * voxel_volume_cc
    if d.size == 0:
        return out
    out["mean_gy"] = float(d.mean())
    out["min_gy"] = float(d.min())
    out["max_gy"] = float(d.max())
    edges, vol = cumulative_dvh(d, bin_width_gy)
    for x in DX_PERCENTS:
        # Interpolating within a bin can step up to one bin past the extremes; a Dx is a dose some voxel got.
        out[f"d{x}_gy"] = min(max(dose_at_volume(edges, vol, x), out["min_gy"]), out["max_gy"])
    if prescriptions is not None:
        for level in LEVELS:
            thr = isodose_threshold(prescriptions.get(level, 0.0), fraction)
            if thr is not None:
                out[f"v95_{level}_pct"] = 100.0 * float(np.count_nonzero(d >= thr)) / d.size
    return out
