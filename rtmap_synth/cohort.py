"""Synthetic DICOM-RT cohort with exact ground truth (planning CT/RTSTRUCT/RTDOSE + relapse image/RTSTRUCT).

Per patient: an analytic head-and-neck phantom (`phantom.py`) in planning space; the planning CT is
the phantom on the planning grid; the relapse image at relapse point q is the phantom at
`warp.relapse_to_planning(q)` (`warp.py`) plus a recurrence that is an ellipsoid in planning space,
placed so that the seed's high-level volume class equals the requested case (`truth.py`).
Everything is generated slab by slab (memory stays low at clinical size) and is deterministic per seed.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import hashlib
import re
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from rtmap_assets.config import LEVELS, TrialConfig, load_trial_config
from rtmap_assets.naming import first_match
from rtmap_synth.dicom_write import (
    ContourCollector, ImageSeriesWriter, PatientTags, RoiSpec, StudyInfo, rtdose_dataset, rtstruct_dataset, save, uid,
)
from rtmap_synth.phantom import Ellipsoid, Grid, Phantom
from rtmap_synth.truth import CASES, DoseField, landmark_centroid, place_recurrence
from rtmap_synth.warp import RelapseWarp

log = logging.getLogger(__name__)

SIZES: dict[str, dict] = {
    "small": {"ct_shape": (128, 128, 48), "ct_spacing": (2.0, 2.0, 3.0)},
    "clinical": {"ct_shape": (512, 512, 150), "ct_spacing": (0.9765625, 0.9765625, 2.0)},
}
COVARIATE_COLUMNS = ("patient_id", "arm", "site", "t_stage", "n_stage", "hpv_status", "age_group", "smoking",
                     "months_to_relapse")
DOSE_GRID_SCALING = "1e-05"  # Gy per stored unit (uint32)

# Name variants (all match the bundled trial's aliases; checked at generation time).
CTV_TEMPLATES = ("CTV_{d}", "CTV{d}", "ctv_{d}Gy", "CTVn {d}", "CTV {d}")
BODY_NAMES = ("BODY", "External")
CORD_NAMES = ("SpinalCord", "Spinal_Cord")
MANDIBLE_NAMES = ("Mandible", "MANDIBLE")
PAROTID_NAMES = (("Parotid_L", "Parotid_R"), ("Parotid L", "Parotid R"))
LANDMARK_NAMES = ("Thyroid_Cartilage", "THY_CART", "thyroid cartilage")
RECURRENCE_NAMES = ("Rec_CT", "recurrence", "rGTV_1", "GTV_recurrence")


@dataclass(frozen=True)
class GeneratorSettings:
    """Image geometry and realism knobs. Shapes are (x, y, z) voxels, spacings mm."""

    ct_shape: tuple[int, int, int] = (128, 128, 48)
    ct_spacing: tuple[float, float, float] = (2.0, 2.0, 3.0)
    layout: str = "mixed"  # "flat" | "nested" | "mixed" (mixed alternates per patient in a cohort)
    relapse_shape: tuple[int, int, int] | None = None  # default: same as planning
    relapse_spacing: tuple[float, float, float] | None = None
    mean_displacement_mm: float = 13.0
    dose_spacing: tuple[float, float, float] = (2.5, 2.5, 2.5)
    dose_margin_mm: float = 25.0  # dose grid = outermost CTV bounding box + this, clipped to the CT
    ct_noise_hu: float = 15.0
    mr_noise: float = 15.0
    recurrence_hu: float = 30.0
    relapse_offset_mm: float = 5.0  # random shift of the relapse field centre
    mr_every: int = 0  # in a cohort, every n-th patient gets an MR relapse image (0: never)
    slab_slices: int = 8

    def __post_init__(self) -> None:
        if self.layout not in ("flat", "nested", "mixed"):
            raise ValueError(f"layout must be flat, nested or mixed, got {self.layout!r}")

    @classmethod
    def of_size(cls, size: str, **kw) -> "GeneratorSettings":
        return cls(**{**SIZES[size], **kw})


# -- small helpers ------------------------------------------------------------------------------
def _centred_grid(shape, spacing, centre=(0.0, 0.0, 0.0)) -> Grid:
    origin = tuple(round(float(c - 0.5 * (n - 1) * s), 3) for c, n, s in zip(centre, shape, spacing))
    return Grid(tuple(int(n) for n in shape), tuple(float(s) for s in spacing), origin)


def _choose(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _ctv_names(rng: np.random.Generator, prescriptions: dict[str, float], config: TrialConfig) -> dict[str, str]:
    """One naming style per patient; a name must match its own level's alias and no other dose."""
    all_doses = {f"{p:g}" for arm in config.arms.values() for p in arm if p > 0}
    template = _choose(rng, CTV_TEMPLATES)
    names = {}
    for lv in LEVELS:
        p = prescriptions[lv]
        if p <= 0:
            continue
        d = f"{p:g}"
        for t in (template, *CTV_TEMPLATES):
            name = t.format(d=d)
            own = first_match([name], config.aliases.ctv_for_dose(p)) is not None
            clash = any(o != d and o in name for o in all_doses) or any(
                first_match([name], config.aliases.ctv_for_dose(float(o))) for o in all_doses if o != d)
            if own and not clash:
                break
        else:
            raise ValueError(f"no CTV name for {d} Gy matches the trial's CTV aliases without clashing")
        names[lv] = name
    return names


def _pick_matching(rng: np.random.Generator, options, aliases, role: str) -> str:
    ok = [n for n in options if first_match([n], aliases) is not None]
    if not ok:
        raise ValueError(f"none of the synthetic {role} names {options} matches the trial aliases {aliases}")
    return _choose(rng, ok)


def hu_to_mr(hu: np.ndarray) -> np.ndarray:
    """MR-like (T1-ish) contrast from noise-free HU: fat bright, muscle grey, air and bone dark."""
    knots_hu = [-1024, -500, -120, -90, -30, 40, 120, 250, 600, 3000]
    knots_mr = [5, 5, 900, 880, 650, 420, 380, 150, 80, 60]
    return np.interp(hu, knots_hu, knots_mr).astype(np.float32)


