"""Analytic head-and-neck phantom in planning space (LPS mm).

Every structure is a function of (x, y, z) in millimetres, so the planning CT is the phantom sampled
on its grid and the relapse image is the phantom sampled at warped points - exactly, with no
resampling. Functions broadcast: pass x (1,1,nx), y (1,ny,1), z (nz,1,1) for a regular grid (cheap)
or three equal-shaped arrays for arbitrary points.

Axes: +x = patient left, +y = posterior, +z = superior (DICOM LPS). The neck is centred near x = 0,
y = 0; the airway is anterior (y < 0), the spine posterior (y > 0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy.special import erfc

CTV_LEVELS = ("low", "intermediate", "high")
# Structures with a mask (keys used throughout the generator).
STRUCTURES = ("body", "airway", "vertebra", "posterior_elements", "canal", "cord", "mandible",
              "thyroid_cartilage", "parotid_l", "parotid_r", "ctv_low", "ctv_intermediate", "ctv_high")


@dataclass(frozen=True)
class Grid:
    """Axis-aligned image grid (identity direction). shape/spacing/origin in (x, y, z) order."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # z: the nominal slice spacing when slice_z_mm is given
    origin: tuple[float, float, float]
    # Actual slice positions (mm, increasing) of an irregular / jittered series; None = regular lattice.
    slice_z_mm: tuple[float, ...] | None = None

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, y, z = (self.origin[i] + self.spacing[i] * np.arange(self.shape[i]) for i in range(3))
        if self.slice_z_mm is not None:
            z = np.asarray(self.slice_z_mm, float)
        return x, y, z

    def z_at(self, k: int) -> float:
        """Position (mm) of slice k."""
        if self.slice_z_mm is not None:
            return float(self.slice_z_mm[k])
        return float(self.origin[2] + k * self.spacing[2])

    def broadcast_axes(self, k0: int = 0, k1: int | None = None):
        """x (1,1,nx), y (1,ny,1), z (nk,1,1) for slices k0:k1 - arrays in (z, y, x) order."""
        x, y, z = self.axes()
        z = z[k0:k1]
        return x[None, None, :], y[None, :, None], z[:, None, None]

    def points(self, k0: int = 0, k1: int | None = None) -> np.ndarray:
        """(n, 3) voxel-centre points of slices k0:k1 in (z, y, x) C order."""
        x, y, z = self.broadcast_axes(k0, k1)
        shp = np.broadcast_shapes(x.shape, y.shape, z.shape)
        return np.stack([np.broadcast_to(a, shp).ravel() for a in (x, y, z)], axis=1)

    @property
    def centre(self) -> np.ndarray:
        return np.asarray(self.origin) + 0.5 * (np.asarray(self.shape) - 1) * np.asarray(self.spacing)

    def mm_to_index(self, pts: np.ndarray) -> np.ndarray:
        """(n,3) mm -> (n,3) continuous index in (i, j, k) = (x, y, z) order."""
        return (np.asarray(pts, float) - np.asarray(self.origin)) / np.asarray(self.spacing)

    def to_dict(self) -> dict:
        d = {"shape": list(self.shape), "spacing": list(self.spacing), "origin": list(self.origin)}
        if self.slice_z_mm is not None:
            d["slice_z_mm"] = list(self.slice_z_mm)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Grid":
        z = d.get("slice_z_mm")
        return cls(tuple(int(v) for v in d["shape"]), tuple(float(v) for v in d["spacing"]),
                   tuple(float(v) for v in d["origin"]), None if z is None else tuple(float(v) for v in z))


