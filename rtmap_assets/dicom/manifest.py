"""Patient manifest: which DICOM objects play which role for each patient (DESIGN.md rule 1).

Input is the `dicom_files` catalog (see `catalog.py`); output is two tables:

* `patient_manifest` (long format, `MANIFEST_SCHEMA`): one row per patient x role, roles
  `planning_ct`, `planning_rtstruct`, `planning_rtdose`, `relapse_image`, `relapse_rtstruct`,
  each with the reason it was chosen, the structure/alias that qualified it, and the patient's
  `input_fingerprint` (a hash of the chosen files' path, size and mtime).
* `pipeline_issues` (`ISSUES_SCHEMA`, stage "manifest"): why a patient could not be resolved.

A patient is either complete (exactly five rows) or absent from the manifest with at least one
issue row explaining what was found; nothing is guessed. "Which patients are ready" is therefore
`SELECT DISTINCT patient_id FROM patient_manifest`, and the rest are in `pipeline_issues`.

Rule 1 as implemented:

* A structure set *references* an image series through its RTReferencedSeriesSequence when any
  of those series is in the catalog, otherwise through its frame(s) of reference.
* Planning CT: the CT series whose FrameOfReferenceUID is that of an RTDOSE and which is
  referenced by an RTSTRUCT with a CTV (a structure matching `config.ctv_patterns()`: the
  dose-templated names for any prescription p > 0, or a level name). Exactly one such series is required.
* Planning RTDOSE: the RTDOSE on that frame of reference; when there are several, the single one
  with DoseSummationType PLAN, else ambiguous. Planning RTSTRUCT: the single CTV structure set
  referencing the planning CT.
* Relapse RTSTRUCT: the single RTSTRUCT in a study dated after the planning study (study date =
  earliest StudyDate of the study's files) with exactly one structure matching
  `aliases.recurrence`. Relapse image: the one CT or MR series (not the planning CT) it references.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import polars as pl

from rtmap_assets.config import TrialConfig
from rtmap_assets.errors import PatientDataError
from rtmap_assets.naming import match_aliases

log = logging.getLogger(__name__)

STAGE = "manifest"
ROLES: tuple[str, ...] = (
    "planning_ct", "planning_rtstruct", "planning_rtdose", "relapse_image", "relapse_rtstruct",
)
IMAGE_MODALITIES = ("CT", "MR")

MANIFEST_SCHEMA: dict[str, pl.DataType] = {
    "patient_id": pl.String(),
    "trial": pl.String(),
    "role": pl.String(),
    "modality": pl.String(),
    "study_instance_uid": pl.String(),
    "series_instance_uid": pl.String(),
    "sop_instance_uid": pl.String(),  # single-file objects (RTSTRUCT, RTDOSE); null for series
    "frame_of_reference_uid": pl.String(),  # for an RTSTRUCT: that of the image it references
    "study_date": pl.Date(),
    "n_files": pl.Int64(),
    "files": pl.List(pl.String()),  # catalog paths; image series sorted along the slice normal
    "reason": pl.String(),
    "matched_structure": pl.String(),
    "matched_alias": pl.String(),
    "input_fingerprint": pl.String(),
}

ISSUES_SCHEMA: dict[str, pl.DataType] = {
    "patient_id": pl.String(),
    "stage": pl.String(),
    "code": pl.String(),
    "message": pl.String(),
    "file": pl.String(),
}


# ----------------------------------------------------------------------------------------------
# Fingerprints
# ----------------------------------------------------------------------------------------------


def fingerprint(entries: Iterable[tuple[str, int, int]]) -> str:
    """sha256 over sorted (path, size_bytes, mtime_ns): changes when any file is added, removed,
    rewritten or touched, and only then."""
    h = hashlib.sha256()
    for path, size, mtime in sorted(entries):
        h.update(f"{path}\t{size}\t{mtime}\n".encode())
    return h.hexdigest()


def patient_fingerprints(files: pl.DataFrame) -> dict[str, str]:
    """patient_id -> fingerprint of all that patient's catalogued files (for the sensor)."""
    out: dict[str, str] = {}
    cols = files.select("patient_id", "path", "size_bytes", "mtime_ns").drop_nulls("patient_id")
    for (pid,), part in cols.group_by("patient_id", maintain_order=True):
        out[str(pid)] = fingerprint(part.select("path", "size_bytes", "mtime_ns").iter_rows())
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------------------------
# Per-patient view of the catalog
# ----------------------------------------------------------------------------------------------


