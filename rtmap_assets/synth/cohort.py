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
import re
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from rtmap_assets.config import LEVELS, TrialConfig, load_trial_config
from rtmap_assets.naming import first_match
from rtmap_assets.synth.dicom_write import (
    ContourCollector, ImageSeriesWriter, PatientTags, RoiSpec, StudyInfo, rtdose_dataset, rtstruct_dataset, save, uid,
)
from rtmap_assets.synth.phantom import Ellipsoid, Grid, Phantom
from rtmap_assets.synth.truth import CASES, DoseField, landmark_centroid, place_recurrence
from rtmap_assets.synth.warp import RelapseWarp

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


# -- one patient --------------------------------------------------------------------------------
def generate_patient(raw_trial_dir: Path, truth_dir: Path, patient_id: str, *, seed: int, arm: str, case: str,
                     relapse_modality: str = "CT", settings: GeneratorSettings = GeneratorSettings(),
                     config: TrialConfig | None = None) -> dict:
    """Write one patient's export to raw_trial_dir/<patient_id>/ and truth to truth_dir/<patient_id>.json.

    An existing export folder of the same patient is replaced. Returns the truth dict.
    """
    config = config if config is not None else load_trial_config()
    if arm not in config.arms:
        raise ValueError(f"arm {arm!r} not in the trial config arms {sorted(config.arms)}")
    if case not in CASES:
        raise ValueError(f"case must be one of {CASES}, got {case!r}")
    if relapse_modality not in ("CT", "MR"):
        raise ValueError(f"relapse_modality must be CT or MR, got {relapse_modality!r}")
    raw_trial_dir, truth_dir = Path(raw_trial_dir), Path(truth_dir)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(8)]
    rng_ph, rng_warp, rng_place, rng_meta, rng_files, rng_names, rng_grid, rng_cov = streams
    key = f"rtmap-synth/{seed}/{patient_id}"
    prescriptions = config.prescriptions(arm)
    th = config.thresholds

    phantom = Phantom.random(rng_ph)
    ct = _centred_grid(settings.ct_shape, settings.ct_spacing)
    working_origin = np.asarray(ct.origin)

    # Dose on its own coarser grid; the truth uses exactly the written (quantised) values.
    dgrid = _dose_grid(phantom, prescriptions, ct, settings)
    dx, dy, dz = dgrid.broadcast_axes()
    dose_gy = phantom.dose_gy(dx, dy, dz, prescriptions)
    scaling = float(DOSE_GRID_SCALING)
    stored = np.rint(dose_gy / scaling).astype(np.uint32)
    dose = DoseField(dgrid, stored.astype(np.float64) * scaling)

    centre, rec_radii, result = place_recurrence(case, rng_place, dose, phantom, prescriptions, th,
                                                 config.uncertainty.radius_mm, working_origin)
    recurrence = Ellipsoid(tuple(float(v) for v in centre), rec_radii)

    # Known relapse -> planning mapping, calibrated on the body inside the planning field.
    cal = rng_warp.uniform(np.asarray(ct.origin), np.asarray(ct.origin) + (np.asarray(ct.shape) - 1) * np.asarray(ct.spacing),
                           size=(20000, 3))
    cal = cal[phantom.body_distance(cal[:, 0], cal[:, 1], cal[:, 2]) <= 0][:2000]
    body_c = (phantom.body_centre[0], phantom.body_centre[1], float(ct.centre[2]))
    warp = RelapseWarp.random(rng_warp, settings.mean_displacement_mm, centre_mm=body_c, calibration_points_mm=cal)
    mean_disp = float(np.mean(warp.displacement_mm(cal)))

    rshape = settings.relapse_shape or settings.ct_shape
    rspacing = settings.relapse_spacing or settings.ct_spacing
    rcentre = warp.planning_to_relapse(ct.centre[None])[0] + rng_grid.uniform(-1, 1, 3) * settings.relapse_offset_mm
    rgrid = _centred_grid(rshape, rspacing, rcentre)
    rgrid = _fit_relapse_field(rgrid, warp, _must_see(phantom, recurrence))

    # Identities, dates, names.
    num = int(re.sub(r"\D", "", patient_id) or 0)
    patient = PatientTags(patient_id, f"Synthetic^Subject{num:03d}",
                          (dt.date(1940, 1, 1) + dt.timedelta(days=int(rng_meta.integers(0, 35 * 365)))).strftime("%Y%m%d"),
                          _choose(rng_meta, ("M", "F")))
    plan_date = dt.date(2024, 1, 1) + dt.timedelta(days=int(rng_meta.integers(0, 330)))
    months = int(rng_meta.integers(4, 25))
    relapse_date = plan_date + dt.timedelta(days=int(round(months * 30.44)))
    birth_year = int(patient.birth_date[:4])
    age = plan_date.year - birth_year
    covariates = {
        "patient_id": patient_id, "arm": arm,
        "site": _choose(rng_meta, ("oropharynx", "larynx", "hypopharynx", "oral cavity", "nasopharynx")),
        "t_stage": _choose(rng_meta, ("T1", "T2", "T3", "T4")),
        "age_group": f"{10 * (age // 10)}-{10 * (age // 10) + 9}",
        "smoking": _choose(rng_meta, ("never", "former", "current")),
        "months_to_relapse": months,
        # from the spare stream, so every other draw (and so every existing cohort) is unchanged
        "n_stage": _choose(rng_cov, ("N0", "N1", "N2", "N3")),
        "hpv_status": _choose(rng_cov, ("positive", "negative", "unknown")),
    }
    plan_study = _study(key + "/planning", plan_date, rng_meta, "RT planning H&N")
    rel_study = _study(key + "/relapse", relapse_date, rng_meta, "Relapse staging")

    ctv_names = _ctv_names(rng_names, prescriptions, config)
    al = config.aliases
    names = {
        "body": _pick_matching(rng_names, BODY_NAMES, al.body, "body"),
        **{f"ctv_{lv}": n for lv, n in ctv_names.items()},
        "cord": _pick_matching(rng_names, CORD_NAMES, al.organs.get("SpinalCord", al.comparison), "cord"),
        "mandible": _pick_matching(rng_names, MANDIBLE_NAMES, al.organs.get("Mandible", al.comparison), "mandible"),
        "landmark": _pick_matching(rng_names, LANDMARK_NAMES, al.landmark, "landmark"),
    }
    names["parotid_l"], names["parotid_r"] = _choose(rng_names, PAROTID_NAMES)
    rel_names = {
        "recurrence": _pick_matching(rng_names, RECURRENCE_NAMES, al.recurrence, "recurrence"),
        "landmark": _pick_matching(rng_names, LANDMARK_NAMES, al.landmark, "landmark"),
        "mandible": _pick_matching(rng_names, MANDIBLE_NAMES, al.comparison, "mandible"),
        "cord": _pick_matching(rng_names, CORD_NAMES, al.comparison, "cord"),
    }

    layout = settings.layout if settings.layout != "mixed" else _choose(rng_files, ("flat", "nested"))
    export = raw_trial_dir / patient_id
    if export.exists():
        shutil.rmtree(export)
    files = _Files(export, layout, rng_files)

    # Planning CT + planning contours, slab by slab.
    plan_keys = ["body", *[f"ctv_{lv}" for lv in ctv_names], "cord", "mandible", "parotid_l", "parotid_r",
                 "thyroid_cartilage"]
    ct_writer = ImageSeriesWriter(ct, "CT", patient, plan_study, series_number=1, description="Planning CT",
                                  uid_seed=key + "/planning-ct")
    plan_contours = ContourCollector(ct)
    i0, i1, j0, j1 = _planning_crop(phantom, ct)
    for k0 in range(0, ct.shape[2], settings.slab_slices):
        k1 = min(k0 + settings.slab_slices, ct.shape[2])
        x, y, z = ct.broadcast_axes(k0, k1)
        x, y = x[..., i0:i1], y[:, j0:j1]
        m = phantom.masks(x, y, z)
        hu = np.full((k1 - k0, ct.shape[1], ct.shape[0]), -1000.0, np.float32)
        hu[:, j0:j1, i0:i1] = phantom.hu(x, y, z, m)
        hu += _noise(seed, 1, k0, hu.shape, settings.ct_noise_hu)
        plan_contours.add_slab(k0, {k: m[k] for k in plan_keys}, i0, j0)
        pix = np.clip(np.rint(hu), -1024, 3071).astype(np.int16) + np.int16(1024)
        for dk in range(k1 - k0):
            save(ct_writer.dataset(k0 + dk, pix[dk]), files.path(plan_study, 1, "CT", k0 + dk + 1))

    colours = {"body": (0, 255, 0), "ctv_low": (0, 0, 255), "ctv_intermediate": (0, 200, 200), "ctv_high": (255, 0, 0),
               "cord": (255, 255, 0), "mandible": (200, 200, 200), "parotid_l": (255, 128, 0),
               "parotid_r": (255, 0, 128), "thyroid_cartilage": (128, 0, 255), "recurrence": (255, 0, 255)}
    plan_rois = [RoiSpec("body", names["body"], "EXTERNAL", colours["body"])]
    plan_rois += [RoiSpec(f"ctv_{lv}", n, "CTV", colours[f"ctv_{lv}"]) for lv, n in ctv_names.items()]
    plan_rois += [RoiSpec("cord", names["cord"], "ORGAN", colours["cord"]),
                  RoiSpec("mandible", names["mandible"], "ORGAN", colours["mandible"]),
                  RoiSpec("parotid_l", names["parotid_l"], "ORGAN", colours["parotid_l"]),
                  RoiSpec("parotid_r", names["parotid_r"], "ORGAN", colours["parotid_r"]),
                  RoiSpec("thyroid_cartilage", names["landmark"], "ORGAN", colours["thyroid_cartilage"])]
    rs = rtstruct_dataset(plan_rois, plan_contours.contours, ct_writer.ref, patient, plan_study,
                          uid_seed=key + "/planning-rs", label="Planning")
    save(rs, files.path(plan_study, 900, "RTSTRUCT", 1))
    rd = rtdose_dataset(stored, DOSE_GRID_SCALING, dgrid, patient, plan_study, uid_seed=key + "/planning-rd")
    save(rd, files.path(plan_study, 901, "RTDOSE", 1))

    # Relapse image: the phantom at warped points, plus the recurrence and new noise.
    rel_writer = ImageSeriesWriter(rgrid, relapse_modality, patient, rel_study, series_number=1,
                                   description=f"Relapse {relapse_modality}", uid_seed=key + "/relapse-img")
    rel_contours = ContourCollector(rgrid)
    img_keys = ("body", "airway", "vertebra", "posterior_elements", "canal", "cord", "mandible",
                "thyroid_cartilage", "parotid_l", "parotid_r")
    air = -1000.0 if relapse_modality == "CT" else float(hu_to_mr(np.array([-1000.0]))[0])
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
        if relapse_modality == "CT":
            img[:, j0:j1, i0:i1] = clean + np.float32(settings.recurrence_hu) * tissue
            img += _noise(seed, 2, k0, shp, settings.ct_noise_hu)
            pix = np.clip(np.rint(img), -1024, 3071).astype(np.int16) + np.int16(1024)
        else:
            img[:, j0:j1, i0:i1] = hu_to_mr(clean) + np.float32(120.0) * tissue
            img += _noise(seed, 2, k0, shp, settings.mr_noise)
            pix = np.clip(np.rint(img), 0, 4095).astype(np.uint16)
        rel_contours.add_slab(k0, {"recurrence": rec, "thyroid_cartilage": m["thyroid_cartilage"],
                                   "mandible": m["mandible"], "cord": m["cord"]}, i0, j0)
        for dk in range(k1 - k0):
            save(rel_writer.dataset(k0 + dk, pix[dk]), files.path(rel_study, 1, relapse_modality, k0 + dk + 1))
    if not rel_contours.contours.get("recurrence"):
        raise RuntimeError(f"{patient_id}: the recurrence falls outside the relapse image field")
    rel_rois = [RoiSpec("recurrence", rel_names["recurrence"], "GTV", colours["recurrence"]),
                RoiSpec("thyroid_cartilage", rel_names["landmark"], "ORGAN", colours["thyroid_cartilage"]),
                RoiSpec("mandible", rel_names["mandible"], "ORGAN", colours["mandible"]),
                RoiSpec("cord", rel_names["cord"], "ORGAN", colours["cord"])]
    rrs = rtstruct_dataset(rel_rois, rel_contours.contours, rel_writer.ref, patient, rel_study,
                           uid_seed=key + "/relapse-rs", label="Relapse")
    save(rrs, files.path(rel_study, 900, "RTSTRUCT", 1))

    truth = {
        "patient_id": patient_id,
        "trial": config.trial,
        "arm": arm,
        "prescriptions": prescriptions,
        "case": case,
        "relapse_modality": relapse_modality,
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
        "sphere_radius_mm": config.uncertainty.radius_mm,
        "classes": result["classes"],
        "mohamed": result["mohamed"],
        "covariates": covariates,
        "seed": seed,
        "layout": layout,
        "planning_grid": ct.to_dict(),
        "relapse_grid": rgrid.to_dict(),
        "dose_grid": dgrid.to_dict(),
        "dose_grid_scaling": DOSE_GRID_SCALING,
        "uids": {
            "planning_study": plan_study.study_uid, "planning_frame_of_reference": plan_study.frame_of_reference_uid,
            "planning_ct_series": ct_writer.ref.series_uid, "planning_rtstruct": rs.SOPInstanceUID,
            "planning_rtdose": rd.SOPInstanceUID, "relapse_study": rel_study.study_uid,
            "relapse_frame_of_reference": rel_study.frame_of_reference_uid,
            "relapse_image_series": rel_writer.ref.series_uid, "relapse_rtstruct": rrs.SOPInstanceUID,
        },
        "study_dates": {"planning": plan_study.study_date, "relapse": rel_study.study_date},
        "n_files": len(files.written),
        "phantom": phantom.to_dict(),
        "generator": {"settings": asdict(settings),
                      "truth_method": "dose = written RTDOSE (stored x DoseGridScaling), trilinear at mm points; "
                                      "sphere and recurrence fractions on 0.5 mm lattices; CTV membership analytic; "
                                      "placement robust to +-2 mm shifts and 2 mm rasterisation"},
    }
    truth_dir.mkdir(parents=True, exist_ok=True)
    tmp = truth_dir / f".{patient_id}.json.tmp"
    tmp.write_text(json.dumps(truth, indent=1))
    tmp.replace(truth_dir / f"{patient_id}.json")
    log.info("synthetic patient %s: arm %s, case %s, %d files", patient_id, arm, case, len(files.written))
    return truth


