"""One patient's imaging step, no Dagster: DICOM -> working grid -> registration -> mapped structures.

Inputs are the patient's `patient_manifest` rows (roles planning_ct, planning_rtstruct,
planning_rtdose, relapse_image, relapse_rtstruct, each with a `files` list). Everything is written
into `out_dir` (the caller makes the lake write atomic):

    planning_image.nii.gz, dose.nii.gz, masks/*.nii.gz, volumes.json   (PatientVolumes.save)
    relapse_registered.nii.gz   relapse image resampled into planning space through the transform
    transform.h5                planning point -> relapse point (SimpleITK transform file)

Geometry choices (why): the planning working grid is the body bounding box (+10 mm) of the planning
CT at `config.grid_spacing_mm`, axis-aligned, so axial planning contours are rasterised directly on
it. Relapse structures are rasterised on a local grid of half the working spacing around each
structure and then pulled through the transform onto the planning grid (linear + 0.5), so a small
recurrence is not blurred by two 2 mm resamplings. The relapse image itself is registered on its
own working grid (body box + 20 mm).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import SimpleITK as sitk

from rtmap_assets.config import TrialConfig
from rtmap_assets.dicom.dose_sum import read_plan_dose
from rtmap_assets.dicom.readers import RTStruct, contour_bounds_mm, rasterise, read_image_series, read_rtstruct
from rtmap_assets.dosimetry.regions import dose_support_mask
from rtmap_assets.errors import PatientDataError
from rtmap_assets.issue_codes import IssueCode
from rtmap_assets.imaging import grid as wg
from rtmap_assets.imaging.mapping import map_mask, mask_centroid_mm, mask_volume_cc
from rtmap_assets.imaging.qc import jacobian_stats, landmark_distance_mm, overlap_metrics
from rtmap_assets.imaging.registration import register, restores_sitk_threads
from rtmap_assets.naming import first_match, match_aliases, matches
from rtmap_assets.pipeline.gc_freeze import after_freezing_long_lived_objects
from rtmap_assets.pipeline.volumes import PatientVolumes, StructureMask

log = logging.getLogger(__name__)
STAGE = "imaging"
# The configuration sections this stage reads: its data version hashes these and nothing else.
CONFIG_SECTIONS = ("arms", "aliases", "grid_spacing_mm", "registration", "slice_geometry")

REGISTRATION_QC_SCHEMA: dict[str, pl.DataType] = {
    "patient_id": pl.String(), "engine": pl.String(), "relapse_modality": pl.String(),
    "read_s": pl.Float64(), "grid_s": pl.Float64(), "registration_s": pl.Float64(), "mapping_s": pl.Float64(),
    "qc_s": pl.Float64(), "total_s": pl.Float64(), "stage_timings": pl.String(),
    "initial_translation_mm": pl.List(pl.Float64()), "final_metric": pl.Float64(),
    "landmark_distance_mm": pl.Float64(), "jacobian_min": pl.Float64(), "folding_fraction": pl.Float64(),
    "tre_mean_mm": pl.Float64(), "tre_max_mm": pl.Float64(), "tre_points": pl.Int64(),
    "recurrence_dice_truth": pl.Float64(), "recurrence_centroid_error_mm": pl.Float64(),
    "transform_path": pl.String(), "registered_image_path": pl.String(),
}
STRUCTURE_QC_SCHEMA: dict[str, pl.DataType] = {
    "patient_id": pl.String(), "structure": pl.String(), "planning_structure": pl.String(),
    "dice": pl.Float64(), "hd95_mm": pl.Float64(), "msd_mm": pl.Float64(),
}
MAPPED_STRUCTURES_SCHEMA: dict[str, pl.DataType] = {
    "patient_id": pl.String(), "structure": pl.String(), "role": pl.String(), "level": pl.String(),
    "space": pl.String(), "matched_alias": pl.String(), "volume_cc": pl.Float64(),
    "centroid_x_mm": pl.Float64(), "centroid_y_mm": pl.Float64(), "centroid_z_mm": pl.Float64(),
    "mask_path": pl.String(),
}


@dataclass
class ImagingResult:
    volumes: PatientVolumes
    registration_qc: pl.DataFrame  # one row (REGISTRATION_QC_SCHEMA)
    mapped_structures: pl.DataFrame  # MAPPED_STRUCTURES_SCHEMA, planning and mapped structures
    structure_qc: pl.DataFrame  # comparison structures: mapped vs planning overlap (STRUCTURE_QC_SCHEMA)
    paths: dict[str, str] = field(default_factory=dict)


def _role_files(rows: pl.DataFrame, role: str, raw_root: Path | None,
                path_of: Mapping[str, str] | None = None) -> list[str]:
    """The role's files; catalog tokens (`privacy.hash_export_paths`) resolved through `path_of`."""
    sel = rows.filter(pl.col("role") == role)
    if sel.height != 1:
        raise PatientDataError("manifest_role", f"expected one manifest row with role {role!r}, found {sel.height}",
                               stage=STAGE)
    files = [(path_of or {}).get(f, f) for f in sel["files"][0]]
    if not files:
        raise PatientDataError("manifest_role", f"manifest role {role!r} lists no files", stage=STAGE)
    return [str(Path(raw_root) / f) if raw_root is not None and not Path(f).is_absolute() else f for f in files]


