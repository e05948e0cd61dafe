"""ITK's cubic `BSplineTransform` evaluated with numpy: at scattered points, and on whole lattices.

A cubic B-spline displacement is a tensor product: along each axis a point sees 4 control nodes with
weights that depend only on its coordinate on that axis. At scattered points (`separable_support`) that
gives 3 x 4 weights per point instead of 64. On an axis-aligned lattice it is better still: the weights
form one small (lattice points x nodes) matrix per axis, and the displacement of every lattice point is
three matrix products with the coefficient grid (`lattice_displacement`: ~100x less work than
evaluating the transform point by point, which is what ITK's displacement-field filter does). The
registration's coarse-to-fine refit (`refit_coefficients`) is a least-squares problem with the same
Kronecker structure, solved per axis.

Conventions follow ITK's evaluation exactly (support start floor(c - 1), weights B3(c - node), points
outside the valid region left unmoved, the upper-edge nudge), so the results agree with SimpleITK to
rounding (tests compare both).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def cubic_bspline(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    out = np.where(ax < 1, (4 - 6 * ax**2 + 3 * ax**3) / 6, 0.0)
    return np.where((ax >= 1) & (ax < 2), (2 - ax) ** 3 / 6, out)


def itk_upper_edge_inside(c: np.ndarray, size: np.ndarray) -> np.ndarray:
    """ITK's BSplineTransform::InsideValidRegion moves an index within 4 ULP of the upper edge of the
    valid region (size - 2) 6 ULP inside, so a point exactly on that edge is still deformed."""
    c = np.ascontiguousarray(c, dtype=np.float64)
    edge = np.ascontiguousarray(np.broadcast_to((np.asarray(size) - 2).astype(np.float64), c.shape))
    near = (np.abs(c - edge) <= 0.1 * np.finfo(np.float64).eps) | (
        (c > 0) & (np.abs(c.view(np.int64) - edge.view(np.int64)) <= 4))
    if not near.any():
        return c
    return np.where(near, (edge.view(np.int64) - 6).view(np.float64), c)


def _coefficient_grid(bspline: sitk.BSplineTransform) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    coeff = bspline.GetCoefficientImages()[0]
    return (np.asarray(coeff.GetSize(), dtype=np.int64), np.asarray(coeff.GetOrigin()),
            np.asarray(coeff.GetSpacing()), np.asarray(coeff.GetDirection()).reshape(3, 3))


def separable_support(bspline: sitk.BSplineTransform, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ITK's cubic BSplineTransform evaluation at `points`, kept separable: (first support node per axis
    (N, 3) int64, per-axis weights (N, 3, 4), coefficient grid size (3,) int64). u(p) = sum over a, b, c of
    weights[:, 0, a] * weights[:, 1, b] * weights[:, 2, c] * coef[node(start + (a, b, c))]. Points outside
    the valid region get weight 0 (ITK leaves them unmoved) and a start clipped into the grid."""
    size, origin, spacing, direction = _coefficient_grid(bspline)
    # Continuous index (i, j, k). The inverse, not the transpose, of the direction as ITK: a grid made from a
    # float32 image has direction cosines orthonormal only to ~1e-7 (the same bits for axis-aligned grids).
    c = ((np.asarray(points, dtype=float) - origin) @ np.linalg.inv(direction).T) / spacing
    c = itk_upper_edge_inside(c, size)
    start = np.floor(c - 1).astype(np.int64)
    valid = np.all((start >= 0) & (start + 3 < size), axis=1)
    offs = np.arange(4)
    weights = np.stack([cubic_bspline(c[:, d, None] - (start[:, d, None] + offs[None])) for d in range(3)], axis=1)
    weights[~valid] = 0.0
    return np.clip(start, 0, np.maximum(size - 4, 0)), weights, size