def _outer_ellipsoids(phantom: Phantom, prescriptions: dict[str, float]) -> list[Ellipsoid]:
    parts = [phantom.ctv_high]
    if prescriptions["intermediate"] > 0 or prescriptions["low"] > 0:
        parts += [phantom.ctv_high.grown(phantom.intermediate_margin), phantom.node_ipsi.scaled(0.75)]
    if prescriptions["low"] > 0:
        parts += [phantom.node_ipsi, phantom.node_contra]
    return parts


def _dose_grid(phantom: Phantom, prescriptions: dict[str, float], ct: Grid, settings: GeneratorSettings) -> Grid:
    parts = _outer_ellipsoids(phantom, prescriptions)
    lo = np.min([np.subtract(e.centre, e.radii) for e in parts], axis=0) - settings.dose_margin_mm
    hi = np.max([np.add(e.centre, e.radii) for e in parts], axis=0) + settings.dose_margin_mm
    ct_lo = np.asarray(ct.origin)
    ct_hi = ct_lo + (np.asarray(ct.shape) - 1) * np.asarray(ct.spacing)
    lo, hi = np.maximum(lo, ct_lo), np.minimum(hi, ct_hi)
    sp = np.asarray(settings.dose_spacing, float)
    origin = np.round(lo * 2) / 2
    shape = np.floor((hi - origin) / sp).astype(int) + 1
    return Grid(tuple(int(v) for v in shape), tuple(float(v) for v in sp), tuple(float(v) for v in origin))


def _index_range(lo_mm: float, hi_mm: float, origin: float, spacing: float, n: int) -> tuple[int, int]:
    a = int(np.floor((lo_mm - origin) / spacing)) - 1
    b = int(np.ceil((hi_mm - origin) / spacing)) + 2
    return max(a, 0), min(max(b, 0), n)


def _planning_crop(phantom: Phantom, g: Grid) -> tuple[int, int, int, int]:
    """Column/row range holding the whole body; outside it the planning image is air."""
    xmin, xmax, ymin, ymax = phantom.xy_bounds()
    i0, i1 = _index_range(xmin, xmax, g.origin[0], g.spacing[0], g.shape[0])
    j0, j1 = _index_range(ymin, ymax, g.origin[1], g.spacing[1], g.shape[1])
    return i0, i1, j0, j1


def _relapse_crop(phantom: Phantom, warp: RelapseWarp, g: Grid, k0: int, k1: int) -> tuple[int, int, int, int]:
    """Column/row range of relapse slices k0:k1 holding the body, from a coarse pre-scan (every 4th
    voxel, body grown by a margin larger than the scan step)."""
    step = 4
    x, y, z = g.broadcast_axes(k0, k1)
    x, y = x[..., ::step], y[:, ::step]
    px, py, pz = warp.relapse_to_planning_xyz(x, y, z)
    margin = 3.0 * step * max(g.spacing[0], g.spacing[1])
    near = phantom.body_distance(px, py, pz) <= margin
    if not near.any():
        return 0, 0, 0, 0
    cols = np.flatnonzero(near.any(axis=(0, 1))) * step
    rows = np.flatnonzero(near.any(axis=(0, 2))) * step
    return (max(cols[0] - step, 0), min(cols[-1] + step + 1, g.shape[0]),
            max(rows[0] - step, 0), min(rows[-1] + step + 1, g.shape[1]))


def _must_see(phantom: Phantom, recurrence: Ellipsoid) -> np.ndarray:
    """Planning points the relapse image must contain: the recurrence and the landmark (bounding boxes)."""
    (cx, cy, cz), (rx, ry, rz) = recurrence.centre, recurrence.radii
    bx = phantom.body_centre[0]
    w = phantom.thyroid_half_width
    y0, y1 = phantom.thyroid_apex_y - 2, phantom.thyroid_apex_y + phantom.thyroid_slope * w + 2
    z0, z1 = phantom.thyroid_z
    corners = [(x, y, z) for x in (cx - rx, cx + rx) for y in (cy - ry, cy + ry) for z in (cz - rz, cz + rz)]
    corners += [(x, y, z) for x in (bx - w, bx + w) for y in (y0, y1) for z in (z0, z1)]
    return np.asarray(corners, float)


def _fit_relapse_field(g: Grid, warp: RelapseWarp, planning_pts: np.ndarray, margin_mm: float = 6.0) -> Grid:
    """Shift the relapse field (whole mm) so the given planning points, mapped to relapse space, lie
    inside it with a margin; a field too small for them stays centred on them (logged)."""
    q = warp.planning_to_relapse(planning_pts)
    lo, hi = q.min(axis=0) - margin_mm, q.max(axis=0) + margin_mm
    f_lo = np.asarray(g.origin)
    f_hi = f_lo + (np.asarray(g.shape) - 1) * np.asarray(g.spacing)
    shift = np.where(lo < f_lo, np.floor(lo - f_lo), 0.0) + np.where(hi > f_hi, np.ceil(hi - f_hi), 0.0)
    if np.any((hi - lo) > (f_hi - f_lo)):
        log.warning("relapse field %s mm is smaller than recurrence + landmark extent", f_hi - f_lo)
    if not np.any(shift):
        return g
    return Grid(g.shape, g.spacing, tuple(round(float(o + d), 3) for o, d in zip(g.origin, shift)))


class _Files:
    """Output paths for one patient export in the chosen layout."""

    def __init__(self, root: Path, layout: str, rng: np.random.Generator):
        self.root, self.layout, self.rng = root, layout, rng
        self.written: list[Path] = []

    def path(self, study: StudyInfo, series_number: int, modality: str, instance: int) -> Path:
        if self.layout == "flat":
            name = f"{int(self.rng.integers(0, 2**63)):016x}" + (".dcm" if self.rng.uniform() < 0.5 else "")
            p = self.root / name
        else:
            p = self.root / f"STUDY_{study.study_date}" / f"SE{series_number:03d}_{modality}" / f"IMG{instance:04d}.dcm"
        self.written.append(p)
        return p


