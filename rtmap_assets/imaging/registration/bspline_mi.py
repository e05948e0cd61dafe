"""Sparse B-spline Mattes mutual information: the B-spline stage of the default ``"sitk"`` engine.

SimpleITK's own Mattes metric treats the B-spline Jacobian as dense (cost per sample ~ number of
parameters, ~1 s per iteration at a 30 mm grid). Here the displacement at N sample points is a sparse
(N, nodes) matrix times the coefficients (each sample touches 4^3 control points, exactly as ITK's cubic
`BSplineTransform` evaluates it), so the metric and its analytic gradient cost a few sparse products and
scipy's L-BFGS-B optimises the coefficients, which go back into the SimpleITK transform unchanged.

`bspline_mi_objective` builds the objective (-MI + Laplacian smoothness) on its own so its gradient can be
checked against finite differences; `optimise_bspline_mi` minimises it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from rtmap_assets.imaging.bspline_eval import refit_coefficients, separable_support

if TYPE_CHECKING:
    from rtmap_assets.imaging.registration.sitk_engine import SitkSettings

log = logging.getLogger(__name__)

def _kernels() -> Any:
    """The compiled loops (`bspline_kernels`), imported on first use: numba's import (~0.2 s) then happens where the
    sitk engine preloads the B-spline stage, beside its ITK stages, not when the imaging code is imported."""
    from rtmap_assets.imaging.registration import bspline_kernels

    return bspline_kernels


# Parzen window padding (bins) either side of the moving intensity range, as ITK's Mattes metric.
HISTOGRAM_PAD = 2


def _support_weights(bspline: sitk.BSplineTransform, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(flat node indices (N, 4, 4, 4), weights (N, 4, 4, 4), node count): `separable_support` expanded."""
    start, w, size = separable_support(bspline, points)
    offs = np.arange(4)
    ix, iy, iz = (start[:, d, None] + offs for d in range(3))  # (N, 4) each
    # ITK flattens coefficient images x-fastest.
    flat = (iz[:, :, None, None] * size[1] + iy[:, None, :, None]) * size[0] + ix[:, None, None, :]
    weights = w[:, 2, :, None, None] * w[:, 1, None, :, None] * w[:, 0, None, None, :]
    n_nodes = int(np.prod(size))
    return np.clip(flat, 0, n_nodes - 1), weights, n_nodes


def bspline_weight_matrix(bspline: sitk.BSplineTransform, points: np.ndarray):
    """Sparse (N, nodes) matrix A with displacement u(points) = A @ coefficients (nodes, 3).

    Reproduces ITK's cubic BSplineTransform evaluation (support start = floor(c - 1), weights
    B3(c - node)) so the optimised coefficients can be handed back to SimpleITK unchanged.
    Points outside the transform's valid region get an empty row (ITK leaves them unmoved); a point on
    its upper edge is moved inside as ITK does.
    """
    from scipy import sparse

    flat, weights, n_nodes = _support_weights(bspline, points)
    n = len(points)
    # Built as CSR directly (64 entries per row, in the order COO -> CSR would give them): the same matrix
    # without the COO conversion; sum_duplicates merges the clipped entries of rows outside the valid region.
    a = sparse.csr_matrix((weights.reshape(-1), flat.reshape(-1), np.arange(0, 64 * n + 1, 64)), shape=(n, n_nodes))
    a.sum_duplicates()
    return a



def laplacian_matrix(size: np.ndarray):
    """Sparse discrete Laplacian on the coefficient grid (x-fastest), for a small smoothness penalty."""
    from scipy import sparse

    def second_diff(n: int):
        if n < 3:
            return sparse.csr_matrix((0, n))
        return sparse.diags([1.0, -2.0, 1.0], [0, 1, 2], shape=(n - 2, n))

    nx, ny, nz = (int(v) for v in size)
    ix, iy, iz = sparse.identity(nx), sparse.identity(ny), sparse.identity(nz)
    ops = [sparse.kron(sparse.kron(iz, iy), second_diff(nx)),
           sparse.kron(sparse.kron(iz, second_diff(ny)), ix),
           sparse.kron(sparse.kron(second_diff(nz), iy), ix)]
    return sparse.vstack(ops).tocsr()


