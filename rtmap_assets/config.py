"""Per-trial configuration (YAML, validated with pydantic).

Every threshold of the domain rules (docs/RULES.md) is a field here, with its default. An invalid
file raises `ConfigError` with one message naming the offending field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

LEVELS: tuple[str, str, str] = ("low", "intermediate", "high")
DEFAULT_CONFIG_PATH = Path(__file__).parent / "configs" / "synthetic_trial.yaml"


class ConfigError(ValueError):
    """The trial configuration file is invalid; the message names the field."""


class _Strict(BaseModel):
    # Unknown keys are typos: refuse them rather than silently ignoring a threshold.
    model_config = ConfigDict(extra="forbid", frozen=True)


Level = Literal["low", "intermediate", "high"]


class Aliases(_Strict):
    """Shell-style, case-insensitive alias lists per structure role (rule 2).

    Targets are named by dose or by risk level, and the config says which:
    - `ctv`: dose-templated names; `{dose}` is replaced by a level's prescription (`*CTV*{dose}*`
      becomes `*CTV*65*` for a 65 Gy level), so the name says the dose and the arm says the level.
    - `ctv_by_level`: names that say the level (`high: ["CTV_High", "ctv_hr", "*CTV*high*"]`),
      valid for that level in every arm.
    A config may use either or both. A name without `{dose}` under `ctv` would be tried for every
    prescription (the first hit winning), so it is refused: such a name belongs under `ctv_by_level`.
    """

    ctv: list[str] = ["*CTV*{dose}*"]
    ctv_by_level: dict[Level, list[str]] = {}
    recurrence: list[str] = ["Rec_CT", "*recurrence*", "rGTV*", "*_rec"]
    landmark: list[str] = ["*thy*"]
    comparison: list[str] = ["*mandible*", "*cord*"]
    body: list[str] = ["BODY", "*external*", "*body*", "*outline*"]
    organs: dict[str, list[str]] = {
        "SpinalCord": ["*cord*"],
        "Mandible": ["*mandible*"],
        "Parotid_L": ["*parotid*l*", "*l*parotid*"],
        "Parotid_R": ["*parotid*r*", "*r*parotid*"],
    }

    @field_validator("ctv")
    @classmethod
    def _ctv_templated(cls, v: list[str]) -> list[str]:
        plain = [p for p in v if "{dose}" not in p]
        if plain:
            raise ValueError(f"CTV alias(es) {plain} have no '{{dose}}': names that say the level "
                             "belong under ctv_by_level (e.g. ctv_by_level: {high: [CTV_High]})")
        return v

    @model_validator(mode="after")
    def _some_ctv_names(self) -> "Aliases":
        if not self.ctv and not any(self.ctv_by_level.values()):
            raise ValueError("no CTV names: give dose-templated names in 'ctv' (e.g. '*CTV*{dose}*') "
                             "and/or level names in 'ctv_by_level'")
        return self

    def ctv_for_dose(self, dose_gy: float) -> list[str]:
        """The dose-templated CTV names instantiated for one prescription (Gy)."""
        dose = f"{dose_gy:g}"
        return [p.replace("{dose}", dose) for p in self.ctv]

    def ctv_for_level(self, level: str, prescription_gy: float) -> list[str]:
        """Every name a level's CTV may have: its level names, then the dose-templated names for its
        prescription (none for an absent level, P = 0). Order = priority for the recorded alias."""
        if prescription_gy <= 0:
            return []
        return _unique([*self.ctv_by_level.get(level, []), *self.ctv_for_dose(prescription_gy)])


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


class Uncertainty(_Strict):
    """Rule 5: sphere radius policy."""

    policy: Literal["fixed", "patient", "cohort"] = "fixed"
    radius_mm: float = Field(5.0, gt=0, description="radius for the fixed policy")
    cohort_percentile: float = Field(95.0, ge=0, le=100)


class Thresholds(_Strict):
    isodose_fraction: float = Field(0.95, gt=0, le=1, description="rule 7: isodose = fraction x P")
    arm_tolerance_gy: float = Field(0.5, ge=0, description="rule 8: m >= p - tolerance")
    ctv_dose_tolerance_fraction: float = Field(
        0.10, gt=0, lt=1, description="rule 8: a level's CTV with D95 above (1 + this)·P or mean below (1 - this)·P "
                                      "is CTV_DOSE_IMPLAUSIBLE (wrong level or wrong CTV)")
    volume_inside_fraction: float = Field(0.95, gt=0, le=1, description="rule 10: f >= this -> inside")
    dawson_infield: float = Field(0.95, gt=0, le=1, description="rule 11")
    dawson_marginal: float = Field(0.20, ge=0, lt=1, description="rule 11")

    @model_validator(mode="after")
    def _ordered(self) -> "Thresholds":
        if self.dawson_marginal >= self.dawson_infield:
            raise ValueError("dawson_marginal must be below dawson_infield")
        return self


class Registration(_Strict):
    engine: Literal["sitk", "elastix", "skrt"] = "sitk"
    bspline_grid_mm: float = Field(30.0, gt=0)


class QC(_Strict):
    """Asset-check thresholds for registration quality."""

    max_landmark_distance_mm: float = Field(5.0, gt=0)
    max_folding_fraction: float = Field(0.001, ge=0, le=1)


class Probability(_Strict):
    """Rule 13: Monte Carlo sampling of the centroid under Gaussian error."""

    samples: int = Field(4000, ge=100)
    seed: int = 0


class DoseStatistics(_Strict):
    bin_width_gy: float = Field(0.01, gt=0)


class Privacy(_Strict):
    """Rule 17: what of the export's own naming may leave the bronze catalog.

    PACS exports often name folders by study date or description (`12-05-1998-RT SIMULATION`). With
    `hash_export_paths` (the default), every table and message beyond the catalog names a file by a
    token (`#` + 12 hex of the SHA-1 of its catalog path) that only the catalog (`dicom_files.path`)
    resolves. Set it to false where export paths are known to carry no identifier, for readable paths.
    """

    hash_export_paths: bool = True


class SubjectKey(_Strict):
    """Rule 17: where the trial subject ID (`patient_id` in every table) comes from.

    `folder`: the export folder name under data/raw/<trial>/ (catalog column `export`).
    `mapping`: a CSV file with columns `patient_id,subject_id` (DICOM PatientID → trial subject ID);
    a relative path is taken from the current directory. Either way each file's PatientID is checked
    (one PatientID per export; with a mapping, every file of an export maps to one subject) and the
    raw PatientID is never stored.
    """

    source: Literal["folder", "mapping"] = "folder"
    mapping_file: str | None = None

    @model_validator(mode="after")
    def _mapping_named(self) -> "SubjectKey":
        if self.source == "mapping" and not self.mapping_file:
            raise ValueError("source 'mapping' needs mapping_file")
        return self


class SliceGeometry(_Strict):
    """Rule 15: how far real slice positions may depart from a regular stack (rtmap_assets/dicom/slice_geometry.py)."""

    jitter_tolerance_mm: float = Field(0.15, ge=0, description="positions within this of a uniform lattice are "
                                       "placed on it without resampling")
    max_step_ratio: float = Field(1.5, gt=1, description="irregular steps up to this x the nominal (median) step "
                                  "are resampled; a longer step is a gap (missing slice, 2x) and is refused")
    duplicate_tolerance_mm: float = Field(0.2, ge=0, description="slices closer than this along the normal "
                                          "share one position")
    duplicate_max_difference: float = Field(0.0, ge=0, description="duplicates whose rescaled pixel values differ "
                                            "by at most this (HU for CT) are kept once; otherwise refused")
    max_tilt_deg: float = Field(0.5, ge=0, lt=45, description="slice origins moving off the normal by more than "
                                "this angle are a gantry tilt (refused)")
    orientation_tolerance: float = Field(1e-3, gt=0, description="largest difference of direction cosines "
                                         "between slices of one series")


class TrialConfig(_Strict):
    trial: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    arms: dict[str, tuple[float, float, float]] = Field(
        default_factory=lambda: {"A": (54.0, 60.0, 65.0), "B": (0.0, 54.0, 60.0), "C": (0.0, 0.0, 50.0)},
        description="arm name -> prescriptions (Gy) for low, intermediate, high; 0 = level absent",
    )
    aliases: Aliases = Aliases()
    grid_spacing_mm: float = Field(2.0, gt=0, le=10)
    uncertainty: Uncertainty = Uncertainty()
    thresholds: Thresholds = Thresholds()
    registration: Registration = Registration()
    qc: QC = QC()
    probability: Probability = Probability()
    dose_statistics: DoseStatistics = DoseStatistics()
    subject_key: SubjectKey = SubjectKey()
    slice_geometry: SliceGeometry = SliceGeometry()
    privacy: Privacy = Privacy()

    @field_validator("arms")
    @classmethod
    def _arms_valid(cls, v: dict[str, tuple[float, float, float]]) -> dict[str, tuple[float, float, float]]:
        if not v:
            raise ValueError("at least one arm is required")
        for name, levels in v.items():
            if any(p < 0 for p in levels):
                raise ValueError(f"arm {name}: prescriptions must be >= 0")
            if levels[2] <= 0:
                raise ValueError(f"arm {name}: the high level must have a prescription > 0")
        return v

    def prescriptions(self, arm: str) -> dict[str, float]:
        """Level name -> prescription (Gy) for an arm; absent levels are 0."""
        return dict(zip(LEVELS, self.arms[arm]))

    def nominal_doses(self) -> list[float]:
        """Every prescription > 0 of any arm, highest first, without repeats."""
        return sorted({p for levels in self.arms.values() for p in levels if p > 0}, reverse=True)

    def ctv_patterns(self) -> list[str]:
        """Every CTV name pattern of the trial (rule 2): the dose-templated names for every
        prescription (highest dose first), then the level names (high, intermediate, low). The
        manifest (finding CTV structure sets) and the imaging stage (planning roles) use this list."""
        dosed = [p for d in self.nominal_doses() for p in self.aliases.ctv_for_dose(d)]
        levelled = [p for lvl in reversed(LEVELS) for p in self.aliases.ctv_by_level.get(lvl, [])]
        return _unique(dosed + levelled)


def _field_path(err: dict) -> str:
    return ".".join(str(p) for p in err["loc"]) or "(file)"


def parse_trial_config(data: dict, source: str = "<dict>") -> TrialConfig:
    try:
        return TrialConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{source}: field '{_field_path(first)}': {first['msg']}{more}") from None


def load_trial_config(path: str | Path | None = None) -> TrialConfig:
    """Read and validate a trial YAML file (the bundled synthetic trial when `path` is None)."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return parse_trial_config(data, source=str(path))


def config_fingerprint(config: TrialConfig, sections: tuple[str, ...]) -> str:
    """Hash of only the named top-level sections of the configuration.

    Each pipeline stage declares the sections it reads (`CONFIG_SECTIONS` beside its code), so a change
    of a classification threshold re-classifies without re-registering anyone.
    """
    import hashlib
    import json

    unknown = [s for s in sections if s not in TrialConfig.model_fields]
    if unknown:
        raise ValueError(f"unknown configuration sections {unknown}")
    data = config.model_dump(mode="json", include=set(sections))
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]
