"""Registration uncertainty and the sphere radius policy (rule 5).

The uncertainty of one patient is the distance between the landmark's centroid drawn on the
planning image and the centroid of the same landmark drawn on the relapse image and mapped to
planning space: a perfect registration puts them on top of each other.

The radius policy turns uncertainties into a sphere radius: `fixed` (the seed: 5 mm), `patient`
(the patient's own distance) or `cohort` (a percentile of all patients' distances, so the cohort
asset recomputes it when the cohort changes). There is no floor: the sphere's dose fraction is
sampled below the voxel size (rule 10), so a well-registered patient's 0.3 mm is used as it is
(the seed raised it to one voxel because it counted voxel centres). 0 is a point: the sphere's
fraction is then the centroid's class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from rtmap_assets.config import Uncertainty
from rtmap_assets.imaging.mapping import mask_centroid_mm  # one home each: the imaging stage's definitions
from rtmap_assets.imaging.qc import landmark_distance_mm
from rtmap_assets.errors import PatientDataError
from rtmap_assets.pipeline.volumes import PatientVolumes

Policy = Literal["fixed", "patient", "cohort"]


def patient_uncertainty_mm(volumes: PatientVolumes) -> float:
    """Landmark distance of one patient; raises PatientDataError when a landmark is missing or empty."""
    planning = volumes.find("landmark", "planning")
    mapped = volumes.find("landmark", "mapped")
    if len(planning) != 1 or len(mapped) != 1:
        raise PatientDataError(
            "landmark_missing",
            f"need exactly one planning and one mapped landmark structure, found "
            f"{len(planning)} planning ({[s.name for s in planning]}) and {len(mapped)} mapped "
            f"({[s.name for s in mapped]})",
            stage="dosimetry",
        )
    c_plan = mask_centroid_mm(planning[0].mask)
    c_map = mask_centroid_mm(mapped[0].mask)
    if c_plan is None or c_map is None:
        which = planning[0].name if c_plan is None else mapped[0].name
        raise PatientDataError("landmark_empty", f"landmark structure '{which}' is empty on the working grid",
                               stage="dosimetry")
    return landmark_distance_mm(c_plan, c_map)


def cohort_radius(distances: Sequence[float], percentile: float) -> float:
    """Percentile (linear interpolation) of the cohort's landmark distances.

    NaNs (patients without a landmark) are ignored; with no usable distance at all the radius
    cannot be derived and a ValueError is raised (a cohort-level problem, not one patient's).
    """
    d = np.asarray(list(distances), dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        raise ValueError("cohort radius: no patient has a landmark distance")
    if not 0 <= percentile <= 100:
        raise ValueError(f"cohort radius: percentile must be in [0, 100], got {percentile}")
    return float(np.percentile(d, percentile))


@dataclass(frozen=True)
class RadiusDecision:
    radius_mm: float
    policy: Policy


def sphere_radius(
    policy_config: Uncertainty,
    *,
    patient_distance_mm: float | None = None,
    cohort_radius_mm: float | None = None,
) -> RadiusDecision:
    """Sphere radius for one patient under the configured policy (no floor: see the module docstring)."""
    policy = policy_config.policy
    if policy == "fixed":
        raw = policy_config.radius_mm
    elif policy == "patient":
        if patient_distance_mm is None or not np.isfinite(patient_distance_mm):
            raise PatientDataError("landmark_missing", "radius policy 'patient' needs the patient's landmark distance",
                                   stage="dosimetry")
        raw = float(patient_distance_mm)
    elif policy == "cohort":
        if cohort_radius_mm is None:
            raise ValueError("radius policy 'cohort' needs the cohort radius (see cohort_radius)")
        raw = float(cohort_radius_mm)
    else:  # pragma: no cover - the config model restricts the literal
        raise ValueError(f"unknown radius policy {policy!r}")
    if raw < 0:
        raise ValueError(f"sphere radius must be >= 0 mm, got {raw}")
    return RadiusDecision(radius_mm=float(raw), policy=policy)