def _ctv_patterns(config: TrialConfig) -> list[str]:
    return config.ctv_patterns()  # dose-templated for every prescription + level names


def planning_role(name: str, config: TrialConfig) -> tuple[str, str | None]:
    """(role, matched alias) of a planning structure; priority ctv > landmark > body > organ."""
    al = config.aliases
    for role, patterns in (("ctv", _ctv_patterns(config)), ("landmark", al.landmark), ("body", al.body),
                           ("organ", [p for ps in al.organs.values() for p in ps])):
        for pattern in patterns:
            if matches(name, pattern):
                return role, pattern
    return "other", None


def _one(names: list[str], aliases: list[str], what: str, missing: IssueCode, ambiguous: IssueCode,
         file: str) -> tuple[str, str]:
    found = match_aliases(names, aliases)
    if not found:
        raise PatientDataError(missing, f"no {what} structure matching {aliases} among {names}", stage=STAGE, file=file)
    if len(found) > 1:
        raise PatientDataError(ambiguous, f"several {what} structures match: {found}", stage=STAGE, file=file)
    return found[0]


def refuse_empty_match(rs: RTStruct, aliases: list[str], what: str, code: IssueCode, file: str) -> None:
    """`code` (e.g. RECURRENCE_EMPTY) naming the structure when the only structures matching `aliases` have
    no contour (an empty ROI is not a missing one: the user must redraw it, not rename it)."""
    found = match_aliases(rs.names, aliases)
    if found and not any(rs.contours[n] for n, _ in found):
        names = ", ".join(f"{n!r} (alias {a})" for n, a in found)
        raise PatientDataError(code, f"{what} structure {names} has no contour in the RTSTRUCT",
                               stage=STAGE, file=file)


def _local_grid(contours: list[np.ndarray], spacing_mm: float, margin_mm: float) -> sitk.Image:
    lo, hi = contour_bounds_mm(contours)
    return wg.make_grid(lo - margin_mm, hi + margin_mm, spacing_mm)


@dataclass
class Inputs:
    """The patient's DICOM, read (step 1)."""

    plan_ct: sitk.Image | None  # set to None once resampled (memory)
    relapse: sitk.Image | None
    relapse_modality: str
    plan_rs: RTStruct
    rel_rs: RTStruct
    plan_rs_file: str
    rel_rs_file: str
    dose: sitk.Image | None


@dataclass
class Planning:
    """Planning side on its working grid (step 2): image, structures, landmark, body, dose."""

    ref: sitk.Image
    image: sitk.Image
    structures: list[StructureMask]
    landmark_centroid_mm: np.ndarray
    body: sitk.Image
    dose: sitk.Image | None
    dose_support: sitk.Image | None


@dataclass
class Relapse:
    """Relapse side (step 3): image on its own working grid, structures on fine local grids."""

    image: sitk.Image
    default_value: float
    masks: dict[str, sitk.Image]  # recurrence, landmark, comparison structures
    roles: dict[str, tuple[str, str]]  # name -> (role, matched alias)
    recurrence: str
    landmark: str
    landmark_centroid_mm: np.ndarray