class MovingSampler:
    """Trilinear interpolation of a moving image and its gradient at physical points.

    Value and the three gradient images are stacked into one (voxels, 4) array so each sample is a single
    gather of the 8 corner voxels (the objective's kernel reads `stack` directly).
    """

    def __init__(self, image: sitk.Image, smooth_mm: float):
        from scipy import ndimage

        arr = sitk.GetArrayFromImage(image).astype(np.float32)
        self.smooth_mm = smooth_mm
        self.spacing = np.asarray(image.GetSpacing())
        if smooth_mm > 0:
            arr = ndimage.gaussian_filter(arr, sigma=(smooth_mm / self.spacing)[::-1])
        self.arr = arr
        grads = [np.gradient(arr, axis=a) / np.float32(self.spacing[2 - a]) for a in (2, 1, 0)]  # d/dx, d/dy, d/dz
        self.stack = np.stack([arr, *grads], axis=-1).reshape(-1, 4)
        self.origin = np.asarray(image.GetOrigin())
        self.direction = np.asarray(image.GetDirection()).reshape(3, 3)
        self.shape = np.asarray(arr.shape[::-1])  # (nx, ny, nz)

    def __call__(self, pts: np.ndarray):
        """(value, physical gradient, inside) at (N, 3) physical points: the objective's compiled gather
        (`bspline_kernels.warp_and_sample`) with no displacement and an identity rigid map."""
        pts = np.ascontiguousarray(pts, dtype=float)
        n = len(pts)
        return _kernels().warp_and_sample(pts, np.zeros((n, 3), dtype=np.int64), np.zeros((n, 3, 4)), np.zeros((64, 3)),
                                       np.array([4, 4, 4], dtype=np.int64), np.eye(3), np.zeros(3), np.zeros(3),
                                       self.stack, self.origin, self.direction, self.spacing, self.shape)


def refit_bspline(source: sitk.BSplineTransform, target: sitk.BSplineTransform, reference: sitk.Image,
                  step: int = 3) -> None:
    """Set `target`'s coefficients to the least-squares fit of `source`'s displacement (coarse -> fine
    control grid), sampled every `step` voxels of `reference`: per axis on axis-aligned grids
    (`bspline_eval.refit_coefficients`), else one sparse solve over the sampled points."""
    coef = refit_coefficients(source, target, reference, step=step)
    if coef is None:
        coef = _refit_sparse(source, target, reference, step)
    target.SetParameters(tuple(float(v) for v in coef))


def _refit_sparse(source: sitk.BSplineTransform, target: sitk.BSplineTransform, reference: sitk.Image,
                  step: int) -> np.ndarray:
    from scipy import sparse
    from scipy.sparse.linalg import spsolve

    size = reference.GetSize()
    idx = np.stack(np.meshgrid(*[np.arange(0, n, step) for n in size], indexing="ij"), -1).reshape(-1, 3)
    pts = np.asarray(reference.GetOrigin()) + (idx * np.asarray(reference.GetSpacing())) @ np.asarray(
        reference.GetDirection()).reshape(3, 3).T
    a_src = bspline_weight_matrix(source, pts)
    u = a_src @ np.asarray(source.GetParameters()).reshape(3, a_src.shape[1]).T
    a = bspline_weight_matrix(target, pts)
    normal = (a.T @ a + 1e-6 * sparse.identity(a.shape[1])).tocsc()
    return np.column_stack([spsolve(normal, a.T @ u[:, d]) for d in range(3)]).T.reshape(-1)


def inside_with_margin(points_mm: np.ndarray, image: sitk.Image, margin_mm: float) -> np.ndarray:
    """Which physical points lie at least `margin_mm` inside `image`'s grid (voxel centres span the grid)."""
    spacing = np.asarray(image.GetSpacing())
    c = ((np.asarray(points_mm, float) - np.asarray(image.GetOrigin())) @
         np.asarray(image.GetDirection()).reshape(3, 3)) / spacing
    margin = margin_mm / spacing
    return np.all((c >= margin) & (c <= np.asarray(image.GetSize()) - 1 - margin), axis=1)