@dataclass
class _Series:
    uid: str
    modality: str
    study_uid: str | None
    for_uids: list[str]
    description: str | None
    rows: list[dict[str, Any]]

    @property
    def for_uid(self) -> str | None:
        return self.for_uids[0] if len(self.for_uids) == 1 else None

    def describe(self) -> str:
        d = f" '{self.description}'" if self.description else ""
        fors = ",".join(self.for_uids) or "none"
        return f"{self.modality} series {self.uid}{d} ({len(self.rows)} files, FoR {fors})"


@dataclass
class _Patient:
    patient_id: str
    trial: str | None
    series: list[_Series]  # CT and MR image series
    rtstructs: list[dict[str, Any]]
    rtdoses: list[dict[str, Any]]
    study_dates: dict[str, date | None]
    modalities: dict[str, int] = field(default_factory=dict)


def _patient_view(pid: str, part: pl.DataFrame) -> _Patient:
    rows = part.sort("path").to_dicts()
    by_series: dict[str, list[dict[str, Any]]] = {}
    rtstructs, rtdoses = [], []
    study_dates: dict[str, date | None] = {}
    modalities: dict[str, int] = {}
    for r in rows:
        m = r["modality"] or "?"
        modalities[m] = modalities.get(m, 0) + 1
        st = r["study_instance_uid"]
        if st is not None:
            d = r["study_date"]
            cur = study_dates.get(st)
            study_dates[st] = d if cur is None else (min(cur, d) if d is not None else cur)
        if m in IMAGE_MODALITIES and r["series_instance_uid"]:
            by_series.setdefault(r["series_instance_uid"], []).append(r)
        elif m == "RTSTRUCT":
            rtstructs.append(r)
        elif m == "RTDOSE":
            rtdoses.append(r)
    series = []
    for uid, srows in by_series.items():
        mods = sorted({r["modality"] for r in srows})
        fors = sorted({r["frame_of_reference_uid"] for r in srows if r["frame_of_reference_uid"]})
        studies = sorted({r["study_instance_uid"] for r in srows if r["study_instance_uid"]})
        series.append(_Series(uid, "/".join(mods), studies[0] if len(studies) == 1 else None, fors,
                              srows[0]["series_description"], srows))
    trial = rows[0]["trial"] if rows else None
    return _Patient(pid, trial, series, rtstructs, rtdoses, study_dates, modalities)


def _structures(r: dict[str, Any]) -> list[str]:
    return list(r["structure_names"] or [])


def _references(rs: dict[str, Any], series: _Series, all_series: Sequence[_Series]) -> str | None:
    """How `rs` references `series`: 'series UID', 'frame of reference', or None."""
    ref_series = set(rs["referenced_series_uids"] or [])
    known = {s.uid for s in all_series}
    if ref_series & known:
        return "series UID" if series.uid in ref_series else None
    if series.for_uid and series.for_uid in (rs["referenced_frame_of_reference_uids"] or []):
        return "frame of reference"
    return None