def axis_matrix(c: np.ndarray, n_nodes: int) -> np.ndarray:
    """(len(c), n_nodes) weights of one axis: row r holds the 4 cubic weights of continuous index c[r] at its
    support nodes, or zeros where c[r] is outside the valid region on this axis (then the whole point is,
    and ITK leaves it unmoved: the zero row makes its tensor-product weight zero)."""
    c = itk_upper_edge_inside(np.asarray(c, dtype=np.float64), np.int64(n_nodes))
    start = np.floor(c - 1).astype(np.int64)
    rows = np.flatnonzero((start >= 0) & (start + 3 < n_nodes))
    m = np.zeros((len(c), n_nodes))
    for a in range(4):
        m[rows, start[rows] + a] = cubic_bspline(c[rows] - (start[rows] + a))
    return m


def _axis_aligned(direction: np.ndarray) -> bool:
    return bool(np.array_equal(np.asarray(direction, dtype=float).reshape(3, 3), np.eye(3)))


def lattice_axis_matrices(bspline: sitk.BSplineTransform, origin: np.ndarray, spacing: np.ndarray,
                          size: np.ndarray) -> list[np.ndarray] | None:
    """Per-axis weight matrices (x, y, z) of the lattice origin + spacing * index (identity direction), or
    None when the B-spline's control grid is not axis-aligned (the weights are then not separable)."""
    n_nodes, c_origin, c_spacing, c_direction = _coefficient_grid(bspline)
    if not _axis_aligned(c_direction):
        return None
    mats = []
    for d in range(3):
        p = float(origin[d]) + float(spacing[d]) * np.arange(int(size[d]), dtype=np.float64)  # as ITK: o + s * i
        mats.append(axis_matrix((p - c_origin[d]) / c_spacing[d], int(n_nodes[d])))
    return mats


def _apply_axes(mats: list[np.ndarray], coef: np.ndarray) -> np.ndarray:
    """(Mz x My x Mx) applied to `coef` [nodes_z, nodes_y, nodes_x] -> [z, y, x] (three small products)."""
    mx, my, mz = mats
    t = coef @ mx.T  # [cz, cy, x]
    t = np.einsum("yb,cbx->cyx", my, t)  # [cz, y, x]
    return np.tensordot(mz, t, axes=(1, 0))  # [z, y, x]


def bspline_lattice_displacement(bspline: sitk.BSplineTransform, origin: np.ndarray, spacing: np.ndarray,
                                 size: np.ndarray) -> np.ndarray | None:
    """u(p) of `bspline` at every point of an axis-aligned lattice, [z, y, x, 3] of (x, y, z) mm; None when
    the control grid is not axis-aligned."""
    mats = lattice_axis_matrices(bspline, origin, spacing, size)
    if mats is None:
        return None
    n = _coefficient_grid(bspline)[0]
    params = np.asarray(bspline.GetParameters(), dtype=float).reshape(3, int(n[2]), int(n[1]), int(n[0]))
    return np.stack([_apply_axes(mats, params[d]) for d in range(3)], axis=-1)


def _linear_parts(transform: sitk.Transform) -> tuple[np.ndarray, np.ndarray] | None:
    """(matrix, offset) of a linear transform (q = matrix p + offset, ITK's own offset), else None."""
    name = transform.GetName()
    if name == "TranslationTransform":
        return np.eye(3), np.asarray(sitk.TranslationTransform(transform).GetOffset(), dtype=float)
    typed = {"Euler3DTransform": sitk.Euler3DTransform, "AffineTransform": sitk.AffineTransform,
             "VersorRigid3DTransform": sitk.VersorRigid3DTransform}.get(name)
    if typed is None:
        return None
    t = typed(transform)
    m = np.asarray(t.GetMatrix(), dtype=float).reshape(3, 3)
    centre = np.asarray(t.GetCenter(), dtype=float)
    return m, np.asarray(t.GetTranslation(), dtype=float) + centre - m @ centre  # ITK's ComputeOffset


