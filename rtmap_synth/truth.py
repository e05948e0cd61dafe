"""Ground-truth classification of a synthetic recurrence, and its robust placement.

Independent of the pipeline code: the dose is the written RTDOSE (stored integers x DoseGridScaling)
interpolated trilinearly at points in mm; CTV membership is the analytic phantom; the sphere and the
recurrence are sampled on fine (0.5 mm) point lattices rather than on the pipeline's 2 mm grid.
Placement only accepts positions whose classes do not change under the perturbations the pipeline
introduces (registration error, 2 mm rasterisation), so the truth is unambiguous.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.ndimage import map_coordinates

from rtmap_assets.config import LEVELS, Thresholds
from rtmap_synth.phantom import Grid, Phantom
from rtmap_synth.warp import RelapseWarp

log = logging.getLogger(__name__)

CASES = ("inside", "peripheral", "outside")
CASE_VOLUME_CLASS = {"inside": 1, "peripheral": 2, "outside": 0}


@dataclass(frozen=True)
class DoseField:
    """Dose in Gy on a grid; values in (z, y, x) order."""

    grid: Grid
    values: np.ndarray

    def at(self, pts_mm: np.ndarray) -> np.ndarray:
        """Trilinear interpolation at (n,3) LPS mm points; 0 outside the grid."""
        idx = self.grid.mm_to_index(np.asarray(pts_mm, float).reshape(-1, 3))
        return map_coordinates(self.values, [idx[:, 2], idx[:, 1], idx[:, 0]], order=1, mode="constant", cval=0.0)


@lru_cache(maxsize=64)
def _lattice(radii: tuple[float, float, float], step: float) -> np.ndarray:
    """Offsets of lattice points (spacing `step`, one at the centre) inside an axis-aligned ellipsoid."""
    axes = [np.arange(-np.floor(r / step), np.floor(r / step) + 1) * step for r in radii]
    g = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    inside = np.sum((g / np.asarray(radii)) ** 2, axis=1) <= 1.0 + 1e-9
    return g[inside]


def ball(radius: float, step: float = 0.5) -> np.ndarray:
    return _lattice((float(radius),) * 3, float(step))


def raster_ball(centre: np.ndarray, radius: float, grid_origin: np.ndarray, spacing: float) -> np.ndarray:
    """Centres of the voxels of a `spacing` grid (through `grid_origin`) within `radius` of `centre`."""
    lo = np.floor((centre - radius - grid_origin) / spacing).astype(int)
    hi = np.ceil((centre + radius - grid_origin) / spacing).astype(int)
    axes = [grid_origin[i] + spacing * np.arange(lo[i], hi[i] + 1) for i in range(3)]
    g = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    return g[np.sum((g - centre) ** 2, axis=1) <= radius * radius]


def volume_class(f: float, th: Thresholds) -> int:
    if f >= th.volume_inside_fraction:
        return 1
    return 2 if f > 0 else 0


def dawson_class(f: float, th: Thresholds) -> str:
    if f >= th.dawson_infield:
        return "in-field"
    return "marginal" if f >= th.dawson_marginal else "outside"


def mohamed_type(in_ctv: dict[str, bool], centroid_dose: float, prescriptions: dict[str, float],
                 isodose_fraction: float) -> str:
    """Rule 12 from CTV membership and the dose at the centroid."""
    elective = [lv for lv in LEVELS if lv != "high" and prescriptions[lv] > 0]
    if in_ctv["high"]:
        return "A"
    if centroid_dose >= isodose_fraction * prescriptions["high"]:
        return "B"
    if any(in_ctv[lv] for lv in elective):
        return "C"
    if any(centroid_dose >= isodose_fraction * prescriptions[lv] for lv in elective):
        return "D"
    return "E"


def classify(centre: np.ndarray, rec_radii: tuple[float, float, float], dose: DoseField, phantom: Phantom,
             prescriptions: dict[str, float], th: Thresholds, sphere_radius_mm: float,
             step: float = 0.5) -> dict:
    """Truth classes for a recurrence ellipsoid (axis-aligned, planning space) centred at `centre`."""
    c = np.asarray(centre, float)
    d_c = float(dose.at(c[None])[0])
    d_sphere = dose.at(c + ball(sphere_radius_mm, step))
    d_rec = dose.at(c + _lattice(tuple(float(r) for r in rec_radii), step))
    classes: dict[str, dict | None] = {}
    in_ctv: dict[str, bool] = {}
    for lv in LEVELS:
        p = prescriptions[lv]
        if p <= 0:
            classes[lv] = None
            in_ctv[lv] = False
            continue
        iso = th.isodose_fraction * p
        fs = float(np.mean(d_sphere >= iso))
        fd = float(np.mean(d_rec >= iso))
        in_ctv[lv] = bool(phantom.ctv_distance(lv, c[0], c[1], c[2]) <= 0)
        classes[lv] = {
            "prescription_gy": p,
            "centroid_dose_gy": round(d_c, 4),
            "centroid_class": int(d_c >= iso),
            "sphere_fraction": round(fs, 4),
            "volume_class": volume_class(fs, th),
            "dawson_fraction": round(fd, 4),
            "dawson_class": dawson_class(fd, th),
            "centroid_in_ctv": in_ctv[lv],
        }
    return {"classes": classes, "mohamed": mohamed_type(in_ctv, d_c, prescriptions, th.isodose_fraction)}


def _signature(result: dict) -> tuple:
    sig = [result["mohamed"]]
    for lv in LEVELS:
        c = result["classes"][lv]
        sig.append(None if c is None else (c["centroid_class"], c["volume_class"], c["dawson_class"], c["centroid_in_ctv"]))
    return tuple(sig)


_REASONS = {1: "centroid dose near an isodose", 2: "sphere fraction near a threshold",
            3: "Dawson fraction near a threshold", 4: "centroid near a CTV surface",
            5: "classes change under a 2 mm shift", 6: "grown sphere touches the isodose",
            7: "grown sphere not inside", 8: "grown recurrence not in-field", 9: "2 mm rasterisation changes the class"}


def _fail(code: int, nominal: dict) -> tuple[bool, dict]:
    log.debug("candidate rejected: %s", _REASONS[code])
    return False, nominal


def is_robust(centre: np.ndarray, rec_radii: tuple[float, float, float], dose: DoseField, phantom: Phantom,
              prescriptions: dict[str, float], th: Thresholds, sphere_radius_mm: float, working_origin: np.ndarray,
              *, shift_mm: float = 2.0, grid_mm: float = 2.0, surface_margin_mm: float = 3.0,
              dose_margin: float = 0.03, fraction_margin: float = 0.10) -> tuple[bool, dict]:
    """Nominal classes, and whether they survive the perturbations listed in the module docstring."""
    c = np.asarray(centre, float)
    nominal = classify(c, rec_radii, dose, phantom, prescriptions, th, sphere_radius_mm)
    sig = _signature(nominal)
    present = [lv for lv in LEVELS if prescriptions[lv] > 0]
    for lv in present:
        k = nominal["classes"][lv]
        iso = th.isodose_fraction * prescriptions[lv]
        if abs(k["centroid_dose_gy"] - iso) < dose_margin * iso:
            return _fail(1, nominal)
        fs, fd = k["sphere_fraction"], k["dawson_fraction"]
        vi, dm, di = th.volume_inside_fraction, th.dawson_marginal, th.dawson_infield
        if not (fs == 0.0 or fs >= 0.999 or fraction_margin <= fs <= vi - fraction_margin):
            return _fail(2, nominal)
        if not (fd <= dm - fraction_margin or fd >= 0.999 or dm + fraction_margin <= fd <= di - fraction_margin):
            return _fail(3, nominal)
    # CTV membership constant within `surface_margin_mm` of the centroid (26 directions).
    dirs = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)], float)
    ring = c + surface_margin_mm * dirs / np.linalg.norm(dirs, axis=1)[:, None]
    for lv in present:
        inside = phantom.ctv_distance(lv, ring[:, 0], ring[:, 1], ring[:, 2]) <= 0
        if np.any(inside != nominal["classes"][lv]["centroid_in_ctv"]):
            return _fail(4, nominal)
    # Shifted centroid (registration error): identical classes.
    for axis in range(3):
        for sgn in (-1.0, 1.0):
            d = np.zeros(3)
            d[axis] = sgn * shift_mm
            r = classify(c + d, rec_radii, dose, phantom, prescriptions, th, sphere_radius_mm, step=1.0)
            if _signature(r) != sig:
                return _fail(5, nominal)
    # Whole sphere / recurrence grown by the shift: an all-or-nothing class must stay so.
    grown_s = dose.at(c + ball(sphere_radius_mm + shift_mm, 1.0))
    grown_r = dose.at(c + _lattice(tuple(float(r) + shift_mm for r in rec_radii), 1.0))
    for lv in present:
        k = nominal["classes"][lv]
        iso = th.isodose_fraction * prescriptions[lv]
        if k["volume_class"] == 0 and np.any(grown_s >= iso):
            return _fail(6, nominal)
        if k["volume_class"] == 1 and np.mean(grown_s >= iso) < th.volume_inside_fraction:
            return _fail(7, nominal)
        if k["dawson_class"] == "in-field" and np.mean(grown_r >= iso) < th.dawson_infield:
            return _fail(8, nominal)
    # The sphere rasterised on a 2 mm grid (several alignments): same volume class.
    for off in ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)):
        pts = raster_ball(c, sphere_radius_mm, np.asarray(working_origin, float) + np.asarray(off, float), grid_mm)
        ds = dose.at(pts)
        for lv in present:
            f = float(np.mean(ds >= th.isodose_fraction * prescriptions[lv]))
            if volume_class(f, th) != nominal["classes"][lv]["volume_class"]:
                return _fail(9, nominal)
    return True, nominal


def place_recurrence(case: str, rng: np.random.Generator, dose: DoseField, phantom: Phantom,
                     prescriptions: dict[str, float], th: Thresholds, sphere_radius_mm: float,
                     working_origin: np.ndarray, *, rec_radius_mm: tuple[float, float] = (6.0, 10.0),
                     max_candidates: int = 2000) -> tuple[np.ndarray, tuple[float, float, float], dict]:
    """A recurrence centre and radii in planning space whose high-level volume class matches `case`,
    with robust classes for every level and scheme. Raises RuntimeError if none is found."""
    if case not in CASE_VOLUME_CLASS:
        raise ValueError(f"case must be one of {CASES}, got {case!r}")
    target = CASE_VOLUME_CLASS[case]
    p_high = prescriptions["high"]
    iso = th.isodose_fraction * p_high
    g = dose.grid
    tried = 0
    for _round in range(6):
        # Candidate pool: dose-grid interior (10 mm), soft tissue, dose in the range the case needs.
        lo = np.asarray(g.origin) + 10.0
        hi = np.asarray(g.origin) + (np.asarray(g.shape) - 1) * np.asarray(g.spacing) - 10.0
        pts = rng.uniform(lo, hi, size=(20000, 3))
        pts = pts[phantom.soft_tissue(pts[:, 0], pts[:, 1], pts[:, 2])]
        dc = dose.at(pts)
        if case == "inside":
            keep = dc >= 1.0 * p_high
        elif case == "peripheral":
            keep = np.abs(dc - iso) <= 0.3 * p_high
        else:
            keep = dc < 0.97 * iso
            # Prefer elective-region failures (Mohamed C/D) when the arm has elective levels: the
            # common clinical pattern, and it exercises more of the schemes than E.
            elective = [prescriptions[lv] for lv in LEVELS if lv != "high" and prescriptions[lv] > 0]
            if elective and _round < 3:
                keep &= dc >= 1.0 * min(elective)
        pts = pts[keep]
        # Cheap necessary conditions first: centroid dose margin and CTV-surface distance, all levels.
        for lv in LEVELS:
            if prescriptions[lv] > 0:
                iso_lv = th.isodose_fraction * prescriptions[lv]
                pts = pts[np.abs(dose.at(pts) - iso_lv) >= 0.031 * iso_lv]
                d = phantom.ctv_distance(lv, pts[:, 0], pts[:, 1], pts[:, 2])
                pts = pts[np.abs(d) >= 3.2]
        pts = pts[:1500]
        if len(pts) == 0:
            continue
        # Coarse high-level sphere fraction (1 mm lattice) to keep the right class.
        b = ball(sphere_radius_mm, 1.0)
        fr = np.array([np.mean(dose.at(p + b) >= iso) for p in pts])
        if target == 1:
            pts = pts[fr >= 0.999]
        elif target == 2:
            pts = pts[(fr >= 0.15) & (fr <= 0.8)]
        else:
            pts = pts[fr == 0]
        rng.shuffle(pts)
        for p in pts:
            if tried >= max_candidates:
                break
            tried += 1
            r = float(rng.uniform(*rec_radius_mm))
            radii = tuple(round(r * float(rng.uniform(0.85, 1.15)), 3) for _ in range(3))
            centre = np.round(p, 2)
            ok, result = is_robust(centre, radii, dose, phantom, prescriptions, th, sphere_radius_mm, working_origin)
            if ok and result["classes"]["high"]["volume_class"] == target:
                log.debug("placed %s recurrence after %d candidates", case, tried)
                return centre, radii, result
    raise RuntimeError(f"no robust '{case}' recurrence position found after {tried} candidates")


def landmark_centroid(phantom: Phantom, step: float = 0.5) -> np.ndarray:
    """Centroid (mm) of the analytic thyroid cartilage, from a fine lattice."""
    bx = phantom.body_centre[0]
    z0, z1 = phantom.thyroid_z
    y0 = phantom.thyroid_apex_y - 4
    y1 = phantom.thyroid_apex_y + phantom.thyroid_slope * phantom.thyroid_half_width + 4
    w = phantom.thyroid_half_width + 2
    x, y, z = (np.arange(a, b + step, step) for a, b in ((bx - w, bx + w), (y0, y1), (z0 - 1, z1 + 1)))
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
    m = phantom.masks(X, Y, Z, ("thyroid_cartilage",))["thyroid_cartilage"]
    return np.array([X[m].mean(), Y[m].mean(), Z[m].mean()])


def tre_points(truth: dict, n: int = 25, rng: np.random.Generator | None = None,
               margin_mm: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """n planning-space body points and their exact relapse-space positions (for TRE).

    Points lie inside the body (`margin_mm` from the skin) and inside both image fields, so the
    pipeline's registration can be scored at them: TRE = |T(planning_pt) - relapse_pt|.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    phantom = Phantom.from_dict(truth["phantom"])
    warp = RelapseWarp.from_dict(truth["warp"])
    pg, rg = Grid.from_dict(truth["planning_grid"]), Grid.from_dict(truth["relapse_grid"])

    def extent(g: Grid):
        lo = np.asarray(g.origin)
        return lo, lo + (np.asarray(g.shape) - 1) * np.asarray(g.spacing)

    plo, phi = extent(pg)
    rlo, rhi = extent(rg)
    out_p, out_r = [], []
    while sum(len(a) for a in out_p) < n:
        cand = rng.uniform(plo + margin_mm, phi - margin_mm, size=(max(200, 20 * n), 3))
        cand = cand[phantom.body_distance(cand[:, 0], cand[:, 1], cand[:, 2]) <= -margin_mm]
        q = warp.planning_to_relapse(cand)
        ok = np.all((q >= rlo + margin_mm) & (q <= rhi - margin_mm), axis=1)
        out_p.append(cand[ok])
        out_r.append(q[ok])
    return np.concatenate(out_p)[:n], np.concatenate(out_r)[:n]