# -- cohort -------------------------------------------------------------------------------------
def cohort_plan(n_patients: int, arms: list[str]) -> list[tuple[str, str]]:
    """(arm, case) per patient: arms cycle, cases shift by one every full arm cycle, so 6 patients
    cover every arm and every case and 9 cover every (arm, case) pair (for 3 arms)."""
    na = len(arms)
    return [(arms[i % na], CASES[(i + i // na) % len(CASES)]) for i in range(n_patients)]


def generate_cohort(raw_root: Path, truth_root: Path, covariates_path: Path, *, n_patients: int = 6, seed: int = 0,
                    settings: GeneratorSettings = GeneratorSettings(), config: TrialConfig | None = None) -> list[dict]:
    """Write raw_root/<trial>/<patient_id>/..., truth_root/<trial>/<patient_id>.json and the covariates CSV."""
    config = config if config is not None else load_trial_config()
    raw_trial, truth_trial = Path(raw_root) / config.trial, Path(truth_root) / config.trial
    truths = []
    for i, (arm, case) in enumerate(cohort_plan(n_patients, sorted(config.arms))):
        pseed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        layout = settings.layout if settings.layout != "mixed" else ("flat", "nested")[i % 2]
        modality = "MR" if settings.mr_every and (i + 1) % settings.mr_every == 0 else "CT"
        truths.append(generate_patient(raw_trial, truth_trial, f"SYN-{i + 1:03d}", seed=pseed, arm=arm, case=case,
                                       relapse_modality=modality, settings=replace(settings, layout=layout),
                                       config=config))
    covariates_path = Path(covariates_path)
    covariates_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = covariates_path.with_name(f".{covariates_path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(COVARIATE_COLUMNS))
        w.writeheader()
        for t in truths:
            w.writerow(t["covariates"])
    tmp.replace(covariates_path)
    return truths
