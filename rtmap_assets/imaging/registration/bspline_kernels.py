"""Compiled inner loops of the B-spline Mattes-MI objective (`bspline_mi`), one pass over the samples each.

A cubic B-spline displacement at a sample is a 4 x 4 x 4 tensor product of per-axis weights over the
control points (ITK's `BSplineTransform` evaluation). Kept separable — 3 x 4 weights and a start index per
sample instead of a (samples, nodes) sparse matrix with 64 entries per row — the displacement, the rigid
map, the trilinear moving-image gather and the gradient scatter are each one loop with no temporaries:
the objective went from ~45 ms to a few ms per evaluation at 45,000 samples (benchmarks/SPEED.md, round 3).

numba compiles these on first use and caches the machine code beside this file (`cache=True`), so a
process pays the compilation once per machine, not once per patient. Serial loops: the result does not
depend on how threads are scheduled (the registration is reproducible run to run).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def displacements(start: np.ndarray, weights: np.ndarray, coef: np.ndarray, grid_size: np.ndarray) -> np.ndarray:
    """(N, 3) displacement u(p) = sum over the 4^3 support of wx * wy * wz * coef[node].

    `start` (N, 3) int: first support node per axis (x, y, z); `weights` (N, 3, 4): per-axis cubic weights
    (all 0 for a point outside the valid region); `coef` (nodes, 3), nodes flattened x-fastest as ITK."""
    n = start.shape[0]
    nx, ny = grid_size[0], grid_size[1]
    out = np.zeros((n, 3))
    for s in range(n):
        u0 = 0.0
        u1 = 0.0
        u2 = 0.0
        for c in range(4):
            wz = weights[s, 2, c]
            if wz == 0.0:
                continue
            for b in range(4):
                wzy = wz * weights[s, 1, b]
                base = ((start[s, 2] + c) * ny + start[s, 1] + b) * nx + start[s, 0]
                for a in range(4):
                    w = wzy * weights[s, 0, a]
                    node = base + a
                    u0 += w * coef[node, 0]
                    u1 += w * coef[node, 1]
                    u2 += w * coef[node, 2]
        out[s, 0] = u0
        out[s, 1] = u1
        out[s, 2] = u2
    return out


@njit(cache=True, nogil=True)
def warp_and_sample(points: np.ndarray, start: np.ndarray, weights: np.ndarray, coef: np.ndarray,
                    grid_size: np.ndarray, rigid_matrix: np.ndarray, rigid_centre: np.ndarray,
                    rigid_translation: np.ndarray, stack: np.ndarray, m_origin: np.ndarray,
                    m_direction: np.ndarray, m_spacing: np.ndarray, m_shape: np.ndarray):
    """Moving value, physical gradient and inside flag at m = R (p + u(p) - centre) + centre + translation.

    `stack` (voxels, 4) float32: the moving image and its x/y/z index-space gradients (per mm), voxels
    x-fastest; trilinear interpolation as `MovingSampler` (index clamped to the grid, inside = within the
    voxel centres)."""
    n = points.shape[0]
    u = displacements(start, weights, coef, grid_size)
    mval = np.empty(n)
    mgrad = np.empty((n, 3))
    inside = np.empty(n, dtype=np.bool_)
    nx, ny = m_shape[0], m_shape[1]
    q = np.empty(3)
    mp = np.empty(3)  # moving point minus the moving image's origin
    ci = np.empty(3)
    for s in range(n):
        for d in range(3):
            q[d] = points[s, d] + u[s, d] - rigid_centre[d]
        ok = True
        for d in range(3):
            mp[d] = rigid_matrix[d, 0] * q[0] + rigid_matrix[d, 1] * q[1] + rigid_matrix[d, 2] * q[2] \
                + rigid_centre[d] + rigid_translation[d] - m_origin[d]
        for d in range(3):
            ci[d] = (mp[0] * m_direction[0, d] + mp[1] * m_direction[1, d] + mp[2] * m_direction[2, d]) / m_spacing[d]
            hi = m_shape[d] - 1
            if ci[d] < 0.0 or ci[d] > hi:
                ok = False
            if ci[d] < 0.0:
                ci[d] = 0.0
            elif ci[d] > hi - 1e-6:
                ci[d] = hi - 1e-6
        i0 = int(np.floor(ci[0]))
        j0 = int(np.floor(ci[1]))
        k0 = int(np.floor(ci[2]))
        fx = ci[0] - i0
        fy = ci[1] - j0
        fz = ci[2] - k0
        v0 = 0.0
        g0 = 0.0
        g1 = 0.0
        g2 = 0.0
        for dz in range(2):
            wz = fz if dz else 1.0 - fz
            for dy in range(2):
                wzy = wz * (fy if dy else 1.0 - fy)
                row = ((k0 + dz) * ny + j0 + dy) * nx + i0
                for dx in range(2):
                    w = wzy * (fx if dx else 1.0 - fx)
                    vox = row + dx
                    v0 += w * stack[vox, 0]
                    g0 += w * stack[vox, 1]
                    g1 += w * stack[vox, 2]
                    g2 += w * stack[vox, 3]
        mval[s] = v0
        # index-space gradient per mm -> physical gradient (direction @ g)
        for d in range(3):
            mgrad[s, d] = m_direction[d, 0] * g0 + m_direction[d, 1] * g1 + m_direction[d, 2] * g2
        inside[s] = ok
    return mval, mgrad, inside


@njit(cache=True, nogil=True)
def scatter_gradient(start: np.ndarray, weights: np.ndarray, per_sample: np.ndarray, grid_size: np.ndarray,
                     n_nodes: int) -> np.ndarray:
    """(nodes, 3) = A^T per_sample: each sample's (3,) vector spread over its 4^3 support with its weights (the
    transpose of `displacements`, hence the same loop over the support)."""
    nx, ny = grid_size[0], grid_size[1]
    out = np.zeros((n_nodes, 3))
    for s in range(start.shape[0]):
        g0 = per_sample[s, 0]
        g1 = per_sample[s, 1]
        g2 = per_sample[s, 2]
        for c in range(4):
            wz = weights[s, 2, c]
            if wz == 0.0:
                continue
            for b in range(4):
                wzy = wz * weights[s, 1, b]
                base = ((start[s, 2] + c) * ny + start[s, 1] + b) * nx + start[s, 0]
                for a in range(4):
                    w = wzy * weights[s, 0, a]
                    node = base + a
                    out[node, 0] += w * g0
                    out[node, 1] += w * g1
                    out[node, 2] += w * g2
    return out


@njit(cache=True, inline="always")
def _b3(x: float) -> float:
    ax = abs(x)
    if ax < 1.0:
        return (4.0 - 6.0 * ax * ax + 3.0 * ax * ax * ax) / 6.0
    if ax < 2.0:
        return (2.0 - ax) ** 3 / 6.0
    return 0.0


@njit(cache=True, inline="always")
def _b3_derivative(x: float) -> float:
    ax = abs(x)
    sign = 1.0 if x > 0 else (-1.0 if x < 0 else 0.0)
    if ax < 1.0:
        return sign * (-12.0 * ax + 9.0 * ax * ax) / 6.0
    if ax < 2.0:
        return -sign * 3.0 * (2.0 - ax) ** 2 / 6.0
    return 0.0


@njit(cache=True, nogil=True)
def mattes_mi(fixed_bin: np.ndarray, mval: np.ndarray, mgrad: np.ndarray, inside: np.ndarray, rigid_matrix: np.ndarray,
              m_lo: float, m_hi: float, m_bin_width: float, n_bins_padded: int, pad: int):
    """Mattes MI of the samples (fixed intensities in box bins, moving in cubic Parzen windows) and its
    derivative with respect to each sample's displacement u before the rigid map: (mi, (N, 3))."""
    n = mval.shape[0]
    nb = n_bins_padded
    joint = np.zeros((nb, nb))
    t = np.empty(n)
    n_in = 0
    for s in range(n):
        v = min(max(mval[s], m_lo), m_hi)
        t[s] = (v - m_lo) / m_bin_width + pad
        if not inside[s]:
            continue
        n_in += 1
        t0 = int(np.floor(t[s]))
        f = fixed_bin[s]
        for k in range(4):
            jb = t0 - 1 + k
            joint[f, jb] += _b3(jb - t[s])
    n_in = max(n_in, 1)
    joint /= n_in
    pm = joint.sum(axis=0)
    pf = joint.sum(axis=1)
    eps = 1e-12
    mi = 0.0
    for i in range(nb):
        for j in range(nb):
            p = joint[i, j]
            if p > eps:
                mi += p * np.log(p / (pf[i] * pm[j]))
    logratio = np.empty((nb, nb))
    for i in range(nb):
        for j in range(nb):
            logratio[i, j] = np.log(max(joint[i, j], eps)) - np.log(max(pm[j], eps))
    du = np.zeros((n, 3))
    for s in range(n):
        # d joint / d t_s = -B3'(jb - t) / N; dMI/dt_s = sum over the window of that * logratio
        if not inside[s] or not (m_lo < mval[s] < m_hi):
            continue
        t0 = int(np.floor(t[s]))
        f = fixed_bin[s]
        dmi_dt = 0.0
        for k in range(4):
            jb = t0 - 1 + k
            dmi_dt -= _b3_derivative(jb - t[s]) * logratio[f, jb]
        scale = dmi_dt / n_in / m_bin_width
        for e in range(3):  # chain through the rigid matrix: d/du = (d/dm) @ R
            du[s, e] = scale * (mgrad[s, 0] * rigid_matrix[0, e] + mgrad[s, 1] * rigid_matrix[1, e]
                                + mgrad[s, 2] * rigid_matrix[2, e])
    return mi, du
