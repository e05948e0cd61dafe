"""Patient manifest: which DICOM objects play which role for each patient (rule 1).

Input is the `dicom_files` catalog (see `catalog.py`); output is two tables:

* `patient_manifest` (long format, `MANIFEST_SCHEMA`): one row per patient x role found, roles
  `planning_ct`, `planning_rtstruct`, `planning_rtdose`, `relapse_image`, `relapse_rtstruct`,
  each with the reason it was chosen, the structure/alias that qualified it, the patient's
  `input_fingerprint` (a hash of the chosen files' path, size and mtime) and `complete`.
* `pipeline_issues` (`ISSUES_SCHEMA`, stage "manifest"): why a patient is not complete.

What the manifest says about a patient: every role it could resolve has a row, whether or not the
patient is complete, so users see what was found next to the issue saying what is missing.
`complete` (the same on all of a patient's rows) is true when all five roles resolved and there is
no manifest issue; only complete patients go on to the per-patient pipeline. "Which patients are
ready" is `SELECT DISTINCT patient_id FROM patient_manifest WHERE complete` (`complete_rows`).
Without a planning CT nothing is placed (no rows): the relapse is defined relative to it.

Rule 1 as implemented, in the steps of `resolve_patient`:

* A structure set *references* an image series through its RTReferencedSeriesSequence when any
  of those series is in the catalog, otherwise through its frame(s) of reference.
* Planning CT: the CT series of two or more slices whose FrameOfReferenceUID is that of an RTDOSE
  and which is referenced by an RTSTRUCT with a CTV (a structure matching `config.ctv_patterns()`: the
  dose-templated names for any prescription p > 0, or a level name). Exactly one such series is required. A one-slice CT (a
  scout, one exported slice) is never a planning CT (`PLANNING_CT_ONE_SLICE` when it is the only
  one); a CTV-referenced CT whose frame of reference no RTDOSE shares is `RTDOSE_OTHER_FRAME`.
* Planning RTSTRUCT: the single CTV structure set referencing the planning CT. A structure set
  with no ROI at all is called empty (`RTSTRUCT_EMPTY`), not "no CTV".
* Plan dose (rule 16, docs/DOSE_SUMMATION.md, `dose_sum.select_plan_doses`): the RTDOSE objects on
  the planning frame of reference, and those of the planning study, are the candidates. Parts
  (DoseSummationType BEAM, FRACTION, BRACHY) are summed into the plan total; totals (PLAN,
  MULTI_PLAN) of different RTPLANs (a main plan and a boost, each referencing its own RTPLAN) are
  summed; a part whose ReferencedRTPlanSequence UIDs are all among a total's is already in that total
  and is not added again (listed in the reason as such). The catalog keeps RTPLAN and structure set
  references in one column (`referenced_sop_instance_uids`); an RTDOSE's plan references are those
  UIDs that are not a catalogued object of another modality. Refused with a code: DoseUnits RELATIVE
  (`RTDOSE_RELATIVE`), a candidate on another frame of reference (`RTDOSE_OTHER_FRAME`), grids of
  different orientation (`RTDOSE_GRID_MISALIGNED`), per-session or control-point dose and untyped
  objects among several (`RTDOSE_SUMMATION_TYPE`), two totals of one RTPLAN or an unreferenced
  object beside a total (`AMBIGUOUS_RTDOSE`). The planning_rtdose row lists every summed file in
  `files` (path order; `n_files` of them; `sop_instance_uid` null when several) and the reason says
  which were summed, which were left out and why. RTDOSE objects of other studies on other frames
  (e.g. a later re-irradiation plan) are not part of the plan; the reason names them.
* Relapse RTSTRUCT: the single RTSTRUCT in a study dated after the planning study (study date =
  earliest StudyDate of the study's files) with exactly one structure matching
  `aliases.recurrence`. Relapse image: the one CT or MR series (not the planning CT) it references.

A failed planning RTSTRUCT or plan dose does not stop the relapse steps, so a patient can have
several manifest issues; a failed relapse RTSTRUCT leaves the planning rows in place.
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
from rtmap_assets.dicom.dose_sum import DosePart, select_plan_doses
from rtmap_assets.errors import ISSUE_ROW_SCHEMA, PatientDataError
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
    # rule 17: days from the planning study (0 for planning roles, the relapse interval for relapse
    # roles), never a calendar date; the dates stay in the bronze catalog only.
    "days_from_planning": pl.Int64(),
    "n_files": pl.Int64(),
    "files": pl.List(pl.String()),  # catalog paths; image series sorted along the slice normal
    "reason": pl.String(),
    "matched_structure": pl.String(),
    "matched_alias": pl.String(),
    "input_fingerprint": pl.String(),
    "complete": pl.Boolean(),  # all five roles resolved and no manifest issue (same on all the patient's rows)
}

ISSUES_SCHEMA = ISSUE_ROW_SCHEMA  # the manifest's issue rows, before pipeline_issues stamps them


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
    non_plan_sops: set[str] = field(default_factory=set)  # SOP UIDs of catalogued objects that are not RTPLANs


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
    non_plan = {r["sop_instance_uid"] for r in rows if r["modality"] != "RTPLAN" and r["sop_instance_uid"]}
    return _Patient(pid, trial, series, rtstructs, rtdoses, study_dates, modalities, non_plan)


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


def _fmt_days(d: date | None, planning: date) -> str:
    """A study date as days from planning (rule 17: no calendar date leaves the bronze catalog)."""
    return f"{(d - planning).days:+d} days from planning" if d is not None else "no date"


# ----------------------------------------------------------------------------------------------
# Rule 1 for one patient, in named steps
# ----------------------------------------------------------------------------------------------

_RefSet = tuple[dict[str, Any], list[tuple[str, str]], str]  # (RTSTRUCT row, CTV matches, how it references)


@dataclass
class PatientResolution:
    """What the manifest found for one patient: the rows of the roles it resolved and the problems.

    `complete` is True when all five roles resolved and nothing is wrong; the rows are written to the
    manifest either way (with `complete` set on each), the issues go to `pipeline_issues`.
    """

    rows: list[dict[str, Any]]
    issues: list[PatientDataError]

    @property
    def complete(self) -> bool:
        return not self.issues and {r["role"] for r in self.rows} == set(ROLES)


def _planning_ct(p: _Patient, ctv_sets: list[tuple[dict[str, Any], list[tuple[str, str]]]],
                 ctv_patterns: list[str]) -> tuple[_Series, list[_RefSet]]:
    """Step 1: the CT series on an RTDOSE's frame of reference referenced by a CTV structure set."""
    cts = [s for s in p.series if s.modality == "CT"]
    dose_fors = {d["frame_of_reference_uid"] for d in p.rtdoses if d["frame_of_reference_uid"]}
    candidates: list[tuple[_Series, list[_RefSet]]] = []
    single_slice: list[_Series] = []
    other_frame: list[_Series] = []
    for s in cts:
        refs = [(rs, found, how) for rs, found in ctv_sets if (how := _references(rs, s, p.series)) is not None]
        if not refs:
            continue
        if _n_slices(s) < 2:
            single_slice.append(s)  # a scout or one exported slice: never a planning volume
        elif s.for_uid is None or s.for_uid not in dose_fors:
            other_frame.append(s)
        else:
            candidates.append((s, refs))
    if not candidates:
        if other_frame and p.rtdoses:
            doses = "; ".join(f"{d['path']} on {d['frame_of_reference_uid'] or 'no FoR'}" for d in p.rtdoses)
            raise PatientDataError(
                "RTDOSE_OTHER_FRAME",
                "the CT series referenced by a CTV structure set ("
                + "; ".join(s.describe() for s in other_frame)
                + f") shares its frame of reference with no RTDOSE; RTDOSE found: {doses}",
                file=p.rtdoses[0]["path"])
        if single_slice:
            raise PatientDataError(
                "PLANNING_CT_ONE_SLICE",
                "the only CT series referenced by a CTV structure set has one slice, which is not a planning "
                "volume: " + "; ".join(s.describe() for s in single_slice), file=single_slice[0].rows[0]["path"])
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
        raise PatientDataError("INCONSISTENT_SERIES", f"planning {ct.describe()} spans several studies",
                               file=ct.rows[0]["path"])
    return ct, refs