def lattice_displacement(transform: sitk.Transform, reference: sitk.Image) -> np.ndarray | None:
    """T(p) - p at every voxel centre p of `reference`, [z, y, x, 3] float64, by tensor products, when T is
    what the sitk engine returns (a B-spline applied first, then linear transforms: p -> L(p + u(p))), a lone
    B-spline or linear transforms, on axis-aligned grids; None otherwise (the caller then evaluates T per
    point)."""
    if reference.GetDimension() != 3 or not _axis_aligned(reference.GetDirection()):
        return None
    chain = [transform]
    if transform.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        # ITK applies the last-added transform first: reverse into application order.
        chain = [composite.GetNthTransform(i) for i in reversed(range(composite.GetNumberOfTransforms()))]
    bspline = None
    if chain and chain[0].GetName() == "BSplineTransform":
        bspline = sitk.BSplineTransform(chain[0])
        if bspline.GetOrder() != 3:
            return None
        chain = chain[1:]
    matrix, offset = np.eye(3), np.zeros(3)
    for t in chain:  # compose the linear tail: q = matrix p + offset
        parts = _linear_parts(t)
        if parts is None:
            return None
        matrix, offset = parts[0] @ matrix, parts[0] @ offset + parts[1]
    origin, spacing = np.asarray(reference.GetOrigin()), np.asarray(reference.GetSpacing())
    size = np.asarray(reference.GetSize())
    axes = [origin[d] + spacing[d] * np.arange(int(size[d]), dtype=np.float64) for d in range(3)]
    p = np.stack(np.broadcast_arrays(axes[0][None, None, :], axes[1][None, :, None], axes[2][:, None, None]), -1)
    moved = p
    if bspline is not None:
        u = bspline_lattice_displacement(bspline, origin, spacing, size)
        if u is None:
            return None
        moved = p + u
    return moved @ matrix.T + offset - p


def refit_coefficients(source: sitk.BSplineTransform, target: sitk.BSplineTransform, reference: sitk.Image,
                       step: int = 3, ridge: float = 1e-6) -> np.ndarray | None:
    """Coefficients (ITK parameter order) of `target`'s control grid that fit `source`'s displacement in the
    least-squares sense over every `step`-th voxel of `reference` (+ `ridge` |x|^2), or None when a grid is not
    axis-aligned. With A = Az x Ay x Ax (the target's weights on the lattice) and S likewise for the source,
    the normal equations (A'A + ridge I) x = A'S c are Kronecker products of per-axis matrices: solved exactly
    through each axis's eigendecomposition (milliseconds, instead of a sparse solve over all lattice points)."""
    if not _axis_aligned(reference.GetDirection()):
        return None
    origin = np.asarray(reference.GetOrigin())
    spacing = np.asarray(reference.GetSpacing()) * step
    size = -(-np.asarray(reference.GetSize()) // step)  # indices 0, step, 2 step, ... < size
    a = lattice_axis_matrices(target, origin, spacing, size)
    s = lattice_axis_matrices(source, origin, spacing, size)
    if a is None or s is None:
        return None
    n_src, n_tgt = _coefficient_grid(source)[0], _coefficient_grid(target)[0]
    src = np.asarray(source.GetParameters(), dtype=float).reshape(3, int(n_src[2]), int(n_src[1]), int(n_src[0]))
    cross = [ad.T @ sd for ad, sd in zip(a, s)]  # A'S per axis: (target nodes, source nodes)
    eig = [np.linalg.eigh(ad.T @ ad) for ad in a]  # A'A per axis = Q diag(lam) Q'
    lam = eig[2][0][:, None, None] * eig[1][0][None, :, None] * eig[0][0][None, None, :]  # [z, y, x]
    qs = [q for _, q in eig]
    out = np.empty((3, int(n_tgt[2]), int(n_tgt[1]), int(n_tgt[0])))
    for d in range(3):
        rhs = _apply_axes(cross, src[d])  # A'S c, [z, y, x] of target nodes
        coef = _apply_axes([q.T for q in qs], rhs) / (lam + ridge)
        out[d] = _apply_axes(qs, coef)
    return out.reshape(-1)
