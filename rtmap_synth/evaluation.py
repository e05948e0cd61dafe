"""Ground-truth evaluation of pipeline outputs on synthetic patients (never used by the pipeline itself).

Pure functions over what the imaging step stores (`transform.h5`, the working-grid volumes,
`relapse_registered.nii.gz`) and the generator's truth JSON. The orchestration layer calls them only
where a truth file exists (an evaluation asset check); the registration benchmark calls them too.

Conventions: the stored transform T maps a planning point p to a relapse point (SimpleITK's
fixed -> moving direction); the truth's warp maps relapse -> planning exactly, and its inverse
`planning_to_relapse` is exact to 1e-6 mm. TRE at p = |T(p) - warp^-1(p)|.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import SimpleITK as sitk

from rtmap_assets.imaging import grid as wg
from rtmap_assets.imaging.mapping import mask_centroid_mm, transform_points
from rtmap_assets.imaging.qc import ellipsoid_mask, erode_by_mm, overlap_metrics
from rtmap_synth.warp import RelapseWarp

TRE_POINTS = 200
TRE_MARGIN_MM = 10.0
METRIC_KEYS = ("tre_mean_mm", "tre_max_mm", "tre_points", "recurrence_dice_truth", "recurrence_centroid_error_mm")


def registered_relapse_body(registered_image: sitk.Image, relapse_modality: str) -> sitk.Image:
    """Body mask of the relapse image resampled into planning space (it ends where the relapse field
    of view ends, since the resampling pads with air / 0)."""
    is_mr = relapse_modality.upper() == "MR"
    return wg.body_mask(registered_image, threshold=None if is_mr else wg.BODY_THRESHOLD_HU)


def tre_sample_points_mm(planning_body: sitk.Image, registered_body: sitk.Image, n_points: int = TRE_POINTS, *,
                         margin_mm: float = TRE_MARGIN_MM, seed: int = 0) -> np.ndarray:
    """(n, 3) planning points at least `margin_mm` inside both body outlines: anatomy both images show
    (near a field edge a B-spline is extrapolating, which is not what TRE should measure)."""
    inner = erode_by_mm(planning_body, margin_mm) & erode_by_mm(registered_body, margin_mm)
    kji = np.argwhere(sitk.GetArrayViewFromImage(inner) > 0)
    if len(kji) == 0:
        return np.zeros((0, 3))
    rng = np.random.default_rng(seed)
    pick = kji[rng.choice(len(kji), size=min(n_points, len(kji)), replace=False)]
    return np.array([planning_body.TransformIndexToPhysicalPoint([int(v) for v in idx[::-1]]) for idx in pick])


def tre_mm(transform: sitk.Transform, planning_pts_mm: np.ndarray, truth: dict) -> np.ndarray:
    """TRE (mm) at planning points: |T(p) - q_true(p)| with q_true from the truth's exact warp."""
    p = np.asarray(planning_pts_mm, dtype=float).reshape(-1, 3)
    if len(p) == 0:
        return np.zeros(0)
    q_true = RelapseWarp.from_dict(truth["warp"]).planning_to_relapse(p)
    return np.linalg.norm(transform_points(transform, p) - q_true, axis=1)


def tre_metrics(transform: sitk.Transform, planning_body: sitk.Image, registered_body: sitk.Image, truth: dict, *,
                n_points: int = TRE_POINTS, margin_mm: float = TRE_MARGIN_MM, seed: int = 0) -> dict:
    """{tre_mean_mm, tre_max_mm, tre_points}; means are None when no point qualifies."""
    pts = tre_sample_points_mm(planning_body, registered_body, n_points, margin_mm=margin_mm, seed=seed)
    tre = tre_mm(transform, pts, truth)
    if tre.size == 0:
        return {"tre_mean_mm": None, "tre_max_mm": None, "tre_points": 0}
    return {"tre_mean_mm": float(tre.mean()), "tre_max_mm": float(tre.max()), "tre_points": int(tre.size)}


def recurrence_metrics(mapped_recurrence: sitk.Image, truth: dict) -> dict:
    """{recurrence_dice_truth, recurrence_centroid_error_mm}: the mapped recurrence mask (working grid)
    against the true recurrence ellipsoid rasterised on the same grid, and its centroid error."""
    rec = truth["recurrence"]
    radii = rec.get("radii_mm") or [rec["radius_mm"]] * 3
    centre = np.asarray(rec["centroid_planning_mm"], float)
    true_mask = ellipsoid_mask(centre, radii, mapped_recurrence)
    dice = overlap_metrics(sitk.Cast(mapped_recurrence > 0, sitk.sitkUInt8), true_mask)["dice"]
    c = mask_centroid_mm(mapped_recurrence)
    return {"recurrence_dice_truth": None if dice is None else float(dice),
            "recurrence_centroid_error_mm": None if c is None else float(np.linalg.norm(np.asarray(c) - centre))}