def _n_slices(s: _Series) -> int:
    return sum(max(int(r["number_of_frames"] or 1), 1) for r in s.rows)


def _planning_rtstruct(ct: _Series, refs: list[_RefSet]) -> _RefSet:
    """Step 2: the single CTV structure set referencing the planning CT."""
    if len(refs) > 1:
        raise PatientDataError(
            "AMBIGUOUS_PLANNING_RTSTRUCT",
            f"{len(refs)} RTSTRUCTs with a CTV reference planning {ct.describe()}: "
            + "; ".join(_fmt_rs(rs) for rs, _, _ in refs),
            file=refs[0][0]["path"])
    return refs[0]


def _dose_part(d: dict[str, Any], not_plans: set[str]) -> DosePart:
    # The catalog keeps ReferencedRTPlanSequence and ReferencedStructureSetSequence UIDs in one
    # column; the RTPLAN references are those that are not a catalogued object of another modality.
    plans = frozenset(u for u in (d["referenced_sop_instance_uids"] or []) if u not in not_plans)
    iop = d["image_orientation_patient"]
    summation = (d["dose_summation_type"] or "").upper() or None
    units = (d["dose_units"] or "").upper() or None
    return DosePart(d["path"], summation, units, d["frame_of_reference_uid"], plans, tuple(iop) if iop else None)