def _study(seed_key: str, date: dt.date, rng: np.random.Generator, description: str) -> StudyInfo:
    return StudyInfo(
        study_uid=uid(seed_key, "study"), study_date=date.strftime("%Y%m%d"),
        study_time=f"{int(rng.integers(8, 17)):02d}{int(rng.integers(0, 60)):02d}00",
        description=description, study_id=str(int(rng.integers(1000, 9999))),
        accession=f"ACC{int(rng.integers(10**6, 10**7))}", frame_of_reference_uid=uid(seed_key, "for"))


def _noise(seed: int, stream: int, k0: int, shape, sigma: float) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream, k0]))
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)


# -- export cases (issue 9: what real exports contain) ------------------------------------------
EXPORT_CASES = ("standard", "level_names", "per_beam", "boost", "ffs", "hfp", "ffp", "jitter", "irregular", "gap")
# Refusal code the pipeline must give a planning CT with a missing slice. The readers' slice-geometry
# work names it; keep this constant in step with rtmap_assets' IssueCode.
GAP_REFUSAL_CODE = "SERIES_GAP"  # rtmap_assets.issue_codes.IssueCode.SERIES_GAP (rule 15)
# TG-263-style names by risk level, two spellings each (one spelling per patient).
LEVEL_CTV_NAMES = {"high": ("CTV_High", "ctv_hr"), "intermediate": ("CTV_Mid", "ctv_ir"),
                   "low": ("CTV_Low", "ctv_lr")}
JITTER_MM = 0.1
IRREGULAR_NOMINAL_MM = 2.5
IRREGULAR_STEPS_MM = (2.1, 2.8)
POSITION_OF_CASE = {"ffs": "FFS", "hfp": "HFP", "ffp": "FFP"}


def _planning_position(export_case: str) -> str:
    return POSITION_OF_CASE.get(export_case, "HFS")


def _planning_grid(settings: GeneratorSettings, export_case: str, rng: np.random.Generator) -> Grid:
    """Planning CT grid; `jitter` moves every slice by up to JITTER_MM off its lattice position,
    `irregular` uses IRREGULAR_NOMINAL_MM slices with steps in IRREGULAR_STEPS_MM (both extremes occur)
    over about the same extent."""
    ct = _centred_grid(settings.ct_shape, settings.ct_spacing)
    if export_case == "jitter":
        z = ct.axes()[2] + rng.uniform(-JITTER_MM, JITTER_MM, ct.shape[2])
        return replace(ct, slice_z_mm=tuple(round(float(v), 3) for v in z))
    if export_case == "irregular":
        nominal, (lo, hi) = IRREGULAR_NOMINAL_MM, IRREGULAR_STEPS_MM
        nz = int(round((ct.shape[2] - 1) * ct.spacing[2] / nominal)) + 1
        base = _centred_grid((ct.shape[0], ct.shape[1], nz), (ct.spacing[0], ct.spacing[1], nominal))
        lattice = base.axes()[2]
        z = [float(lattice[0])]
        for k in range(1, nz):  # random steps pulled back towards the lattice, so the series does not drift
            step = nominal + rng.uniform(-0.45, 0.35) - 0.5 * (z[-1] - lattice[k - 1])
            z.append(z[-1] + float(np.clip(step, lo, hi)))
        steps = np.diff(z)
        a, b = rng.choice(np.arange(1, nz - 1), size=2, replace=False)  # force both extremes once
        steps[a - 1], steps[b - 1] = lo, hi
        z = np.concatenate([[z[0]], z[0] + np.cumsum(steps)])
        return replace(base, slice_z_mm=tuple(round(float(v), 3) for v in z))
    return ct