def read_inputs(manifest_rows: pl.DataFrame, config: TrialConfig, raw_root: Path | None,
                path_of: Mapping[str, str] | None) -> Inputs:
    files = lambda role: _role_files(manifest_rows, role, raw_root, path_of)  # noqa: E731
    plan_rs_file, rel_rs_file = files("planning_rtstruct")[0], files("relapse_rtstruct")[0]
    has_dose = manifest_rows.filter(pl.col("role") == "planning_rtdose").height > 0
    return Inputs(
        plan_ct=read_image_series(files("planning_ct"), config.slice_geometry),
        relapse=read_image_series(files("relapse_image"), config.slice_geometry),
        relapse_modality=str(manifest_rows.filter(pl.col("role") == "relapse_image")["modality"][0] or "CT"),
        plan_rs=read_rtstruct(plan_rs_file), rel_rs=read_rtstruct(rel_rs_file),
        plan_rs_file=plan_rs_file, rel_rs_file=rel_rs_file,
        dose=read_plan_dose(files("planning_rtdose")) if has_dose else None)


def planning_step(inputs: Inputs, config: TrialConfig) -> Planning:
    """Rule 3: the planning working grid (body box), planning structures rasterised on it, the dose on it."""
    planning = planning_grid_step(inputs, config)
    planning_rest_step(planning, inputs, config)
    return planning


def planning_grid_step(inputs: Inputs, config: TrialConfig) -> Planning:
    """What the registration needs of the planning side: the working grid (body box), the image on it, the body
    and landmark structures (the metric's mask, the rotation centre). `planning_rest_step` adds the others."""
    al, spacing = config.aliases, float(config.grid_spacing_mm)
    plan_rs = inputs.plan_rs
    names = [n for n in plan_rs.names if plan_rs.contours[n]]
    body_match = first_match(names, al.body)
    bounds = contour_bounds_mm(plan_rs.contours[body_match[0]]) if body_match else None
    ref = wg.working_grid(inputs.plan_ct, spacing, margin_mm=10.0, bounds=bounds)
    image = wg.resample_image(inputs.plan_ct, ref, default_value=-1000.0)
    inputs.plan_ct = None  # the native CT is not needed again: free it before the relapse is resampled
    structures: list[StructureMask] = []
    for name in names:
        role, alias = planning_role(name, config)
        if role in ("landmark", "body"):
            structures.append(StructureMask(name=name, role=role, space="planning",
                                            mask=rasterise(plan_rs, name, ref), matched_alias=alias))
    landmarks = [s for s in structures if s.role == "landmark"]
    if len(landmarks) != 1:
        raise PatientDataError(IssueCode.LANDMARK_MISSING if not landmarks else IssueCode.LANDMARK_AMBIGUOUS,
                               f"planning RTSTRUCT has {len(landmarks)} landmark structures matching "
                               f"{al.landmark}", stage=STAGE, file=inputs.plan_rs_file)
    lm_centroid = mask_centroid_mm(landmarks[0].mask)
    if lm_centroid is None:
        raise PatientDataError(IssueCode.LANDMARK_EMPTY, f"planning landmark {landmarks[0].name!r} has no voxels",
                               stage=STAGE, file=inputs.plan_rs_file)
    bodies = [s for s in structures if s.role == "body"]
    return Planning(ref=ref, image=image, structures=structures, landmark_centroid_mm=lm_centroid,
                    body=bodies[0].mask if bodies else wg.body_mask(image), dose=None, dose_support=None)