def _plan_dose(p: _Patient, ct: _Series) -> dict[str, Any]:
    """Step 3: the RTDOSE objects summed into the plan dose (rule 16, `dose_sum.select_plan_doses`).

    Considered: every RTDOSE on the planning frame of reference, and every RTDOSE of the planning
    study (one of those on another frame is refused, not silently left out of the sum).
    """
    considered = [d for d in p.rtdoses
                  if d["frame_of_reference_uid"] == ct.for_uid or d["study_instance_uid"] == ct.study_uid]
    selection = select_plan_doses([_dose_part(d, p.non_plan_sops) for d in considered], ct.for_uid)
    summed = {part.path for part in selection.summed}
    rows = [d for d in considered if d["path"] in summed]
    ignored = [d for d in p.rtdoses if d not in considered]
    reason = selection.reason(ct.for_uid)
    if ignored:
        reason += ("; RTDOSE in other studies on other frames of reference, not part of this plan: "
                   + ", ".join(d["path"] for d in ignored))
    row = _object_row("planning_rtdose", rows[0], ct.for_uid, p.study_dates, reason)
    if len(rows) > 1:
        series = {d["series_instance_uid"] for d in rows}
        row.update(sop_instance_uid=None, series_instance_uid=series.pop() if len(series) == 1 else None,
                   n_files=len(rows), files=[d["path"] for d in rows])
    row["_entries"] = [(d["path"], d["size_bytes"], d["mtime_ns"]) for d in considered]
    units = sorted({d["dose_units"] or "none" for d in rows})
    row["reason"] += f"; units {', '.join(units)}"
    return row


