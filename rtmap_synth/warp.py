"""The known relapse -> planning mapping of a synthetic patient.

    y = c + R (q - c) + t          rigid part (rotation of a few degrees about c, translation t)
    p = y + sum_k a_k exp(-|y - mu_k|^2 / (2 sigma_k^2))   smooth warp (Gaussian bumps, planning space)

q is a relapse point, p the planning point showing the same tissue (LPS mm). The bumps live in
planning space so that the inverse is a fixed point of y = p - B(y); `random` keeps every bump's
Lipschitz constant (a / sigma * exp(-1/2)) well below 1, which makes the mapping a diffeomorphism
and the iteration a contraction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_INV_TOL_MM = 1e-6
_INV_MAX_ITER = 200


def rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """R = Rz @ Ry @ Rx for rotations (degrees) about the x, y and z axes."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class RelapseWarp:
    rotation_deg: tuple[float, float, float]
    centre_mm: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    bump_centres_mm: tuple[tuple[float, float, float], ...] = ()
    bump_amplitudes_mm: tuple[tuple[float, float, float], ...] = ()
    bump_sigmas_mm: tuple[float, ...] = ()

    # -- mapping ------------------------------------------------------------------------------
    @property
    def matrix(self) -> np.ndarray:
        return rotation_matrix(np.array(self.rotation_deg))

    def _rigid(self, q: np.ndarray) -> np.ndarray:
        return np.stack(self._rigid_xyz(q[..., 0], q[..., 1], q[..., 2]), axis=-1)

    def _rigid_xyz(self, x, y, z):
        """Rigid part on component arrays (broadcasting; written out because (N,3)@(3,3) is slow)."""
        m, c, t = self.matrix, self.centre_mm, self.translation_mm
        u, v, w = x - c[0], y - c[1], z - c[2]
        return tuple(m[i, 0] * u + m[i, 1] * v + m[i, 2] * w + (c[i] + t[i]) for i in range(3))

    def _rigid_inverse(self, y: np.ndarray) -> np.ndarray:
        c = np.asarray(self.centre_mm)
        return (y - c - np.asarray(self.translation_mm)) @ self.matrix + c

    def _bumps(self, y: np.ndarray) -> np.ndarray:
        return np.stack(self._bumps_xyz(y[..., 0], y[..., 1], y[..., 2]), axis=-1)

    def _bumps_xyz(self, x, y, z):
        out = [np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))) for _ in range(3)]
        for mu, a, s in zip(self.bump_centres_mm, self.bump_amplitudes_mm, self.bump_sigmas_mm):
            g = np.exp(-((x - mu[0]) ** 2 + (y - mu[1]) ** 2 + (z - mu[2]) ** 2) / (2.0 * s * s))
            for i in range(3):
                out[i] += a[i] * g
        return out

    def relapse_to_planning(self, pts_mm: np.ndarray) -> np.ndarray:
        """(N,3) relapse points (LPS mm) -> (N,3) planning points. Exact (closed form)."""
        q = np.asarray(pts_mm, dtype=float)
        return np.stack(self.relapse_to_planning_xyz(q[..., 0], q[..., 1], q[..., 2]), axis=-1)

    def relapse_to_planning_xyz(self, x, y, z):
        """Same as `relapse_to_planning` on component arrays (broadcasting), returns (px, py, pz)."""
        yx, yy, yz = self._rigid_xyz(x, y, z)
        bx, by, bz = self._bumps_xyz(yx, yy, yz)
        return yx + bx, yy + by, yz + bz

    def planning_to_relapse(self, pts_mm: np.ndarray) -> np.ndarray:
        """(N,3) planning points -> relapse points, by fixed-point iteration (error < 1e-6 mm)."""
        p = np.asarray(pts_mm, dtype=float)
        y = p.copy()
        for _ in range(_INV_MAX_ITER):
            y_new = p - self._bumps(y)
            step = np.max(np.abs(y_new - y)) if y.size else 0.0
            y = y_new
            if step < _INV_TOL_MM:
                break
        else:  # pragma: no cover - impossible for warps built by `random` (contraction)
            raise RuntimeError("RelapseWarp inverse did not converge; the warp is not invertible")
        return self._rigid_inverse(y)

    def displacement_mm(self, planning_pts_mm: np.ndarray) -> np.ndarray:
        """|p - q| for planning points p and their relapse positions q."""
        p = np.asarray(planning_pts_mm, dtype=float)
        return np.linalg.norm(p - self.planning_to_relapse(p), axis=-1)

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "model": "rigid_then_gaussian_bumps",
            "convention": "relapse point q -> planning point p: y = c + R(q-c) + t; "
                          "p = y + sum_k a_k exp(-|y-mu_k|^2/(2 s_k^2)); R = Rz Ry Rx (degrees)",
            "rotation_deg": list(self.rotation_deg),
            "centre_mm": list(self.centre_mm),
            "translation_mm": list(self.translation_mm),
            "bumps": [
                {"centre_mm": list(mu), "amplitude_mm": list(a), "sigma_mm": s}
                for mu, a, s in zip(self.bump_centres_mm, self.bump_amplitudes_mm, self.bump_sigmas_mm)
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "RelapseWarp":
        bumps = d.get("bumps", [])
        return cls(
            rotation_deg=tuple(float(v) for v in d["rotation_deg"]),
            centre_mm=tuple(float(v) for v in d["centre_mm"]),
            translation_mm=tuple(float(v) for v in d["translation_mm"]),
            bump_centres_mm=tuple(tuple(float(v) for v in b["centre_mm"]) for b in bumps),
            bump_amplitudes_mm=tuple(tuple(float(v) for v in b["amplitude_mm"]) for b in bumps),
            bump_sigmas_mm=tuple(float(b["sigma_mm"]) for b in bumps),
        )

    # -- random construction ------------------------------------------------------------------
    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        mean_displacement_mm: float = 13.0,
        *,
        centre_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
        body_radii_mm: tuple[float, float, float] = (60.0, 55.0, 70.0),
        calibration_points_mm: np.ndarray | None = None,
        max_rotation_deg: float = 3.0,
        n_bumps: int = 4,
        bump_amplitude_mm: tuple[float, float] = (2.0, 5.0),
        bump_sigma_mm: tuple[float, float] = (30.0, 50.0),
    ) -> "RelapseWarp":
        """A random warp whose mean displacement over the body equals `mean_displacement_mm`.

        Rotation and bumps are drawn first; the translation direction is random and its length is
        solved (bisection) so that the mean |p - q| over `calibration_points_mm` (planning-space body
        points; default: uniform in an ellipsoid of `body_radii_mm` around `centre_mm`) hits the
        target. If rotation and bumps alone already exceed the target the translation is zero.
        """
        c = np.asarray(centre_mm, dtype=float)
        if calibration_points_mm is None:
            u = rng.uniform(-1, 1, size=(6000, 3))
            u = u[np.sum(u * u, axis=1) <= 1][:2000]
            calibration_points_mm = c + u * np.asarray(body_radii_mm)
        pts = np.asarray(calibration_points_mm, dtype=float)
        rot = tuple(float(v) for v in rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
        idx = rng.integers(0, len(pts), n_bumps)
        centres = tuple(tuple(float(v) for v in pts[i]) for i in idx)
        sigmas = tuple(float(v) for v in rng.uniform(*bump_sigma_mm, n_bumps))
        amps = []
        for s in sigmas:
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            # Keep the bump a contraction: |grad| <= a/s * exp(-1/2) <= 0.3.
            a = min(rng.uniform(*bump_amplitude_mm), 0.3 * s / np.exp(-0.5))
            amps.append(tuple(float(v) for v in a * direction))
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)

        def build(length: float) -> "RelapseWarp":
            return cls(rot, tuple(float(v) for v in c), tuple(float(v) for v in length * direction),
                       centres, tuple(amps), sigmas)

        def mean_disp(length: float) -> float:
            return float(np.mean(build(length).displacement_mm(pts)))

        lo, hi = 0.0, 3.0 * mean_displacement_mm + 10.0
        if mean_disp(lo) >= mean_displacement_mm:
            return build(0.0)
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            if mean_disp(mid) < mean_displacement_mm:
                lo = mid
            else:
                hi = mid
            if hi - lo < 1e-4:
                break
        return build(round(0.5 * (lo + hi), 6))