def planning_rest_step(planning: Planning, inputs: Inputs, config: TrialConfig) -> None:
    """The other planning structures (CTVs, organs, ...) and the dose onto `planning`'s grid; the structures keep
    the RTSTRUCT's order."""
    plan_rs, ref = inputs.plan_rs, planning.ref
    done = {s.name: s for s in planning.structures}
    structures: list[StructureMask] = []
    for name in (n for n in plan_rs.names if plan_rs.contours[n]):
        if name not in done:
            role, alias = planning_role(name, config)
            done[name] = StructureMask(name=name, role=role, space="planning", mask=rasterise(plan_rs, name, ref),
                                       matched_alias=alias)
        structures.append(done[name])
    planning.structures[:] = structures
    dose = wg.resample_dose(inputs.dose, ref) if inputs.dose is not None else None
    support = dose_support_mask(inputs.dose, ref) if inputs.dose is not None else None
    inputs.dose = None
    if support is not None and int(np.count_nonzero(sitk.GetArrayViewFromImage(support))) == int(
            np.prod(ref.GetSize())):
        support = None  # the RTDOSE covers the whole working grid
    planning.dose, planning.dose_support = dose, support


def relapse_step(inputs: Inputs, config: TrialConfig) -> Relapse:
    """The relapse image on its own working grid; recurrence, landmark and comparison structures rasterised on
    local grids of half the working spacing (a small recurrence is not blurred by two 2 mm resamplings)."""
    relapse = relapse_grid_step(inputs, config)
    relapse_masks_step(relapse, inputs, config)
    return relapse


def relapse_grid_step(inputs: Inputs, config: TrialConfig) -> Relapse:
    """What the registration needs of the relapse side: the image on its working grid and the landmark's
    centroid; the structures' names are checked here (a missing or ambiguous recurrence fails before any
    registration). `relapse_masks_step` rasterises the recurrence and comparison structures."""
    al, spacing = config.aliases, float(config.grid_spacing_mm)
    rel_rs, file = inputs.rel_rs, inputs.rel_rs_file
    is_mr = inputs.relapse_modality.upper() == "MR"
    rel_ref = wg.working_grid(inputs.relapse, spacing, margin_mm=20.0,
                              threshold=None if is_mr else wg.BODY_THRESHOLD_HU)
    default = 0.0 if is_mr else -1000.0
    image = wg.resample_image(inputs.relapse, rel_ref, default_value=default)
    inputs.relapse = None  # likewise the native relapse image
    names = [n for n in rel_rs.names if rel_rs.contours[n]]
    refuse_empty_match(rel_rs, al.recurrence, "recurrence", IssueCode.RECURRENCE_EMPTY, file)
    rec_name, rec_alias = _one(names, al.recurrence, "recurrence", IssueCode.RECURRENCE_MISSING,
                               IssueCode.RECURRENCE_AMBIGUOUS, file)
    lm_name, lm_alias = _one(names, al.landmark, "landmark", IssueCode.LANDMARK_MISSING,
                             IssueCode.LANDMARK_AMBIGUOUS, file)
    comparison = [(n, a) for n, a in match_aliases(names, al.comparison) if n not in (rec_name, lm_name)]
    roles = {rec_name: ("recurrence", rec_alias), lm_name: ("landmark", lm_alias),
             **{n: ("comparison", a) for n, a in comparison}}
    masks = {lm_name: _relapse_mask(rel_rs, lm_name, spacing)}
    lm_centroid = mask_centroid_mm(masks[lm_name])
    if lm_centroid is None:
        raise PatientDataError(IssueCode.LANDMARK_EMPTY, f"relapse landmark {lm_name!r} has no voxels", stage=STAGE,
                               file=file)
    return Relapse(image=image, default_value=default, masks=masks, roles=roles, recurrence=rec_name,
                   landmark=lm_name, landmark_centroid_mm=lm_centroid)


def _relapse_mask(rel_rs: RTStruct, name: str, spacing: float) -> sitk.Image:
    return rasterise(rel_rs, name, _local_grid(rel_rs.contours[name], spacing / 2.0, 2 * spacing))


def relapse_masks_step(relapse: Relapse, inputs: Inputs, config: TrialConfig) -> None:
    """The recurrence and comparison structures on their local grids (`relapse.roles`' order)."""
    spacing = float(config.grid_spacing_mm)
    relapse.masks = {name: relapse.masks[name] if name in relapse.masks else
                     _relapse_mask(inputs.rel_rs, name, spacing) for name in relapse.roles}
    if mask_centroid_mm(relapse.masks[relapse.recurrence]) is None:
        raise PatientDataError(IssueCode.RECURRENCE_EMPTY, f"recurrence {relapse.recurrence!r} has no voxels",
                               stage=STAGE, file=inputs.rel_rs_file)