def evaluate_imaging(transform: sitk.Transform, planning_body: sitk.Image, registered_body: sitk.Image,
                     mapped_recurrence: sitk.Image, truth: dict, *, n_points: int = TRE_POINTS,
                     margin_mm: float = TRE_MARGIN_MM, seed: int = 0) -> dict:
    """All imaging truth metrics, keyed like the registration_qc columns (METRIC_KEYS)."""
    return {**tre_metrics(transform, planning_body, registered_body, truth, n_points=n_points,
                          margin_mm=margin_mm, seed=seed),
            **recurrence_metrics(mapped_recurrence, truth)}


def evaluate_imaging_dir(volumes_dir: Path, truth: dict, relapse_modality: str = "CT", **kw) -> dict:
    """`evaluate_imaging` on what `run_imaging` stored in `volumes_dir` (transform.h5, volumes.json + masks,
    relapse_registered.nii.gz). The planning body is the planning BODY structure, else the thresholded
    planning image (as run_imaging chooses its registration mask)."""
    from rtmap_assets.pipeline.volumes import PatientVolumes

    volumes_dir = Path(volumes_dir)
    volumes = PatientVolumes.load(volumes_dir)
    transform = sitk.ReadTransform(str(volumes_dir / "transform.h5"))
    bodies = volumes.find("body", "planning")
    planning_body = bodies[0].mask if bodies else wg.body_mask(volumes.image)
    registered = sitk.ReadImage(str(volumes_dir / "relapse_registered.nii.gz"), sitk.sitkFloat32)
    recs = volumes.find("recurrence", "mapped")
    if len(recs) != 1:
        raise ValueError(f"{volumes_dir}: expected one mapped recurrence, found {len(recs)}")
    return evaluate_imaging(transform, planning_body, registered_relapse_body(registered, relapse_modality),
                            recs[0].mask, truth, **kw)


def load_truth(path: Path) -> dict | None:
    """The truth JSON of a patient, or None when there is none (not a synthetic patient)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def expected_outcome(truth: dict) -> dict:
    """What the pipeline must do with the patient: {"outcome": "classified"} or {"outcome": "refused",
    "code": ..., ...}. Truth files written before cases existed are all "classified"."""
    return truth.get("expected", {"outcome": "classified"})


def truth_mismatches(classification: pl.DataFrame, truth: dict) -> list[str]:
    """Differences between the classification rows and the generator's truth (empty list = all equal).

    A patient the generator made to be refused (e.g. a missing planning slice) must not be classified.
    """
    expected = expected_outcome(truth)
    if expected["outcome"] == "refused":
        if classification.height:
            return [f"classified, but the truth expects a refusal with {expected.get('code')}"]
        return []
    out = []
    for row in classification.iter_rows(named=True):
        t = truth["classes"].get(row["level"])
        if t is None:
            if row.get("level_present"):
                out.append(f"{row['level']}: present here, absent in truth")
            continue
        for col in ("centroid_class", "volume_class", "dawson_class"):
            if row.get(col) != t[col]:
                out.append(f"{row['level']}.{col}: {row.get(col)} != truth {t[col]}")
        if row.get("mohamed_type") != truth["mohamed"]:
            out.append(f"{row['level']}.mohamed_type: {row.get('mohamed_type')} != truth {truth['mohamed']}")
    if classification.height and classification["arm"][0] != truth["arm"]:
        out.append(f"arm: {classification['arm'][0]} != truth {truth['arm']}")
    return out


def refusal_mismatch(issue_codes: list[str], truth: dict) -> str | None:
    """For a patient the truth expects refused: None when one of its issue codes is the expected one,
    else what is wrong. For an expected-classified patient any refusal is a mismatch."""
    expected = expected_outcome(truth)
    codes = [c.upper() for c in issue_codes]
    if expected["outcome"] == "refused":
        want = str(expected["code"]).upper()
        return None if want in codes else f"expected refusal {want}, got {codes or 'none'}"
    return f"refused with {codes} but the truth expects classes" if codes else None


def with_truth_metrics(registration_qc: pl.DataFrame, volumes_dir: Path, truth: dict | None) -> pl.DataFrame:
    """registration_qc rows with the METRIC_KEYS columns filled from `evaluate_imaging_dir` (unchanged when
    `truth` is None, i.e. not a synthetic patient). Column dtypes stay those of the table."""
    if truth is None or registration_qc.height == 0:
        return registration_qc
    modality = str(registration_qc["relapse_modality"][0] or "CT")
    metrics = evaluate_imaging_dir(volumes_dir, truth, modality)
    return registration_qc.with_columns(
        [pl.lit(metrics[k], dtype=registration_qc.schema[k]).alias(k) for k in METRIC_KEYS])