@dataclass
class BsplineMiObjective:
    """f(x) = -MI(fixed, moving(rigid(p + u_x(p)))) + smoothness * |L x|^2 over fixed sample points p, and
    its gradient, for coefficient vectors x in ITK parameter order (all x, then all y, then all z).

    Mattes' estimator as in ITK/elastix: fixed intensities in box bins, moving intensities in cubic
    B-spline Parzen windows, over a sample set that stays fixed during the optimisation.
    """

    points_mm: np.ndarray  # (N, 3) fixed sample points
    support_start: np.ndarray  # (N, 3) first B-spline support node per axis (`separable_support`)
    support_weights: np.ndarray  # (N, 3, 4) per-axis cubic weights: u(points) from 4^3 coefficients each
    grid_size: np.ndarray  # (3,) coefficient grid size (x, y, z)
    fixed_bin: np.ndarray  # (N,) padded fixed-intensity bin of each sample
    rigid_matrix: np.ndarray  # (3, 3)
    rigid_centre_mm: np.ndarray
    rigid_translation_mm: np.ndarray
    moving_sampler: "MovingSampler"
    moving_lo: float  # moving intensity range mapped onto the bins (0.5 / 99.5 percentiles)
    moving_hi: float
    moving_bin_width: float
    n_bins_padded: int
    laplacian: Any  # sparse (rows, nodes)
    smoothness: float  # weight of the Laplacian penalty (mm^-2)
    n_nodes: int

    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        a_mat = self.rigid_matrix
        mlo, mhi, mwidth = self.moving_lo, self.moving_hi, self.moving_bin_width
        nb, pad, lam, lap = self.n_bins_padded, HISTOGRAM_PAD, self.smoothness, self.laplacian
        coef = np.ascontiguousarray(x.reshape(3, self.n_nodes).T)  # ITK order: all x, then all y, then all z
        ms = self.moving_sampler
        kernels = _kernels()
        mval, mgrad, inside = kernels.warp_and_sample(
            self.points_mm, self.support_start, self.support_weights, coef, self.grid_size, a_mat,
            self.rigid_centre_mm, self.rigid_translation_mm, ms.stack, ms.origin, ms.direction, ms.spacing, ms.shape)
        mi, dmi_du = kernels.mattes_mi(self.fixed_bin, mval, mgrad, inside, a_mat, mlo, mhi, mwidth, nb, pad)
        grad_coef = kernels.scatter_gradient(self.support_start, self.support_weights, dmi_du, self.grid_size,
                                             self.n_nodes)  # (nodes, 3)
        cost = -mi
        grad = -grad_coef
        if lam > 0:
            lc = lap @ coef
            cost += lam * float(np.sum(lc * lc))
            grad = grad + 2 * lam * (lap.T @ lc)
        return cost, grad.T.reshape(-1)

    __call__ = value_and_grad