def _gap_slice(ct: Grid, export_case: str, rng: np.random.Generator) -> int | None:
    """Index of the planning slice left out of the export (`gap`), away from the series ends."""
    if export_case != "gap":
        return None
    return int(rng.integers(ct.shape[2] // 4, 3 * ct.shape[2] // 4))


def _split_beams(stored: np.ndarray, dgrid: Grid, centre_xy: tuple[float, float], n_beams: int) -> list[np.ndarray]:
    """Per-beam stored doses that sum exactly (in stored units) to `stored`: beam k's share varies with
    the azimuth around the target, as from a gantry angle 360 k / n."""
    x, y, _ = dgrid.broadcast_axes()
    azimuth = np.arctan2(y - centre_xy[1], x - centre_xy[0])[0]  # (ny, nx)
    angles = 2 * np.pi * np.arange(n_beams) / n_beams
    weights = np.stack([1.0 + 0.6 * np.cos(azimuth - t) for t in angles])
    weights /= weights.sum(axis=0)
    total = stored.astype(np.float64)
    beams = [np.floor(total * w[None]).astype(np.uint32) for w in weights[:-1]]
    beams.append(stored - np.sum(beams, axis=0, dtype=np.uint32))  # remainder: the sum is exact
    return beams


def _boost_split_gy(prescriptions: dict[str, float]) -> float:
    """Dose of the main plan of a sequential boost: the lowest prescribed level (the elective dose),
    or 80 % of the only prescription."""
    present = sorted(p for p in prescriptions.values() if p > 0)
    return present[0] if len(present) > 1 else 0.8 * present[0]


def _crop_to_support(stored: np.ndarray, grid: Grid, margin_voxels: int = 2) -> tuple[np.ndarray, Grid]:
    """The non-zero part of a dose (+ a margin of zero voxels) on the same lattice: a boost plan's own grid."""
    nz = np.argwhere(stored > 0)
    lo = np.maximum(nz.min(axis=0) - margin_voxels, 0)
    hi = np.minimum(nz.max(axis=0) + margin_voxels + 1, stored.shape)
    crop = stored[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    origin = tuple(round(grid.origin[i] + lo[2 - i] * grid.spacing[i], 4) for i in range(3))
    return crop, Grid((int(crop.shape[2]), int(crop.shape[1]), int(crop.shape[0])), grid.spacing, origin)


# -- one patient: the steps -----------------------------------------------------------------------
@dataclass(frozen=True)
class _PlanDose:
    grid: Grid
    stored: np.ndarray  # (nz, ny, nx) uint32, Gy = stored * DOSE_GRID_SCALING
    field: DoseField  # what the truth uses: exactly the written values


@dataclass(frozen=True)
class _Identity:
    patient: PatientTags
    plan_study: StudyInfo
    rel_study: StudyInfo
    covariates: dict


def _check_request(config: TrialConfig, arm: str, case: str, relapse_modality: str, export_case: str) -> None:
    if arm not in config.arms:
        raise ValueError(f"arm {arm!r} not in the trial config arms {sorted(config.arms)}")
    if case not in CASES:
        raise ValueError(f"case must be one of {CASES}, got {case!r}")
    if relapse_modality not in ("CT", "MR"):
        raise ValueError(f"relapse_modality must be CT or MR, got {relapse_modality!r}")
    if export_case not in EXPORT_CASES:
        raise ValueError(f"export_case must be one of {EXPORT_CASES}, got {export_case!r}")


def _plan_dose(phantom: Phantom, prescriptions: dict[str, float], ct: Grid, settings: GeneratorSettings) -> _PlanDose:
    """Dose on its own coarser grid; the truth uses exactly the written (quantised) values."""
    dgrid = _dose_grid(phantom, prescriptions, ct, settings)
    dx, dy, dz = dgrid.broadcast_axes()
    dose_gy = phantom.dose_gy(dx, dy, dz, prescriptions)
    scaling = float(DOSE_GRID_SCALING)
    stored = np.rint(dose_gy / scaling).astype(np.uint32)
    return _PlanDose(dgrid, stored, DoseField(dgrid, stored.astype(np.float64) * scaling))


def _relapse_geometry(phantom: Phantom, ct: Grid, recurrence: Ellipsoid, settings: GeneratorSettings,
                      rng_warp: np.random.Generator, rng_grid: np.random.Generator) -> tuple[RelapseWarp, float, Grid]:
    """Known relapse -> planning mapping (calibrated on the body inside the planning field), its mean
    displacement (mm) and the relapse image grid, shifted to show the recurrence and the landmark."""
    ct_lo = np.asarray(ct.origin)
    ct_hi = ct_lo + (np.asarray(ct.shape) - 1) * np.asarray(ct.spacing)
    cal = rng_warp.uniform(ct_lo, ct_hi, size=(20000, 3))
    cal = cal[phantom.body_distance(cal[:, 0], cal[:, 1], cal[:, 2]) <= 0][:2000]
    body_c = (phantom.body_centre[0], phantom.body_centre[1], float(ct.centre[2]))
    warp = RelapseWarp.random(rng_warp, settings.mean_displacement_mm, centre_mm=body_c, calibration_points_mm=cal)
    mean_disp = float(np.mean(warp.displacement_mm(cal)))
    rshape = settings.relapse_shape or settings.ct_shape
    rspacing = settings.relapse_spacing or settings.ct_spacing
    rcentre = warp.planning_to_relapse(ct.centre[None])[0] + rng_grid.uniform(-1, 1, 3) * settings.relapse_offset_mm
    rgrid = _fit_relapse_field(_centred_grid(rshape, rspacing, rcentre), warp, _must_see(phantom, recurrence))
    return warp, mean_disp, rgrid


def _identities(patient_id: str, arm: str, key: str, rng: np.random.Generator) -> _Identity:
    """Patient tags, planning and relapse studies (dates months apart) and covariates."""
    num = int(re.sub(r"\D", "", patient_id) or 0)
    patient = PatientTags(patient_id, f"Synthetic^Subject{num:03d}",
                          (dt.date(1940, 1, 1) + dt.timedelta(days=int(rng.integers(0, 35 * 365)))).strftime("%Y%m%d"),
                          _choose(rng, ("M", "F")))
    plan_date = dt.date(2024, 1, 1) + dt.timedelta(days=int(rng.integers(0, 330)))
    months = int(rng.integers(4, 25))
    relapse_date = plan_date + dt.timedelta(days=int(round(months * 30.44)))
    age = plan_date.year - int(patient.birth_date[:4])
    covariates = {
        "patient_id": patient_id, "arm": arm,
        "site": _choose(rng, ("oropharynx", "larynx", "hypopharynx", "oral cavity", "nasopharynx")),
        "t_stage": _choose(rng, ("T1", "T2", "T3", "T4")),
        "age_group": f"{10 * (age // 10)}-{10 * (age // 10) + 9}",
        "smoking": _choose(rng, ("never", "former", "current")),
        "months_to_relapse": months,
    }
    # Drawn from their own stream (seeded by the patient key), so every other draw stays as it was.
    rng_cov = np.random.default_rng(int.from_bytes(hashlib.sha1(f"{key}/covariates".encode()).digest()[:8], "little"))
    covariates["n_stage"] = _choose(rng_cov, ("N0", "N1", "N2", "N3"))
    covariates["hpv_status"] = _choose(rng_cov, ("positive", "negative", "unknown"))
    return _Identity(patient, _study(key + "/planning", plan_date, rng, "RT planning H&N"),
                     _study(key + "/relapse", relapse_date, rng, "Relapse staging"), covariates)


def _level_ctv_names(rng: np.random.Generator, prescriptions: dict[str, float]) -> dict[str, str]:
    """CTV names by risk level (one spelling family per patient), for the levels the arm has."""
    style = int(rng.integers(2))
    return {lv: LEVEL_CTV_NAMES[lv][style] for lv in LEVELS if prescriptions[lv] > 0}


def _structure_names(rng: np.random.Generator, prescriptions: dict[str, float], config: TrialConfig,
                     export_case: str) -> tuple[dict[str, str], dict[str, str]]:
    """(planning names by generator key, relapse names by key); every name matches the trial's aliases
    (level-named CTVs match the trial's level aliases once it has them; not checked here)."""
    if export_case == "level_names":
        ctv_names = _level_ctv_names(rng, prescriptions)
    else:
        ctv_names = _ctv_names(rng, prescriptions, config)
    al = config.aliases
    names = {
        "body": _pick_matching(rng, BODY_NAMES, al.body, "body"),
        **{f"ctv_{lv}": n for lv, n in ctv_names.items()},
        "cord": _pick_matching(rng, CORD_NAMES, al.organs.get("SpinalCord", al.comparison), "cord"),
        "mandible": _pick_matching(rng, MANDIBLE_NAMES, al.organs.get("Mandible", al.comparison), "mandible"),
        "landmark": _pick_matching(rng, LANDMARK_NAMES, al.landmark, "landmark"),
    }
    names["parotid_l"], names["parotid_r"] = _choose(rng, PAROTID_NAMES)
    rel_names = {
        "recurrence": _pick_matching(rng, RECURRENCE_NAMES, al.recurrence, "recurrence"),
        "landmark": _pick_matching(rng, LANDMARK_NAMES, al.landmark, "landmark"),
        "mandible": _pick_matching(rng, MANDIBLE_NAMES, al.comparison, "mandible"),
        "cord": _pick_matching(rng, CORD_NAMES, al.comparison, "cord"),
    }
    return names, rel_names


COLOURS = {"body": (0, 255, 0), "ctv_low": (0, 0, 255), "ctv_intermediate": (0, 200, 200), "ctv_high": (255, 0, 0),
           "cord": (255, 255, 0), "mandible": (200, 200, 200), "parotid_l": (255, 128, 0),
           "parotid_r": (255, 0, 128), "thyroid_cartilage": (128, 0, 255), "recurrence": (255, 0, 255)}


def _write_planning_ct(files: "_Files", phantom: Phantom, ct: Grid, ident: _Identity, ctv_keys: list[str], *,
                       seed: int, key: str, settings: GeneratorSettings, position: str,
                       skip_slice: int | None) -> tuple[ImageSeriesWriter, ContourCollector]:
    """Planning CT (slab by slab) and the planning contours; `skip_slice` is not written (a lost file)."""
    plan_keys = ["body", *ctv_keys, "cord", "mandible", "parotid_l", "parotid_r", "thyroid_cartilage"]
    writer = ImageSeriesWriter(ct, "CT", ident.patient, ident.plan_study, series_number=1, description="Planning CT",
                               uid_seed=key + "/planning-ct", position=position)
    contours = ContourCollector(ct)
    i0, i1, j0, j1 = _planning_crop(phantom, ct)
    for k0 in range(0, ct.shape[2], settings.slab_slices):
        k1 = min(k0 + settings.slab_slices, ct.shape[2])
        x, y, z = ct.broadcast_axes(k0, k1)
        x, y = x[..., i0:i1], y[:, j0:j1]
        m = phantom.masks(x, y, z)
        hu = np.full((k1 - k0, ct.shape[1], ct.shape[0]), -1000.0, np.float32)
        hu[:, j0:j1, i0:i1] = phantom.hu(x, y, z, m)
        hu += _noise(seed, 1, k0, hu.shape, settings.ct_noise_hu)
        contours.add_slab(k0, {k: m[k] for k in plan_keys}, i0, j0)
        pix = np.clip(np.rint(hu), -1024, 3071).astype(np.int16) + np.int16(1024)
        for dk in range(k1 - k0):
            k = k0 + dk
            if k != skip_slice:
                save(writer.dataset(k, pix[dk]), files.path(ident.plan_study, 1, "CT", k + 1))
    return writer, contours


def _write_planning_rtstruct(files: "_Files", names: dict[str, str], ctv_keys: list[str],
                             contours: ContourCollector, ct_writer: ImageSeriesWriter, ident: _Identity,
                             key: str):
    rois = [RoiSpec("body", names["body"], "EXTERNAL", COLOURS["body"])]
    rois += [RoiSpec(k, names[k], "CTV", COLOURS[k]) for k in ctv_keys]
    rois += [RoiSpec(k, names[k], "ORGAN", COLOURS[k]) for k in ("cord", "mandible", "parotid_l", "parotid_r")]
    rois += [RoiSpec("thyroid_cartilage", names["landmark"], "ORGAN", COLOURS["thyroid_cartilage"])]
    rs = rtstruct_dataset(rois, contours.contours, ct_writer.ref, ident.patient, ident.plan_study,
                          uid_seed=key + "/planning-rs", label="Planning")
    save(rs, files.path(ident.plan_study, 900, "RTSTRUCT", 1))
    return rs


def _write_plan_dose(files: "_Files", dose: _PlanDose, ident: _Identity, phantom: Phantom,
                     prescriptions: dict[str, float], *, key: str, position: str, export_case: str,
                     rng: np.random.Generator) -> list[dict]:
    """The planned dose as the export case writes it: one PLAN file; per-beam BEAM files summing to it;
    or a main + a boost PLAN file (the boost on its own smaller grid) summing to it. Returns one truth
    record per file."""
    def write(stored, grid, summation, description, seed_suffix, n, **refs) -> dict:
        ds = rtdose_dataset(stored, DOSE_GRID_SCALING, grid, ident.patient, ident.plan_study,
                            uid_seed=key + seed_suffix, position=position, summation=summation,
                            description=description, **refs)
        save(ds, files.path(ident.plan_study, 901 + n, "RTDOSE", 1))
        return {"sop_instance_uid": ds.SOPInstanceUID, "dose_summation_type": summation,
                "description": description, "max_gy": round(float(stored.max()) * float(DOSE_GRID_SCALING), 5),
                "grid": grid.to_dict(), **refs}

    if export_case == "per_beam":
        n_beams = int(rng.integers(3, 6))
        plan_uid = uid(key, "rtplan")
        beams = _split_beams(dose.stored, dose.grid, tuple(phantom.ctv_high.centre[:2]), n_beams)
        return [write(b, dose.grid, "BEAM", f"Beam {n + 1}", f"/planning-rd-beam{n + 1}", n,
                      referenced_plan_uid=plan_uid, referenced_beam_number=n + 1) for n, b in enumerate(beams)]
    if export_case == "boost":
        split = min(int(round(_boost_split_gy(prescriptions) / float(DOSE_GRID_SCALING))), int(dose.stored.max()))
        main = np.minimum(dose.stored, np.uint32(split))
        boost, boost_grid = _crop_to_support(dose.stored - main, dose.grid)
        return [write(main, dose.grid, "PLAN", "Main plan", "/planning-rd", 0,
                      referenced_plan_uid=uid(key, "rtplan-main")),
                write(boost, boost_grid, "PLAN", "Boost plan", "/planning-rd-boost", 1,
                      referenced_plan_uid=uid(key, "rtplan-boost"))]
    return [write(dose.stored, dose.grid, "PLAN", "Planned dose", "/planning-rd", 0)]


def _write_relapse(files: "_Files", phantom: Phantom, warp: RelapseWarp, rgrid: Grid, recurrence: Ellipsoid,
                   rel_names: dict[str, str], ident: _Identity, *, modality: str, seed: int, key: str,
                   settings: GeneratorSettings, patient_id: str):
    """Relapse image (the phantom at warped points, plus the recurrence and new noise) and its RTSTRUCT."""
    writer = ImageSeriesWriter(rgrid, modality, ident.patient, ident.rel_study, series_number=1,
                               description=f"Relapse {modality}", uid_seed=key + "/relapse-img")
    contours = ContourCollector(rgrid)
    img_keys = ("body", "airway", "vertebra", "posterior_elements", "canal", "cord", "mandible",
                "thyroid_cartilage", "parotid_l", "parotid_r")
    air = -1000.0 if modality == "CT" else float(hu_to_mr(np.array([-1000.0]))[0])
    for k0 in range(0, rgrid.shape[2], settings.slab_slices):
        k1 = min(k0 + settings.slab_slices, rgrid.shape[2])
        shp = (k1 - k0, rgrid.shape[1], rgrid.shape[0])
        i0, i1, j0, j1 = _relapse_crop(phantom, warp, rgrid, k0, k1)
        qx, qy, qz = rgrid.broadcast_axes(k0, k1)
        x, y, z = warp.relapse_to_planning_xyz(qx[..., i0:i1], qy[:, j0:j1], qz)
        m = phantom.masks(x, y, z, img_keys)
        rec = recurrence.contains(x, y, z)
        clean = phantom.hu(x, y, z, m)
        tissue = rec & m["body"] & ~m["airway"]
        img = np.full(shp, air, np.float32)
        if modality == "CT":
            img[:, j0:j1, i0:i1] = clean + np.float32(settings.recurrence_hu) * tissue
            img += _noise(seed, 2, k0, shp, settings.ct_noise_hu)
            pix = np.clip(np.rint(img), -1024, 3071).astype(np.int16) + np.int16(1024)
        else:
            img[:, j0:j1, i0:i1] = hu_to_mr(clean) + np.float32(120.0) * tissue
            img += _noise(seed, 2, k0, shp, settings.mr_noise)
            pix = np.clip(np.rint(img), 0, 4095).astype(np.uint16)
        contours.add_slab(k0, {"recurrence": rec, "thyroid_cartilage": m["thyroid_cartilage"],
                               "mandible": m["mandible"], "cord": m["cord"]}, i0, j0)
        for dk in range(k1 - k0):
            save(writer.dataset(k0 + dk, pix[dk]), files.path(ident.rel_study, 1, modality, k0 + dk + 1))
    if not contours.contours.get("recurrence"):
        raise RuntimeError(f"{patient_id}: the recurrence falls outside the relapse image field")
    rois = [RoiSpec("recurrence", rel_names["recurrence"], "GTV", COLOURS["recurrence"]),
            RoiSpec("thyroid_cartilage", rel_names["landmark"], "ORGAN", COLOURS["thyroid_cartilage"]),
            RoiSpec("mandible", rel_names["mandible"], "ORGAN", COLOURS["mandible"]),
            RoiSpec("cord", rel_names["cord"], "ORGAN", COLOURS["cord"])]
    rrs = rtstruct_dataset(rois, contours.contours, writer.ref, ident.patient, ident.rel_study,
                           uid_seed=key + "/relapse-rs", label="Relapse")
    save(rrs, files.path(ident.rel_study, 900, "RTSTRUCT", 1))
    return writer, rrs


def _expected_outcome(export_case: str, ct: Grid, skip_slice: int | None) -> dict:
    """What the pipeline must do with this export (recorded in the truth; rtmap_synth.evaluation reads it)."""
    if export_case == "gap":
        z = ct.z_at(skip_slice)
        return {"outcome": "refused", "code": GAP_REFUSAL_CODE, "missing_slice_index": skip_slice,
                "missing_slice_z_mm": z, "gap_mm": round(ct.z_at(skip_slice + 1) - ct.z_at(skip_slice - 1), 4),
                "why": "planning CT with one slice missing: a real gap, not jitter"}
    notes = {
        "standard": "classes as in 'classes'",
        "level_names": "classes; CTVs are named by risk level (the trial's level aliases must map them)",
        "per_beam": "classes; the plan dose is the sum of the BEAM RTDOSE files (no PLAN file)",
        "boost": "classes; the plan dose is the main + boost PLAN RTDOSE sum (same frame of reference)",
        "ffs": "classes; planning CT and dose written feet first supine",
        "hfp": "classes; planning CT and dose written head first prone",
        "ffp": "classes; planning CT and dose written feet first prone",
        "jitter": f"classes; planning slices jitter by up to {JITTER_MM} mm (accept)",
        "irregular": f"classes; planning slice steps {IRREGULAR_STEPS_MM[0]}-{IRREGULAR_STEPS_MM[1]} mm on a "
                     f"{IRREGULAR_NOMINAL_MM} mm series (accept and resample)",
    }
    return {"outcome": "classified", "why": notes[export_case]}


def _write_truth(truth_dir: Path, truth: dict) -> None:
    truth_dir.mkdir(parents=True, exist_ok=True)
    pid = truth["patient_id"]
    tmp = truth_dir / f".{pid}.json.tmp"
    tmp.write_text(json.dumps(truth, indent=1))
    tmp.replace(truth_dir / f"{pid}.json")


def _truth_record(*, patient_id: str, config: TrialConfig, arm: str, case: str, export_case: str, seed: int,
                  relapse_modality: str, settings: GeneratorSettings, layout: str, position: str, phantom: Phantom,
                  warp: RelapseWarp, mean_disp: float, centre: np.ndarray, rec_radii, result: dict,
                  names: dict[str, str], rel_names: dict[str, str], ident: _Identity, ct: Grid, rgrid: Grid,
                  dose: _PlanDose, dose_files: list[dict], skip: int | None, ct_writer: ImageSeriesWriter, rs,
                  rel_writer: ImageSeriesWriter, rrs, n_files: int) -> dict:
    """The patient's truth JSON (docs/ARCHITECTURE.md, "Synthetic ground truth")."""
    plan_study, rel_study = ident.plan_study, ident.rel_study
    return {
        "patient_id": patient_id,
        "trial": config.trial,
        "arm": arm,
        "prescriptions": config.prescriptions(arm),
        "case": case,
        "export_case": export_case,
        "expected": _expected_outcome(export_case, ct, skip),
        "relapse_modality": relapse_modality,
        "planning_patient_position": position,
        "warp": warp.to_dict(),
        "mean_displacement_mm": round(mean_disp, 3),
        "recurrence": {
            "name": rel_names["recurrence"],
            "centroid_planning_mm": [float(v) for v in centre],
            "radius_mm": round(float(np.cbrt(np.prod(rec_radii))), 3),
            "radii_mm": list(rec_radii),
            "shape": "axis-aligned ellipsoid in planning space; relapse image = {q: relapse_to_planning(q) inside}",
        },
        "landmark": {"name": names["landmark"], "relapse_name": rel_names["landmark"],
                     "centroid_planning_mm": [round(float(v), 4) for v in landmark_centroid(phantom)]},
        "structure_names": {**names, **{f"relapse_{k}": v for k, v in rel_names.items()}},
        "ctv_naming": "level" if export_case == "level_names" else "dose",
        "sphere_radius_mm": config.uncertainty.radius_mm,
        "classes": result["classes"],
        "mohamed": result["mohamed"],
        "covariates": ident.covariates,
        "seed": seed,
        "layout": layout,
        "planning_grid": ct.to_dict(),
        "relapse_grid": rgrid.to_dict(),
        "dose_grid": dose.grid.to_dict(),
        "dose_grid_scaling": DOSE_GRID_SCALING,
        "dose_files": dose_files,
        "uids": {
            "planning_study": plan_study.study_uid, "planning_frame_of_reference": plan_study.frame_of_reference_uid,
            "planning_ct_series": ct_writer.ref.series_uid, "planning_rtstruct": rs.SOPInstanceUID,
            "planning_rtdose": dose_files[0]["sop_instance_uid"], "relapse_study": rel_study.study_uid,
            "relapse_frame_of_reference": rel_study.frame_of_reference_uid,
            "relapse_image_series": rel_writer.ref.series_uid, "relapse_rtstruct": rrs.SOPInstanceUID,
        },
        "study_dates": {"planning": plan_study.study_date, "relapse": rel_study.study_date},
        "n_files": n_files,
        "phantom": phantom.to_dict(),
        "generator": {"settings": asdict(settings),
                      "truth_method": "dose = written RTDOSE (stored x DoseGridScaling; the sum of the files when "
                                      "several), trilinear at mm points; sphere and recurrence fractions on 0.5 mm "
                                      "lattices; CTV membership analytic; placement robust to +-2 mm shifts and 2 mm "
                                      "rasterisation"},
    }


# -- one patient --------------------------------------------------------------------------------
def generate_patient(raw_trial_dir: Path, truth_dir: Path, patient_id: str, *, seed: int, arm: str, case: str,
                     relapse_modality: str = "CT", settings: GeneratorSettings = GeneratorSettings(),
                     config: TrialConfig | None = None, export_case: str = "standard") -> dict:
    """Write one patient's export to raw_trial_dir/<patient_id>/ and truth to truth_dir/<patient_id>.json.

    `case` places the recurrence (inside / peripheral / outside the high-dose region); `export_case`
    (EXPORT_CASES) chooses how the export is written (level-named CTVs, per-beam or boost dose, patient
    position, irregular or gapped planning slices). The anatomy, dose and recurrence of a seed do not
    depend on `export_case` (except `irregular`, whose planning slices differ). An existing export folder
    of the same patient is replaced. Returns the truth dict.
    """
    config = config if config is not None else load_trial_config()
    _check_request(config, arm, case, relapse_modality, export_case)
    raw_trial_dir, truth_dir = Path(raw_trial_dir), Path(truth_dir)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(8)]
    rng_ph, rng_warp, rng_place, rng_meta, rng_files, rng_names, rng_grid, rng_case = streams
    key = f"rtmap-synth/{seed}/{patient_id}"
    prescriptions = config.prescriptions(arm)

    phantom = Phantom.random(rng_ph)
    ct = _planning_grid(settings, export_case, rng_case)
    dose = _plan_dose(phantom, prescriptions, ct, settings)
    centre, rec_radii, result = place_recurrence(case, rng_place, dose.field, phantom, prescriptions,
                                                 config.thresholds, config.uncertainty.radius_mm, np.asarray(ct.origin))
    recurrence = Ellipsoid(tuple(float(v) for v in centre), rec_radii)
    warp, mean_disp, rgrid = _relapse_geometry(phantom, ct, recurrence, settings, rng_warp, rng_grid)
    ident = _identities(patient_id, arm, key, rng_meta)
    names, rel_names = _structure_names(rng_names, prescriptions, config, export_case)
    ctv_keys = [k for k in names if k.startswith("ctv_")]

    layout = settings.layout if settings.layout != "mixed" else _choose(rng_files, ("flat", "nested"))
    export = raw_trial_dir / patient_id
    if export.exists():
        shutil.rmtree(export)
    files = _Files(export, layout, rng_files)
    position = _planning_position(export_case)
    skip = _gap_slice(ct, export_case, rng_case)

    ct_writer, plan_contours = _write_planning_ct(files, phantom, ct, ident, ctv_keys, seed=seed, key=key,
                                                  settings=settings, position=position, skip_slice=skip)
    rs = _write_planning_rtstruct(files, names, ctv_keys, plan_contours, ct_writer, ident, key)
    dose_files = _write_plan_dose(files, dose, ident, phantom, prescriptions, key=key, position=position,
                                  export_case=export_case, rng=rng_case)
    rel_writer, rrs = _write_relapse(files, phantom, warp, rgrid, recurrence, rel_names, ident,
                                     modality=relapse_modality, seed=seed, key=key, settings=settings,
                                     patient_id=patient_id)

    truth = _truth_record(
        patient_id=patient_id, config=config, arm=arm, case=case, export_case=export_case, seed=seed,
        relapse_modality=relapse_modality, settings=settings, layout=layout, position=position, phantom=phantom,
        warp=warp, mean_disp=mean_disp, centre=centre, rec_radii=rec_radii, result=result, names=names,
        rel_names=rel_names, ident=ident, ct=ct, rgrid=rgrid, dose=dose, dose_files=dose_files, skip=skip,
        ct_writer=ct_writer, rs=rs, rel_writer=rel_writer, rrs=rrs, n_files=len(files.written))
    _write_truth(truth_dir, truth)
    log.info("synthetic patient %s: arm %s, case %s, export %s, %d files", patient_id, arm, case, export_case,
             len(files.written))
    return truth


# -- cohort -------------------------------------------------------------------------------------
def cohort_plan(n_patients: int, arms: list[str], first_index: int = 0) -> list[tuple[str, str]]:
    """(arm, case) per patient index first_index.. : arms cycle, cases shift by one every full arm cycle,
    so 6 patients cover every arm and every case and 9 cover every (arm, case) pair (for 3 arms)."""
    na = len(arms)
    return [(arms[i % na], CASES[(i + i // na) % len(CASES)]) for i in range(first_index, first_index + n_patients)]


PATIENT_ID_PREFIX = "SYN-"
_ID_RE = re.compile(rf"^{re.escape(PATIENT_ID_PREFIX)}(\d+)(?:\.json)?$")


def next_patient_number(*folders: Path) -> int:
    """1 + the highest SYN-<n> id among the entries (export folders or truth files) of `folders`
    (1 when there is none), so added patients never reuse an id."""
    highest = 0
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            m = _ID_RE.match(entry.name)
            if m:
                highest = max(highest, int(m.group(1)))
    return highest + 1


def _write_covariates(path: Path, truths: list[dict], *, append: bool) -> None:
    """Covariates CSV of the cohort; with `append`, rows of other patients already in the file are kept."""
    path = Path(path)
    rows: dict[str, dict] = {}
    if append and path.exists():
        with path.open(newline="") as fh:
            rows = {r["patient_id"]: r for r in csv.DictReader(fh)}
    for t in truths:
        rows[t["patient_id"]] = t["covariates"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(COVARIATE_COLUMNS))
        w.writeheader()
        for pid in sorted(rows):
            w.writerow({c: rows[pid][c] for c in COVARIATE_COLUMNS})
    tmp.replace(path)


def generate_cohort(raw_root: Path, truth_root: Path, covariates_path: Path, *, n_patients: int = 6, seed: int = 0,
                    settings: GeneratorSettings = GeneratorSettings(), config: TrialConfig | None = None,
                    first_number: int = 1, export_cases: tuple[str, ...] = ("standard",)) -> list[dict]:
    """Write raw_root/<trial>/<patient_id>/..., truth_root/<trial>/<patient_id>.json and the covariates CSV.

    Patients are SYN-<first_number>.. ; each patient's seed, arm, case, layout and relapse modality follow
    from its number alone, so adding patients later (`first_number` = next_patient_number) extends a
    cohort exactly as generating the larger cohort at once would. With first_number > 1 the covariates
    CSV keeps the rows already there. `export_cases` cycle over the patients (EXPORT_CASES).
    """
    config = config if config is not None else load_trial_config()
    for c in export_cases:
        if c not in EXPORT_CASES:
            raise ValueError(f"export case must be one of {EXPORT_CASES}, got {c!r}")
    raw_trial, truth_trial = Path(raw_root) / config.trial, Path(truth_root) / config.trial
    first = first_number - 1
    truths = []
    for i, (arm, case) in zip(range(first, first + n_patients), cohort_plan(n_patients, sorted(config.arms), first)):
        pseed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        layout = settings.layout if settings.layout != "mixed" else ("flat", "nested")[i % 2]
        modality = "MR" if settings.mr_every and (i + 1) % settings.mr_every == 0 else "CT"
        truths.append(generate_patient(raw_trial, truth_trial, f"{PATIENT_ID_PREFIX}{i + 1:03d}", seed=pseed, arm=arm,
                                       case=case, relapse_modality=modality, settings=replace(settings, layout=layout),
                                       config=config, export_case=export_cases[i % len(export_cases)]))
    _write_covariates(covariates_path, truths, append=first_number > 1)
    return truths