def mapping_step(relapse: Relapse, transform: sitk.Transform, planning: Planning,
                 file: str, field: sitk.Image | None = None) -> tuple[dict[str, sitk.Image], sitk.Image]:
    """Rule 4: relapse masks resampled through the transform onto the planning grid (appended to the planning
    structures), and the registered relapse image (from `field`, T's displacement field on the planning grid,
    when given)."""
    mapped: dict[str, sitk.Image] = {}
    for name, mask in relapse.masks.items():
        mapped[name] = map_mask(mask, transform, planning.ref)
        role, alias = relapse.roles[name]
        planning.structures.append(StructureMask(name=name, role=role, space="mapped", mask=mapped[name],
                                                 matched_alias=alias))
    if mask_centroid_mm(mapped[relapse.recurrence]) is None:
        raise PatientDataError(IssueCode.RECURRENCE_MAPPED_EMPTY,
                               f"mapped recurrence {relapse.recurrence!r} is empty (outside the planning working "
                               "grid?)", stage=STAGE, file=file)
    if field is not None:
        registered = wg.resample_with_field(relapse.image, field, default_value=relapse.default_value)
    else:
        registered = wg.resample(relapse.image, planning.ref, transform=transform, default_value=relapse.default_value)
    return mapped, registered


def qc_step(patient_id: str, relapse: Relapse, planning: Planning, mapped: dict[str, sitk.Image],
            transform: sitk.Transform, field: sitk.Image | None = None) -> tuple[float, float, float, list[dict]]:
    """(landmark distance = the uncertainty of rule 5, Jacobian minimum, folding fraction, comparison overlaps)."""
    lm_distance = landmark_distance_mm(planning.landmark_centroid_mm, mask_centroid_mm(mapped[relapse.landmark]))
    jac_min, folding = jacobian_stats(transform, planning.ref, planning.body, field=field)
    rows = []
    plan_by_name = {s.name: s for s in planning.structures if s.space == "planning"}
    for name, (role, alias) in relapse.roles.items():
        partner = first_match(list(plan_by_name), [alias]) if role == "comparison" else None
        if partner is not None:
            m = overlap_metrics(mapped[name], plan_by_name[partner[0]].mask)
            rows.append({"patient_id": patient_id, "structure": name, "planning_structure": partner[0], **m})
    return lm_distance, jac_min, folding, rows