def _ellipse_distance(u: np.ndarray, v: np.ndarray, ru, rv, w=None, rw=None) -> np.ndarray:
    """Signed distance (mm, negative inside) to an ellipse/ellipsoid, first-order approximation.

    rho = |D^-1 (p - c)|, d ~ (rho - 1) / |grad rho|: exact for circles/spheres, exact in sign
    everywhere, accurate near the surface (which is where it is used: masks and dose edges).
    u, v, w are coordinates relative to the centre.
    """
    a, b = u / ru, v / rv
    rho2 = a * a + b * b
    g2 = (a / ru) ** 2 + (b / rv) ** 2
    rmin = np.minimum(ru, rv)
    if w is not None:
        c = w / rw
        rho2 = rho2 + c * c
        g2 = g2 + (c / rw) ** 2
        rmin = np.minimum(rmin, rw)
    rho = np.sqrt(rho2)
    grad = np.sqrt(g2) / np.maximum(rho, 1e-9)
    d = (rho - 1.0) / np.maximum(grad, 1e-9)
    return np.maximum(d, -rmin)


@dataclass(frozen=True)
class Ellipsoid:
    centre: tuple[float, float, float]
    radii: tuple[float, float, float]

    def distance(self, x, y, z) -> np.ndarray:
        (cx, cy, cz), (rx, ry, rz) = self.centre, self.radii
        return _ellipse_distance(x - cx, y - cy, rx, ry, z - cz, rz)

    def grown(self, margin: float) -> "Ellipsoid":
        return Ellipsoid(self.centre, tuple(r + margin for r in self.radii))  # type: ignore[arg-type]

    def scaled(self, f: float) -> "Ellipsoid":
        return Ellipsoid(self.centre, tuple(r * f for r in self.radii))  # type: ignore[arg-type]

    def contains(self, x, y, z) -> np.ndarray:
        (cx, cy, cz), (rx, ry, rz) = self.centre, self.radii
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1.0


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return round(float(rng.uniform(lo, hi)), 3)