def bspline_mi_objective(fixed: sitk.Image, moving: sitk.Image, rigid: sitk.Euler3DTransform,
                         bspline: sitk.BSplineTransform, mask: sitk.Image | None, *, histogram_bins: int,
                         smoothness: float, moving_margin_mm: float, seed: int, smooth_mm: float,
                         n_samples: int, moving_sampler: MovingSampler | None = None) -> BsplineMiObjective:
    """The B-spline level's objective: `n_samples` random fixed points inside `mask` (jittered within their
    voxel), kept where `rigid(p + u(p))` with `bspline`'s current coefficients lies `moving_margin_mm` inside
    the moving image; both images Gaussian-smoothed by `smooth_mm` (0: not smoothed). `moving_sampler`: one
    already built from `moving` (reused when its smoothing is `smooth_mm`, as between levels)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    farr = sitk.GetArrayFromImage(fixed).astype(np.float32)
    marr = sitk.GetArrayViewFromImage(mask).astype(bool) if mask is not None else np.ones(farr.shape, bool)
    kji = np.flatnonzero(marr.ravel())
    a_mat = np.asarray(rigid.GetMatrix()).reshape(3, 3)
    centre = np.asarray(rigid.GetCenter())
    trans = np.asarray(rigid.GetTranslation())
    coeff_size = np.asarray(bspline.GetCoefficientImages()[0].GetSize())
    lap = laplacian_matrix(coeff_size)
    n_nodes = int(np.prod(coeff_size))
    params = np.asarray(bspline.GetParameters(), dtype=float)
    bins = histogram_bins
    pad = HISTOGRAM_PAD
    f_level = ndimage.gaussian_filter(farr, smooth_mm / np.asarray(fixed.GetSpacing())[::-1]) if smooth_mm > 0 \
        else farr
    if moving_sampler is None or moving_sampler.smooth_mm != smooth_mm:
        moving_sampler = MovingSampler(moving, smooth_mm)
    # Oversample, then keep the samples that the starting transform maps at least
    # `moving_margin_mm` inside the moving image (a fixed sample set that does not change with
    # the field, so the optimiser cannot gain by pulling samples into the relapse field of view).
    pick = rng.choice(kji, size=min(3 * n_samples, len(kji)), replace=False)
    k, j, i = np.unravel_index(pick, farr.shape)
    idx = np.stack([i, j, k], 1).astype(float) + rng.uniform(-0.5, 0.5, (len(pick), 3))
    pts = np.asarray(fixed.GetOrigin()) + (idx * np.asarray(fixed.GetSpacing())) @ np.asarray(
        fixed.GetDirection()).reshape(3, 3).T
    start_nodes, support_w, grid_size = separable_support(bspline, pts)
    u = _kernels().displacements(start_nodes, support_w, np.ascontiguousarray(params.reshape(3, n_nodes).T),
                              grid_size) if np.any(params) else 0.0
    start = (pts + u - centre) @ a_mat.T + centre + trans
    keep = np.flatnonzero(inside_with_margin(start, moving, moving_margin_mm))
    if len(keep) < min(n_samples, len(pick)) // 4:  # tiny overlap: better a biased metric than none
        keep = np.arange(len(pick))
    keep = keep[:n_samples]
    # Samples in voxel (memory) order: the moving-image gathers and the sparse products then walk memory
    # nearly sequentially (value_and_grad ~2x faster than in random order; same sample set).
    keep = keep[np.argsort(pick[keep], kind="stable")]
    idx, pts = idx[keep], pts[keep]
    start_nodes, support_w = np.ascontiguousarray(start_nodes[keep]), np.ascontiguousarray(support_w[keep])
    fvals = ndimage.map_coordinates(f_level, idx[:, ::-1].T, order=1, mode="nearest")
    flo, fhi = np.percentile(fvals, [0.5, 99.5])
    fvals = np.clip(fvals, flo, fhi)
    fbin = np.clip(((fvals - flo) / max(fhi - flo, 1e-6) * (bins - 1)).astype(np.int64) + pad, pad, pad + bins - 1)
    mlo, mhi = np.percentile(moving_sampler.arr[::4, ::4, ::4], [0.5, 99.5])
    mwidth = max(mhi - mlo, 1e-6) / (bins - 1)
    return BsplineMiObjective(points_mm=np.ascontiguousarray(pts), support_start=start_nodes,
                              support_weights=support_w, grid_size=grid_size, fixed_bin=fbin, rigid_matrix=a_mat,
                              rigid_centre_mm=centre, rigid_translation_mm=trans, moving_sampler=moving_sampler,
                              moving_lo=mlo, moving_hi=mhi, moving_bin_width=mwidth, n_bins_padded=bins + 2 * pad,
                              laplacian=lap, smoothness=smoothness, n_nodes=n_nodes)


def optimise_bspline_mi(fixed: sitk.Image, moving: sitk.Image, rigid: sitk.Euler3DTransform,
                        bspline: sitk.BSplineTransform, mask: sitk.Image | None, s: "SitkSettings", *,
                        smooth_mm: float, n_samples: int, iterations: int,
                        moving_sampler: MovingSampler | None = None) -> float:
    """Optimise `bspline` (in place) for Mattes MI of fixed vs moving(rigid(p + u(p))); returns final -MI
    (+ smoothness penalty). L-BFGS-B from the current coefficients; settings from `s` (see SitkSettings)."""
    from scipy import optimize

    objective = bspline_mi_objective(fixed, moving, rigid, bspline, mask, histogram_bins=s.histogram_bins,
                                     smoothness=s.bspline_smoothness, moving_margin_mm=s.bspline_moving_margin_mm,
                                     seed=s.seed, smooth_mm=smooth_mm, n_samples=n_samples,
                                     moving_sampler=moving_sampler)
    params = np.asarray(bspline.GetParameters(), dtype=float)
    res = optimize.minimize(objective.value_and_grad, params, jac=True, method="L-BFGS-B",
                            options={"maxiter": iterations, "maxcor": 7, "ftol": s.bspline_ftol, "gtol": 1e-7})
    params = res.x
    log.debug("bspline level smooth=%s: %s iterations, -MI %.4f (%s)", smooth_mm, res.nit, res.fun, res.message)
    bspline.SetParameters(tuple(float(v) for v in params))
    return float(res.fun)


def compile_kernels() -> None:
    """Compile (or load from numba's cache) the objective's kernels by evaluating a tiny objective once: setup
    calls it so the first patient of a fresh installation does not pay the ~3 s compilation."""
    img = sitk.GetImageFromArray(np.random.default_rng(0).normal(0.0, 1.0, (12, 12, 12)).astype(np.float32))
    img.SetSpacing((2.0, 2.0, 2.0))
    bspline = sitk.BSplineTransformInitializer(img, [1, 1, 1], 3)
    bspline.SetParameters(tuple(0.1 for _ in range(bspline.GetNumberOfParameters())))  # non-zero: every kernel runs
    rigid = sitk.Euler3DTransform()
    objective = bspline_mi_objective(img, img, rigid, bspline, None, histogram_bins=8, smoothness=1e-3,
                                     moving_margin_mm=0.0, seed=0, smooth_mm=0.0, n_samples=200)
    objective.value_and_grad(np.asarray(bspline.GetParameters(), dtype=float))