@after_freezing_long_lived_objects  # collections skip the loaded libraries' objects (pipeline/gc_freeze.py)
@restores_sitk_threads  # SimpleITK's global thread count = `threads` during the call, then restored
def run_imaging(manifest_rows: pl.DataFrame, config: TrialConfig, out_dir: Path, *,
                raw_root: Path | None = None, engine: str | None = None, threads: int | None = None,
                path_of: Mapping[str, str] | None = None) -> ImagingResult:
    """The per-patient imaging step (see module docstring), in named steps. `raw_root` resolves catalog-relative
    paths; `path_of` resolves catalog tokens (token -> catalog path) when the manifest names files by token."""
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    patient_id = str(manifest_rows["patient_id"][0])
    timings: dict[str, float] = {}

    t = time.perf_counter()
    inputs = read_inputs(manifest_rows, config, raw_root, path_of)
    timings["read_s"] = time.perf_counter() - t

    t = time.perf_counter()
    planning = planning_grid_step(inputs, config)
    relapse = relapse_grid_step(inputs, config)
    rel_modality, rel_rs_file = inputs.relapse_modality, inputs.rel_rs_file
    timings["grid_s"] = time.perf_counter() - t

    t = time.perf_counter()
    # The registration runs on a worker thread while this one rasterises the other structures and resamples the
    # dose: SimpleITK's stages and the compiled B-spline objective release the GIL, so both cores work (the
    # registration's result does not depend on it: same inputs, same serial arithmetic).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtmap-registration") as pool:
        registering = pool.submit(
            register, planning.image, relapse.image, fixed_landmark_mm=planning.landmark_centroid_mm,
            moving_landmark_mm=relapse.landmark_centroid_mm, engine=engine or config.registration.engine,
            bspline_grid_mm=config.registration.bspline_grid_mm, fixed_mask=planning.body, threads=threads)
        planning_rest_step(planning, inputs, config)
        relapse_masks_step(relapse, inputs, config)
        del inputs  # the native images and contours: memory goes back while the registration runs
        result = registering.result()
    transform = result.transform
    timings["registration_s"] = time.perf_counter() - t

    t = time.perf_counter()
    field = wg.displacement_field(transform, planning.ref)  # T once on the planning grid: registered image + QC
    mapped, registered = mapping_step(relapse, transform, planning, rel_rs_file, field)
    timings["mapping_s"] = time.perf_counter() - t

    t = time.perf_counter()
    lm_distance, jac_min, folding, structure_rows = qc_step(patient_id, relapse, planning, mapped, transform, field)
    del field
    timings["qc_s"] = time.perf_counter() - t

    # ---- write
    structures = planning.structures
    volumes = PatientVolumes(patient_id=patient_id, image=planning.image, dose=planning.dose, structures=structures,
                             dose_support=planning.dose_support)
    paths = volumes.save(out_dir)
    reg_path = out_dir / "relapse_registered.nii.gz"
    sitk.WriteImage(registered, str(reg_path), useCompression=True)
    tfm_path = out_dir / "transform.h5"
    sitk.WriteTransform(transform, str(tfm_path))
    paths.update({"relapse_registered": str(reg_path), "transform": str(tfm_path)})
    total_s = time.perf_counter() - t_start
    read_s, grid_s, registration_s, mapping_s, qc_s = (timings[k] for k in (
        "read_s", "grid_s", "registration_s", "mapping_s", "qc_s"))

    qc_row = {
        "patient_id": patient_id, "engine": result.engine, "relapse_modality": rel_modality,
        "read_s": read_s, "grid_s": grid_s, "registration_s": registration_s, "mapping_s": mapping_s, "qc_s": qc_s,
        "total_s": total_s, "stage_timings": ", ".join(f"{k}={v:.2f}" for k, v in result.timings.items()),
        "initial_translation_mm": list(result.initial_translation_mm), "final_metric": result.final_metric,
        "landmark_distance_mm": lm_distance, "jacobian_min": jac_min, "folding_fraction": folding,
        # ground-truth columns: filled only by the evaluation of synthetic patients (rtmap_synth.evaluation)
        "tre_mean_mm": None, "tre_max_mm": None, "tre_points": None,
        "recurrence_dice_truth": None, "recurrence_centroid_error_mm": None,
        "transform_path": str(tfm_path), "registered_image_path": str(reg_path),
    }
    mapped_rows = []
    for s in structures:
        c = mask_centroid_mm(s.mask)
        mapped_rows.append({
            # level stays null: which level a CTV is depends on the patient's arm (dosimetry step)
            "patient_id": patient_id, "structure": s.name, "role": s.role, "level": None,
            "space": s.space, "matched_alias": s.matched_alias, "volume_cc": mask_volume_cc(s.mask),
            "centroid_x_mm": None if c is None else float(c[0]), "centroid_y_mm": None if c is None else float(c[1]),
            "centroid_z_mm": None if c is None else float(c[2]), "mask_path": paths.get(f"{s.space}:{s.name}"),
        })
    log.info("imaging %s: %.1f s (read %.1f, grid %.1f, registration %.1f, mapping %.1f, qc %.1f)", patient_id,
             total_s, read_s, grid_s, registration_s, mapping_s, qc_s)
    return ImagingResult(
        volumes=volumes,
        registration_qc=pl.DataFrame([qc_row], schema=REGISTRATION_QC_SCHEMA),
        mapped_structures=pl.DataFrame(mapped_rows, schema=MAPPED_STRUCTURES_SCHEMA),
        structure_qc=pl.DataFrame(structure_rows, schema=STRUCTURE_QC_SCHEMA),
        paths=paths,
    )