@dataclass(frozen=True)
class Phantom:
    """Per-patient anatomy parameters (all mm / HU). Build with `Phantom.random(rng)`."""

    body_centre: tuple[float, float]
    body_axes: tuple[float, float]
    body_z_mid: float
    fat_mm: float
    airway_centre: tuple[float, float]
    airway_radii: tuple[float, float]
    airway_wiggle: tuple[float, float]  # amplitude (mm), phase
    vertebra_centre: tuple[float, float]
    vertebra_radii: tuple[float, float]
    disc_period: float
    disc_phase: float
    canal_radius: float
    cord_radius: float
    spinous_length: float
    mandible_z: tuple[float, float]
    mandible_centre_y: float
    mandible_thickness: float
    thyroid_z: tuple[float, float]
    thyroid_apex_y: float
    thyroid_slope: float
    thyroid_half_width: float
    parotid_centres: tuple[tuple[float, float, float], tuple[float, float, float]]  # left (+x), right
    parotid_radii: tuple[float, float, float]
    primary_side: int  # +1 left, -1 right
    ctv_high: Ellipsoid
    intermediate_margin: float
    node_ipsi: Ellipsoid
    node_contra: Ellipsoid
    texture: tuple[tuple[float, float, float, float, float], ...]  # (kx, ky, kz, phase, amplitude)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def random(cls, rng: np.random.Generator) -> "Phantom":
        bx, by = _u(rng, -3, 3), _u(rng, 4, 8)
        ax0, ay0 = _u(rng, 60, 68), _u(rng, 54, 60)
        aw_c = (bx + _u(rng, -2, 2), by - _u(rng, 21, 26))
        aw_r = (_u(rng, 8, 11), _u(rng, 6, 8))
        vb_c = (bx, by + _u(rng, 2, 6))
        vb_r = (_u(rng, 13, 16), _u(rng, 10, 12))
        canal_r = _u(rng, 7, 8.5)
        canal_y = vb_c[1] + vb_r[1] + canal_r + 1.0
        spin = max(6.0, min(25.0, by + ay0 - 12.0 - (canal_y + canal_r)))
        zm0 = _u(rng, 18, 28)
        zt = _u(rng, -28, -12)
        side = 1 if rng.uniform() < 0.5 else -1
        par_y, par_z = by + _u(rng, 10, 14), _u(rng, 38, 50)
        par_x = ax0 - _u(rng, 16, 19)
        high_c = (bx + side * _u(rng, 14, 20), aw_c[1] + _u(rng, 6, 12), _u(rng, -8, 12))
        high = Ellipsoid(high_c, (_u(rng, 13, 17), _u(rng, 11, 14), _u(rng, 15, 20)))
        node_y, node_z = by - _u(rng, 2, 6), high_c[2] - _u(rng, 5, 15)
        node_x = ax0 - _u(rng, 23, 26)
        ipsi = Ellipsoid((bx + side * node_x, node_y, node_z), (11.0, 13.0, _u(rng, 30, 40)))
        contra = Ellipsoid((bx - side * node_x, node_y, node_z), (10.0, 12.0, _u(rng, 28, 35)))
        tex = []
        for _ in range(6):
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            k = 2 * np.pi / rng.uniform(25, 70)
            tex.append(tuple(round(float(v), 6) for v in (*(k * d), rng.uniform(0, 2 * np.pi), rng.uniform(5, 10))))
        return cls(
            body_centre=(bx, by), body_axes=(ax0, ay0), body_z_mid=_u(rng, 20, 35), fat_mm=_u(rng, 5, 8),
            airway_centre=aw_c, airway_radii=aw_r, airway_wiggle=(_u(rng, 1.5, 3.5), _u(rng, 0, 6.28)),
            vertebra_centre=vb_c, vertebra_radii=vb_r, disc_period=_u(rng, 16, 19), disc_phase=_u(rng, 0, 16),
            canal_radius=canal_r, cord_radius=round(canal_r - 2.5, 3), spinous_length=round(spin, 3),
            mandible_z=(zm0, round(zm0 + _u(rng, 25, 32), 3)), mandible_centre_y=by + _u(rng, -2, 2),
            mandible_thickness=_u(rng, 6.5, 8.5),
            thyroid_z=(round(zt - 13, 3), round(zt + 13, 3)), thyroid_apex_y=round(aw_c[1] - aw_r[1] - _u(rng, 4, 6), 3),
            thyroid_slope=_u(rng, 0.7, 1.0), thyroid_half_width=_u(rng, 17, 21),
            parotid_centres=((bx + par_x, par_y, par_z), (bx - par_x, par_y, par_z)),
            parotid_radii=(_u(rng, 8, 10), _u(rng, 12, 14), _u(rng, 15, 18)),
            primary_side=side, ctv_high=high, intermediate_margin=_u(rng, 9, 11),
            node_ipsi=ipsi, node_contra=contra, texture=tuple(tex),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Phantom":
        def tup(v):
            return tuple(tup(x) for x in v) if isinstance(v, (list, tuple)) else v

        kw = {}
        for f in fields(cls):
            v = d[f.name]
            if f.name in ("ctv_high", "node_ipsi", "node_contra"):
                v = Ellipsoid(tuple(v["centre"]), tuple(v["radii"]))
            else:
                v = tup(v)
            kw[f.name] = v
        return cls(**kw)

    # -- geometry -------------------------------------------------------------------------------
    def body_axes_at(self, z):
        s = np.tanh((z - self.body_z_mid) / 25.0)
        return self.body_axes[0] * (1 + 0.07 * s), self.body_axes[1] * (1 + 0.05 * s)

    def body_distance(self, x, y, z) -> np.ndarray:
        ax, ay = self.body_axes_at(z)
        return _ellipse_distance(x - self.body_centre[0], y - self.body_centre[1], ax, ay)

    def ctv_distance(self, level: str, x, y, z) -> np.ndarray:
        """Signed distance (mm) to a CTV; nested by construction: d_low <= d_intermediate <= d_high."""
        d = self.ctv_high.distance(x, y, z)
        if level in ("intermediate", "low"):
            d = np.minimum(self.ctv_high.grown(self.intermediate_margin).distance(x, y, z),
                           self.node_ipsi.scaled(0.75).distance(x, y, z))
        if level == "low":
            d = np.minimum(d, np.minimum(self.node_ipsi.distance(x, y, z), self.node_contra.distance(x, y, z)))
        # CTVs stay 5 mm inside the skin (same clip for every level keeps the nesting).
        return np.maximum(d, self.body_distance(x, y, z) + 5.0)

    def masks(self, x, y, z, names=STRUCTURES) -> dict[str, np.ndarray]:
        shp = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
        out: dict[str, np.ndarray] = {}
        bx = self.body_centre[0]

        def full(a):
            return np.broadcast_to(a, shp)

        if "body" in names:
            out["body"] = full(self.body_distance(x, y, z) <= 0)
        if "airway" in names:
            amp, ph = self.airway_wiggle
            cy = self.airway_centre[1] + amp * np.sin(z / 35.0 + ph)
            u, v = (x - self.airway_centre[0]) / self.airway_radii[0], (y - cy) / self.airway_radii[1]
            out["airway"] = full(u * u + v * v <= 1)
        if "vertebra" in names:
            u = (x - self.vertebra_centre[0]) / self.vertebra_radii[0]
            v = (y - self.vertebra_centre[1]) / self.vertebra_radii[1]
            out["vertebra"] = full(u * u + v * v <= 1)
        canal_y = self.vertebra_centre[1] + self.vertebra_radii[1] + self.canal_radius + 1.0
        r2 = (x - bx) ** 2 + (y - canal_y) ** 2
        if "canal" in names:
            out["canal"] = full(r2 <= self.canal_radius ** 2)
        if "cord" in names:
            out["cord"] = full(r2 <= self.cord_radius ** 2)
        if "posterior_elements" in names:
            ring = (r2 > self.canal_radius ** 2) & (r2 <= (self.canal_radius + 5.0) ** 2) & (y >= canal_y - 0.3 * self.canal_radius)
            y0 = canal_y + self.canal_radius
            spin = (np.abs(x - bx) <= 3.5) & (y >= y0) & (y <= y0 + self.spinous_length)
            out["posterior_elements"] = full(ring | spin)
        if "mandible" in names:
            z0, z1 = self.mandible_z
            ax, ay = self.body_axes_at(z)
            max_, may = 0.72 * ax, 0.85 * ay
            u, v = (x - bx) / max_, (y - self.mandible_centre_y) / may
            rho = np.sqrt(u * u + v * v)
            band = (rho <= 1) & (rho >= 1 - self.mandible_thickness / np.minimum(max_, may))
            out["mandible"] = full(band & (y <= self.mandible_centre_y + 5.0) & (z >= z0) & (z <= z1))
        if "thyroid_cartilage" in names:
            z0, z1 = self.thyroid_z
            w = np.abs(x - bx)
            k = self.thyroid_slope
            centre_line = self.thyroid_apex_y + k * w
            plate = np.abs(y - centre_line) * np.cos(np.arctan(k)) <= 2.0
            out["thyroid_cartilage"] = full(plate & (w <= self.thyroid_half_width) & (z >= z0) & (z <= z1))
        for key, centre in (("parotid_l", self.parotid_centres[0]), ("parotid_r", self.parotid_centres[1])):
            if key in names:
                m = Ellipsoid(centre, self.parotid_radii).contains(x, y, z)
                if "mandible" in out:
                    m = m & ~out["mandible"]
                out[key] = full(m)
        for level in CTV_LEVELS:
            if f"ctv_{level}" in names:
                out[f"ctv_{level}"] = full(self.ctv_distance(level, x, y, z) <= 0)
        return out

    def texture_hu(self, x, y, z) -> np.ndarray:
        """Smooth low-frequency texture (a few tens of HU) so intensity registration has features."""
        t = np.float32(0.0)
        for kx, ky, kz, ph, a in self.texture:
            arg = (np.float32(kx) * np.asarray(x, np.float32) + np.float32(ky) * np.asarray(y, np.float32)
                   + (np.float32(kz) * np.asarray(z, np.float32) + np.float32(ph)))
            t = t + np.float32(a) * np.cos(arg)
        return t

    def xy_bounds(self, margin_mm: float = 3.0) -> tuple[float, float, float, float]:
        """(xmin, xmax, ymin, ymax) containing the body (hence every structure) at any z."""
        ax, ay = self.body_axes[0] * 1.07 + margin_mm, self.body_axes[1] * 1.05 + margin_mm
        bx, by = self.body_centre
        return bx - ax, bx + ax, by - ay, by + ay

    def hu(self, x, y, z, masks: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Noise-free CT number (HU, float32) at the points."""
        m = masks if masks is not None else self.masks(x, y, z)
        shp = m["body"].shape
        tex = np.broadcast_to(self.texture_hu(x, y, z), shp).astype(np.float32)
        hu = np.full(shp, -1000.0, dtype=np.float32)
        body = m["body"]
        hu[body] = 40.0 + tex[body]
        ax, ay = self.body_axes_at(z)
        d_in = _ellipse_distance(x - self.body_centre[0], y - self.body_centre[1],
                                 np.asarray(ax) - self.fat_mm, np.asarray(ay) - self.fat_mm)
        fat = body & np.broadcast_to(d_in > 0, shp)
        hu[fat] = -90.0 + 0.5 * tex[fat]
        for key in ("parotid_l", "parotid_r"):
            hu[m[key]] = -30.0 + 0.7 * tex[m[key]]
        hu[m["thyroid_cartilage"]] = 200.0 + 0.5 * tex[m["thyroid_cartilage"]]
        hu[m["airway"]] = -1000.0
        vb = m["vertebra"]
        hu[vb] = 300.0 + 0.5 * tex[vb]
        u = (x - self.vertebra_centre[0]) / self.vertebra_radii[0]
        v = (y - self.vertebra_centre[1]) / self.vertebra_radii[1]
        shell = vb & np.broadcast_to(np.sqrt(u * u + v * v) >= 1 - 2.0 / min(self.vertebra_radii), shp)
        hu[shell] = 900.0
        disc = vb & np.broadcast_to(np.mod(z - self.disc_phase, self.disc_period) < 4.0, shp)
        hu[disc] = 80.0 + 0.3 * tex[disc]
        hu[m["posterior_elements"]] = 700.0
        hu[m["canal"]] = 15.0
        hu[m["cord"]] = 35.0
        hu[m["mandible"]] = 850.0 + tex[m["mandible"]]
        return hu

    def soft_tissue(self, x, y, z, margin_mm: float = 8.0) -> np.ndarray:
        """Where a nodal/soft-tissue recurrence can sit: inside the body (margin), not air or bone."""
        m = self.masks(x, y, z, ("body", "airway", "vertebra", "canal", "posterior_elements", "mandible"))
        inside = self.body_distance(x, y, z) <= -margin_mm
        return inside & ~(m["airway"] | m["vertebra"] | m["canal"] | m["posterior_elements"] | m["mandible"])

    # -- dose -----------------------------------------------------------------------------------
    def dose_gy(self, x, y, z, prescriptions: dict[str, float], *, hot: float = 1.02,
                edge_mm: float = 10.0, sigma_mm: float = 3.5, bath_fraction: float = 0.3) -> np.ndarray:
        """Planned dose: per level hot*P inside its CTV with an erfc fall-off (50 % at `edge_mm`
        outside the CTV, width `sigma_mm`; 95 % isodose ~5 mm outside), max over levels, plus a
        low bath inside the body."""
        present = [lv for lv in CTV_LEVELS if prescriptions.get(lv, 0) > 0]
        shp = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
        dose = np.zeros(shp)
        d_outer = None
        for lv in present:
            d = self.ctv_distance(lv, x, y, z)
            d_outer = d if d_outer is None else np.minimum(d_outer, d)
            p = prescriptions[lv]
            dose = np.maximum(dose, hot * p * 0.5 * erfc((d - edge_mm) / (np.sqrt(2) * sigma_mm)))
        pmin = min(prescriptions[lv] for lv in present)
        body_soft = 0.5 * erfc(self.body_distance(x, y, z) / (np.sqrt(2) * 2.0))
        bath = bath_fraction * pmin * body_soft * np.exp(-np.maximum(d_outer, 0) / 50.0)
        return np.maximum(dose, bath)