def _relapse_rtstruct(p: _Patient, config: TrialConfig, planning_date: date, ct: _Series,
                      planning_paths: set[str]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Step 4: the single RTSTRUCT with one recurrence structure in a study dated after planning."""
    later = sorted((uid for uid, d in p.study_dates.items() if d is not None and d > planning_date),
                   key=lambda u: (p.study_dates[u], u))
    if not later:
        studies = "; ".join(f"{u} ({_fmt_days(d, planning_date)})" for u, d in sorted(p.study_dates.items()))
        raise PatientDataError(
            "NO_RELAPSE_STUDY",
            f"no study is dated after the planning study; studies found: {studies}", file=ct.rows[0]["path"])
    rec_aliases = config.aliases.recurrence
    rec_sets = [(r, match_aliases(_structures(r), rec_aliases)) for r in p.rtstructs
                if r["path"] not in planning_paths]
    later_rec = [(r, found) for r, found in rec_sets if found and r["study_instance_uid"] in later]
    if not later_rec:
        later_rs = [r for r in p.rtstructs if r["study_instance_uid"] in later]
        earlier = [r for r, found in rec_sets if found and r["study_instance_uid"] not in later]
        empty = [r for r in later_rs if not _structures(r)]
        studies = ", ".join(f"{u} ({_fmt_days(p.study_dates[u], planning_date)})" for u in later)
        if empty and len(empty) == len(later_rs):
            raise PatientDataError(
                "RTSTRUCT_EMPTY",
                f"the RTSTRUCT(s) in the {len(later)} later stud{'y' if len(later) == 1 else 'ies'} ({studies}) "
                f"have no ROI at all (empty structure set): {', '.join(r['path'] for r in empty)}; "
                f"the recurrence (aliases {rec_aliases}) cannot be found", file=empty[0]["path"])
        msg = (f"no RTSTRUCT in the {len(later)} later stud{'y' if len(later) == 1 else 'ies'} "
               f"({studies}) has a structure matching the recurrence aliases {rec_aliases}; RTSTRUCTs there: "
               + ("; ".join(_fmt_rs(r) for r in later_rs) or "none"))
        if earlier:
            msg += ("; recurrence-like structures only in studies not after planning: "
                    + "; ".join(_fmt_rs(r) for r in earlier))
        raise PatientDataError("NO_RECURRENCE_STRUCTURE", msg, file=later_rs[0]["path"] if later_rs else None)
    if len(later_rec) > 1:
        raise PatientDataError(
            "AMBIGUOUS_RELAPSE",
            f"{len(later_rec)} RTSTRUCTs in studies after planning have a recurrence structure: "
            + "; ".join(f"{_fmt_rs(r)} study {r['study_instance_uid']} "
                        f"({_fmt_days(p.study_dates.get(r['study_instance_uid']), planning_date)})"
                        for r, _ in later_rec),
            file=later_rec[0][0]["path"])
    rel_rs, rec_found = later_rec[0]
    if len(rec_found) > 1:
        raise PatientDataError(
            "AMBIGUOUS_RECURRENCE_STRUCTURE",
            f"relapse RTSTRUCT {rel_rs['path']} has {len(rec_found)} structures matching the "
            f"recurrence aliases: {_fmt_matches(rec_found)}", file=rel_rs["path"])
    return rel_rs, rec_found


def _relapse_image(p: _Patient, ct: _Series, rel_rs: dict[str, Any]) -> tuple[_Series, str]:
    """Step 5: the one CT or MR series (not the planning CT) the relapse RTSTRUCT references."""
    images = [(s, how) for s in p.series if s is not ct and s.modality in IMAGE_MODALITIES
              and (how := _references(rel_rs, s, p.series)) is not None]
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
    return images[0]


def resolve_patient(p: _Patient, config: TrialConfig) -> PatientResolution:
    """Rule 1 for one patient: the rows of every role that resolved, and what went wrong.

    Steps: planning CT, planning RTSTRUCT, plan dose, relapse RTSTRUCT, relapse image. Without a
    planning CT nothing else can be placed (the relapse is "a later study" than the planning one),
    so that failure stops; a failed planning RTSTRUCT or plan dose does not stop the relapse steps,
    and a failed relapse RTSTRUCT stops only the relapse image. Each failure is one issue.
    """
    ctv_patterns = ctv_aliases(config)
    ctv_sets = [(rs, match_aliases(_structures(rs), ctv_patterns)) for rs in p.rtstructs]
    ctv_sets = [(rs, found) for rs, found in ctv_sets if found]
    rows: list[dict[str, Any]] = []
    issues: list[PatientDataError] = []
    try:
        ct, refs = _planning_ct(p, ctv_sets, ctv_patterns)
    except PatientDataError as err:
        return PatientResolution([], [err])

    ct_row = _series_row("planning_ct", ct, p.study_dates, "")
    rows.append(ct_row)
    ct_reason = f"CT series FoR {ct.for_uid}"
    try:
        rs, ctv_found, how = _planning_rtstruct(ct, refs)
        ctv_name, ctv_alias = ctv_found[0]
        ct_reason += (f"; RTSTRUCT {rs['path']} references it by {how} and has CTV '{ctv_name}' "
                      f"(alias {ctv_alias})")
        rows.append(_object_row("planning_rtstruct", rs, ct.for_uid, p.study_dates,
                                f"structure set referencing the planning CT by {how}; CTV structures: "
                                f"{_fmt_matches(ctv_found)}", ctv_name, ctv_alias))
    except PatientDataError as err:
        issues.append(err)
    try:
        dose_row = _plan_dose(p, ct)
        ct_reason += f"; shared by RTDOSE {', '.join(dose_row['files'])}"
        rows.append(dose_row)
    except PatientDataError as err:
        issues.append(err)
    others_same_for = [s for s in p.series if s.modality == "CT" and s is not ct and s.for_uid == ct.for_uid]
    if others_same_for:
        ct_reason += ("; other CT series on this FoR are not referenced by a CTV structure set: "
                      + ", ".join(s.uid for s in others_same_for))
    ct_row["reason"] = ct_reason

    planning_date = p.study_dates.get(ct.study_uid or "")
    try:
        if planning_date is None:
            raise PatientDataError("NO_STUDY_DATE",
                                   f"planning study {ct.study_uid} has no StudyDate, so a later "
                                   "relapse study cannot be told apart", file=ct.rows[0]["path"])
        rel_rs, rec_found = _relapse_rtstruct(p, config, planning_date, ct, {r["path"] for r, _, _ in refs})
        rel_date = p.study_dates.get(rel_rs["study_instance_uid"])
        rec_name, rec_alias = rec_found[0]
        # rule 17: the interval, never the dates, goes into the lake
        rel_rs_reason = (f"only RTSTRUCT with a recurrence structure in a study after planning: study "
                         f"{rel_rs['study_instance_uid']} {(rel_date - planning_date).days} days after the planning "
                         f"study; structure '{rec_name}' (alias {rec_alias})")
        img: _Series | None = None
        try:
            img, how_img = _relapse_image(p, ct, rel_rs)
            rows.append(_series_row("relapse_image", img, p.study_dates,
                                    f"{img.modality} series referenced by the relapse RTSTRUCT {rel_rs['path']} "
                                    f"by {how_img}"))
        except PatientDataError as err:
            issues.append(err)
        rel_for = img.for_uid if img is not None else next(iter(rel_rs["referenced_frame_of_reference_uids"] or []),
                                                            None)
        rows.append(_object_row("relapse_rtstruct", rel_rs, rel_for, p.study_dates, rel_rs_reason,
                                rec_name, rec_alias))
    except PatientDataError as err:
        issues.append(err)

    chosen = [(path, size, mtime) for row in rows for path, size, mtime in row.pop("_entries")]
    fp = fingerprint(chosen)
    resolution = PatientResolution([], issues)
    order = {r: i for i, r in enumerate(ROLES)}
    for row in sorted(rows, key=lambda r: order[r["role"]]):
        row.update(patient_id=p.patient_id, trial=p.trial, input_fingerprint=fp)
        resolution.rows.append(row)
    complete = resolution.complete
    resolution.rows = [{**{k: row.get(k) for k in (*MANIFEST_SCHEMA, "_study_date")}, "complete": complete}
                       for row in resolution.rows]
    return resolution


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
        empty = [r for r in p.rtstructs if not _structures(r)]
        if empty and len(empty) == len(p.rtstructs):
            raise PatientDataError(
                "RTSTRUCT_EMPTY",
                f"every RTSTRUCT of the patient has no ROI at all (empty structure set): {listing}; "
                f"no CTV (aliases {ctv_patterns}) can be found", file=empty[0]["path"])
        if empty:
            listing += f" ({len(empty)} of them empty: no ROI)"
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
        "_study_date": study_dates.get(s.study_uid or ""),  # → days_from_planning in build_manifest
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
        "_study_date": study_dates.get(r["study_instance_uid"] or ""),  # → days_from_planning
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


def _dates_to_intervals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace each row's private `_study_date` by days from its patient's planning study (rule 17)."""
    planning = {r["patient_id"]: r.get("_study_date") for r in rows if r["role"] == "planning_ct"}
    out = []
    for r in rows:
        d, p = r.pop("_study_date", None), planning.get(r["patient_id"])
        out.append({**r, "days_from_planning": (d - p).days if d is not None and p is not None else None})
    return out


def build_manifest(files: pl.DataFrame, config: TrialConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(patient_manifest, pipeline_issues) for every patient in the catalog `files`.

    One patient's problem never affects another: each is resolved on its own files only. The
    manifest holds a row for every role found, complete patients or not (`complete` says which);
    `complete_rows` keeps the patients that are ready for the per-patient pipeline.
    """
    rows: list[dict[str, Any]] = []
    issues: list[dict[str, Any]] = []
    if files.height:
        for (pid,), part in files.drop_nulls("patient_id").group_by("patient_id"):
            resolution = resolve_patient(_patient_view(str(pid), part), config)
            rows.extend(resolution.rows)
            issues.extend(err.as_issue(str(pid), STAGE) for err in resolution.issues)
    manifest = pl.DataFrame(_dates_to_intervals(rows), schema=MANIFEST_SCHEMA)
    if manifest.height:
        order = {r: i for i, r in enumerate(ROLES)}
        manifest = manifest.sort(
            "patient_id", pl.col("role").replace_strict(order, return_dtype=pl.Int64))
    issue_df = pl.DataFrame(issues, schema=ISSUES_SCHEMA).sort("patient_id", "code")
    n_complete = complete_rows(manifest)["patient_id"].n_unique() if manifest.height else 0
    n_partial = manifest.filter(~pl.col("complete"))["patient_id"].n_unique() if manifest.height else 0
    log.info("manifest: %d complete patients, %d incomplete with the roles found, %d issues",
             n_complete, n_partial, issue_df.height)
    return manifest, issue_df


def complete_rows(manifest: pl.DataFrame) -> pl.DataFrame:
    """The rows of complete patients only (a table written before `complete` existed is all complete)."""
    if "complete" not in manifest.columns or manifest.is_empty():
        return manifest
    return manifest.filter(pl.col("complete"))