def sort_slices(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Paths of an image series in order along the slice normal (then instance number, path).

    The normal is the cross product of the first file's row and column directions, so the order
    is geometric, not the (often arbitrary) instance numbering.
    """
    iop = next((r["image_orientation_patient"] for r in rows
                if r["image_orientation_patient"] and len(r["image_orientation_patient"]) == 6), None)
    if iop is None:
        normal = (0.0, 0.0, 1.0)
    else:
        a, b = iop[:3], iop[3:]
        normal = (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])

    def key(r: dict[str, Any]) -> tuple[float, int, str]:
        ipp = r["image_position_patient"]
        pos = sum(p * n for p, n in zip(ipp, normal)) if ipp and len(ipp) == 3 else float("inf")
        return pos, r["instance_number"] if r["instance_number"] is not None else 0, r["path"]

    return [r["path"] for r in sorted(rows, key=key)]


def ctv_aliases(config: TrialConfig) -> list[str]:
    """Every CTV pattern of the trial: dose-templated for each prescription, then level names."""
    return config.ctv_patterns()


def _fmt_matches(found: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"'{n}' (alias {a})" for n, a in found)


def _fmt_rs(rs: dict[str, Any]) -> str:
    return f"{rs['path']} [{', '.join(_structures(rs)) or 'no structures'}]"


def _fmt_date(d: date | None) -> str:
    return d.isoformat() if d else "no date"


# ----------------------------------------------------------------------------------------------
# Rule 1 for one patient
# ----------------------------------------------------------------------------------------------


def resolve_patient(p: _Patient, config: TrialConfig) -> list[dict[str, Any]]:
    """The five manifest rows of one patient; raises `PatientDataError` when anything is missing
    or ambiguous (the first problem found, with what was found in the message)."""
    ctv_patterns = ctv_aliases(config)
    cts = [s for s in p.series if s.modality == "CT"]
    ctv_sets = [(rs, match_aliases(_structures(rs), ctv_patterns)) for rs in p.rtstructs]
    ctv_sets = [(rs, found) for rs, found in ctv_sets if found]
    dose_fors = {d["frame_of_reference_uid"] for d in p.rtdoses if d["frame_of_reference_uid"]}

    # --- planning CT ------------------------------------------------------------------------
    candidates: list[tuple[_Series, list[tuple[dict[str, Any], list[tuple[str, str]], str]]]] = []
    for s in cts:
        if s.for_uid is None or s.for_uid not in dose_fors:
            continue
        refs = [(rs, found, how) for rs, found in ctv_sets
                if (how := _references(rs, s, p.series)) is not None]
        if refs:
            candidates.append((s, refs))
    if not candidates:
        _explain_no_planning(p, cts, ctv_sets, ctv_patterns)
    if len(candidates) > 1:
        listing = "; ".join(s.describe() for s, _ in candidates)
        raise PatientDataError(
            "AMBIGUOUS_PLANNING_CT",
            f"{len(candidates)} CT series share a frame of reference with an RTDOSE and are "
            f"referenced by an RTSTRUCT with a CTV: {listing}",
            file=candidates[0][0].rows[0]["path"])
    ct, refs = candidates[0]
    if len({r["study_instance_uid"] for r in ct.rows}) > 1:
        raise PatientDataError("INCONSISTENT_SERIES",
                               f"planning {ct.describe()} spans several studies",
                               file=ct.rows[0]["path"])

    # --- planning RTSTRUCT ------------------------------------------------------------------
    if len(refs) > 1:
        raise PatientDataError(
            "AMBIGUOUS_PLANNING_RTSTRUCT",
            f"{len(refs)} RTSTRUCTs with a CTV reference planning {ct.describe()}: "
            + "; ".join(_fmt_rs(rs) for rs, _, _ in refs),
            file=refs[0][0]["path"])
    rs, ctv_found, how = refs[0]

    # --- planning RTDOSE --------------------------------------------------------------------
    doses = [d for d in p.rtdoses if d["frame_of_reference_uid"] == ct.for_uid]
    dose_note = "the only RTDOSE on the planning frame of reference"
    if len(doses) > 1:
        plan = [d for d in doses if (d["dose_summation_type"] or "").upper() == "PLAN"]
        if len(plan) != 1:
            raise PatientDataError(
                "AMBIGUOUS_RTDOSE",
                f"{len(doses)} RTDOSE files on planning FoR {ct.for_uid} and {len(plan)} of them "
                "have DoseSummationType PLAN: "
                + "; ".join(f"{d['path']} ({d['dose_summation_type']})" for d in doses),
                file=doses[0]["path"])
        dose_note = (f"the only one of {len(doses)} RTDOSE files on the planning frame of reference "
                     "with DoseSummationType PLAN")
        doses = plan
    dose = doses[0]

    planning_date = p.study_dates.get(ct.study_uid or "")
    if planning_date is None:
        raise PatientDataError("NO_STUDY_DATE",
                               f"planning study {ct.study_uid} has no StudyDate, so a later "
                               "relapse study cannot be told apart", file=ct.rows[0]["path"])

    # --- relapse RTSTRUCT -------------------------------------------------------------------
    later = sorted((uid for uid, d in p.study_dates.items() if d is not None and d > planning_date),
                   key=lambda u: (p.study_dates[u], u))
    if not later:
        studies = "; ".join(f"{u} ({_fmt_date(d)})" for u, d in sorted(p.study_dates.items()))
        raise PatientDataError(
            "NO_RELAPSE_STUDY",
            f"no study is dated after the planning study ({planning_date.isoformat()}); "
            f"studies found: {studies}", file=ct.rows[0]["path"])
    rec_aliases = config.aliases.recurrence
    rec_sets = [(r, match_aliases(_structures(r), rec_aliases)) for r in p.rtstructs
                if r["path"] != rs["path"]]
    later_rec = [(r, found) for r, found in rec_sets
                 if found and r["study_instance_uid"] in later]
    if not later_rec:
        later_rs = [r for r in p.rtstructs if r["study_instance_uid"] in later]
        earlier = [r for r, found in rec_sets if found and r["study_instance_uid"] not in later]
        msg = (f"no RTSTRUCT in the {len(later)} later stud{'y' if len(later) == 1 else 'ies'} "
               f"({', '.join(f'{u} ({_fmt_date(p.study_dates[u])})' for u in later)}) has a "
               f"structure matching the recurrence aliases {rec_aliases}; RTSTRUCTs there: "
               + ("; ".join(_fmt_rs(r) for r in later_rs) or "none"))
        if earlier:
            msg += ("; recurrence-like structures only in studies not after planning: "
                    + "; ".join(_fmt_rs(r) for r in earlier))
        raise PatientDataError("NO_RECURRENCE_STRUCTURE", msg,
                               file=later_rs[0]["path"] if later_rs else None)
    if len(later_rec) > 1:
        raise PatientDataError(
            "AMBIGUOUS_RELAPSE",
            f"{len(later_rec)} RTSTRUCTs in studies after planning have a recurrence structure: "
            + "; ".join(f"{_fmt_rs(r)} study {r['study_instance_uid']} "
                        f"({_fmt_date(p.study_dates.get(r['study_instance_uid']))})"
                        for r, _ in later_rec),
            file=later_rec[0][0]["path"])
    rel_rs, rec_found = later_rec[0]
    if len(rec_found) > 1:
        raise PatientDataError(
            "AMBIGUOUS_RECURRENCE_STRUCTURE",
            f"relapse RTSTRUCT {rel_rs['path']} has {len(rec_found)} structures matching the "
            f"recurrence aliases: {_fmt_matches(rec_found)}", file=rel_rs["path"])

    # --- relapse image ----------------------------------------------------------------------
    images = [(s, how_img) for s in p.series if s is not ct and s.modality in IMAGE_MODALITIES
              and (how_img := _references(rel_rs, s, p.series)) is not None]
    if not images:
        raise PatientDataError(
            "NO_RELAPSE_IMAGE",
            f"relapse RTSTRUCT {rel_rs['path']} references series "
            f"{rel_rs['referenced_series_uids'] or 'none'} / FoR "
            f"{rel_rs['referenced_frame_of_reference_uids'] or 'none'}, but no CT or MR series other "
            "than the planning CT matches; image series found: "
            + ("; ".join(s.describe() for s in p.series) or "none"),
            file=rel_rs["path"])
    if len(images) > 1:
        raise PatientDataError(
            "AMBIGUOUS_RELAPSE_IMAGE",
            f"relapse RTSTRUCT {rel_rs['path']} references {len(images)} image series: "
            + "; ".join(s.describe() for s, _ in images), file=rel_rs["path"])
    img, how_img = images[0]

    # --- rows ---------------------------------------------------------------------------------
    rel_date = p.study_dates.get(rel_rs["study_instance_uid"])
    ctv_name, ctv_alias = ctv_found[0]
    rec_name, rec_alias = rec_found[0]
    others_same_for = [s for s in cts if s is not ct and s.for_uid == ct.for_uid]
    ct_reason = (f"CT series FoR {ct.for_uid} shared by RTDOSE {dose['path']}; RTSTRUCT {rs['path']} "
                 f"references it by {how} and has CTV '{ctv_name}' (alias {ctv_alias})")
    if others_same_for:
        ct_reason += ("; other CT series on this FoR are not referenced by a CTV structure set: "
                      + ", ".join(s.uid for s in others_same_for))
    rows = [
        _series_row("planning_ct", ct, p.study_dates, ct_reason),
        _object_row("planning_rtstruct", rs, ct.for_uid, p.study_dates,
                    f"structure set referencing the planning CT by {how}; CTV structures: "
                    f"{_fmt_matches(ctv_found)}", ctv_name, ctv_alias),
        _object_row("planning_rtdose", dose, dose["frame_of_reference_uid"], p.study_dates,
                    f"{dose_note} ({ct.for_uid}); DoseSummationType "
                    f"{dose['dose_summation_type']}, units {dose['dose_units']}"),
        _series_row("relapse_image", img, p.study_dates,
                    f"{img.modality} series referenced by the relapse RTSTRUCT {rel_rs['path']} "
                    f"by {how_img}"),
        _object_row("relapse_rtstruct", rel_rs, img.for_uid, p.study_dates,
                    f"only RTSTRUCT with a recurrence structure in a study after planning: study "
                    f"{rel_rs['study_instance_uid']} dated {_fmt_date(rel_date)} > planning "
                    f"{planning_date.isoformat()}; structure '{rec_name}' (alias {rec_alias})",
                    rec_name, rec_alias),
    ]
    chosen = [(path, size, mtime) for row in rows for path, size, mtime in row.pop("_entries")]
    fp = fingerprint(chosen)
    for row in rows:
        row.update(patient_id=p.patient_id, trial=p.trial, input_fingerprint=fp)
    return [{k: row.get(k) for k in MANIFEST_SCHEMA} for row in rows]


def _explain_no_planning(p: _Patient, cts: list[_Series],
                         ctv_sets: list[tuple[dict[str, Any], list[tuple[str, str]]]],
                         ctv_patterns: list[str]) -> None:
    mods = ", ".join(f"{m}: {n}" for m, n in sorted(p.modalities.items()))
    if not cts:
        first = (p.rtstructs or p.rtdoses or [{"path": None}])[0]["path"]
        raise PatientDataError("NO_PLANNING_CT", f"no CT series among the patient's files ({mods})",
                               file=first)
    if not p.rtdoses:
        raise PatientDataError(
            "NO_RTDOSE",
            f"no RTDOSE among the patient's files ({mods}); the planning CT is defined by the "
            "frame of reference it shares with the dose", file=cts[0].rows[0]["path"])
    if not ctv_sets:
        listing = "; ".join(_fmt_rs(r) for r in p.rtstructs) or "none"
        raise PatientDataError(
            "NO_CTV_STRUCTURE",
            f"no RTSTRUCT has a structure matching the CTV aliases {ctv_patterns}; RTSTRUCTs: "
            f"{listing}", file=p.rtstructs[0]["path"] if p.rtstructs else None)
    dose_fors = sorted({d["frame_of_reference_uid"] or "none" for d in p.rtdoses})
    refs = "; ".join(f"{rs['path']} -> series {rs['referenced_series_uids'] or 'none'}, FoR "
                     f"{rs['referenced_frame_of_reference_uids'] or 'none'}" for rs, _ in ctv_sets)
    raise PatientDataError(
        "NO_PLANNING_CT",
        "no CT series both shares its frame of reference with an RTDOSE and is referenced by an "
        f"RTSTRUCT with a CTV; CT series: {'; '.join(s.describe() for s in cts)}; RTDOSE FoR: "
        f"{', '.join(dose_fors)}; CTV structure sets: {refs}", file=p.rtdoses[0]["path"])


def _series_row(role: str, s: _Series, study_dates: dict[str, date | None], reason: str) -> dict[str, Any]:
    return {
        "role": role,
        "modality": s.modality,
        "study_instance_uid": s.study_uid,
        "series_instance_uid": s.uid,
        "sop_instance_uid": None,
        "frame_of_reference_uid": s.for_uid,
        "study_date": study_dates.get(s.study_uid or ""),
        "n_files": len(s.rows),
        "files": sort_slices(s.rows),
        "reason": reason,
        "matched_structure": None,
        "matched_alias": None,
        "_entries": [(r["path"], r["size_bytes"], r["mtime_ns"]) for r in s.rows],
    }


def _object_row(role: str, r: dict[str, Any], for_uid: str | None, study_dates: dict[str, date | None],
                reason: str, structure: str | None = None, alias: str | None = None) -> dict[str, Any]:
    return {
        "role": role,
        "modality": r["modality"],
        "study_instance_uid": r["study_instance_uid"],
        "series_instance_uid": r["series_instance_uid"],
        "sop_instance_uid": r["sop_instance_uid"],
        "frame_of_reference_uid": for_uid,
        "study_date": study_dates.get(r["study_instance_uid"] or ""),
        "n_files": 1,
        "files": [r["path"]],
        "reason": reason,
        "matched_structure": structure,
        "matched_alias": alias,
        "_entries": [(r["path"], r["size_bytes"], r["mtime_ns"])],
    }


# ----------------------------------------------------------------------------------------------
# Whole cohort
# ----------------------------------------------------------------------------------------------


def build_manifest(files: pl.DataFrame, config: TrialConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(patient_manifest, pipeline_issues) for every patient in the catalog `files`.

    One patient's problem never affects another: each is resolved on its own files only.
    """
    rows: list[dict[str, Any]] = []
    issues: list[dict[str, Any]] = []
    if files.height:
        for (pid,), part in files.drop_nulls("patient_id").group_by("patient_id"):
            try:
                rows.extend(resolve_patient(_patient_view(str(pid), part), config))
            except PatientDataError as err:
                issues.append(err.as_issue(str(pid), STAGE))
    manifest = pl.DataFrame(rows, schema=MANIFEST_SCHEMA)
    if manifest.height:
        order = {r: i for i, r in enumerate(ROLES)}
        manifest = manifest.sort(
            "patient_id", pl.col("role").replace_strict(order, return_dtype=pl.Int64))
    issue_df = pl.DataFrame(issues, schema=ISSUES_SCHEMA).sort("patient_id", "code")
    n_patients = manifest["patient_id"].n_unique() if manifest.height else 0
    log.info("manifest: %d complete patients, %d issues", n_patients, issue_df.height)
    return manifest, issue_df
