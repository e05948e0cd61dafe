"""Every issue code a patient can get in `pipeline_issues`, with what it means (one place; listed in
docs/ISSUE_CODES.md, which `scripts/issue_codes_doc.py` writes from this module).

`PatientDataError(code, ...)` takes one of these (a plain string is accepted and normalised to
upper case); a test checks that every code raised or recorded anywhere in the package is listed here.
"""

from __future__ import annotations

from enum import StrEnum


class IssueCode(StrEnum):
    # --- manifest (rule 1): which file plays which role
    NO_PLANNING_CT = "NO_PLANNING_CT"
    PLANNING_CT_ONE_SLICE = "PLANNING_CT_ONE_SLICE"
    AMBIGUOUS_PLANNING_CT = "AMBIGUOUS_PLANNING_CT"
    INCONSISTENT_SERIES = "INCONSISTENT_SERIES"
    NO_CTV_STRUCTURE = "NO_CTV_STRUCTURE"
    AMBIGUOUS_PLANNING_RTSTRUCT = "AMBIGUOUS_PLANNING_RTSTRUCT"
    RTSTRUCT_EMPTY = "RTSTRUCT_EMPTY"
    NO_RTDOSE = "NO_RTDOSE"
    AMBIGUOUS_RTDOSE = "AMBIGUOUS_RTDOSE"
    NO_STUDY_DATE = "NO_STUDY_DATE"
    NO_RELAPSE_STUDY = "NO_RELAPSE_STUDY"
    NO_RECURRENCE_STRUCTURE = "NO_RECURRENCE_STRUCTURE"
    AMBIGUOUS_RELAPSE = "AMBIGUOUS_RELAPSE"
    AMBIGUOUS_RECURRENCE_STRUCTURE = "AMBIGUOUS_RECURRENCE_STRUCTURE"
    RECURRENCE_EMPTY = "RECURRENCE_EMPTY"
    NO_RELAPSE_IMAGE = "NO_RELAPSE_IMAGE"
    AMBIGUOUS_RELAPSE_IMAGE = "AMBIGUOUS_RELAPSE_IMAGE"
    NOT_IN_MANIFEST = "NOT_IN_MANIFEST"
    MANIFEST_ROLE = "MANIFEST_ROLE"
    # --- image series geometry (rule 15)
    SERIES_TOO_FEW_SLICES = "SERIES_TOO_FEW_SLICES"
    SERIES_MULTIFRAME = "SERIES_MULTIFRAME"
    SERIES_MIXED_ORIENTATION = "SERIES_MIXED_ORIENTATION"
    SERIES_INCONSISTENT_GEOMETRY = "SERIES_INCONSISTENT_GEOMETRY"
    SERIES_GANTRY_TILT = "SERIES_GANTRY_TILT"
    SERIES_DUPLICATE_SLICE = "SERIES_DUPLICATE_SLICE"
    SERIES_NONUNIFORM_SPACING = "SERIES_NONUNIFORM_SPACING"
    SERIES_GAP = "SERIES_GAP"
    SERIES_DUPLICATE_POSITION = "SERIES_DUPLICATE_POSITION"
    SERIES_BAD_ORIENTATION = "SERIES_BAD_ORIENTATION"
    SERIES_NO_GEOMETRY = "SERIES_NO_GEOMETRY"
    # --- structure sets (rules 2, 3)
    RTSTRUCT_NOT_RTSTRUCT = "RTSTRUCT_NOT_RTSTRUCT"
    RTSTRUCT_MISSING_STRUCTURE = "RTSTRUCT_MISSING_STRUCTURE"
    CONTOUR_NOT_IN_SLICE_PLANE = "CONTOUR_NOT_IN_SLICE_PLANE"
    RECURRENCE_MISSING = "RECURRENCE_MISSING"
    RECURRENCE_AMBIGUOUS = "RECURRENCE_AMBIGUOUS"
    LANDMARK_MISSING = "LANDMARK_MISSING"
    LANDMARK_AMBIGUOUS = "LANDMARK_AMBIGUOUS"
    LANDMARK_EMPTY = "LANDMARK_EMPTY"
    RECURRENCE_MAPPED_EMPTY = "RECURRENCE_MAPPED_EMPTY"
    # --- dose (rule 16)
    RTDOSE_NOT_RTDOSE = "RTDOSE_NOT_RTDOSE"
    RTDOSE_UNITS = "RTDOSE_UNITS"
    RTDOSE_RELATIVE = "RTDOSE_RELATIVE"
    RTDOSE_FRAME_OFFSETS = "RTDOSE_FRAME_OFFSETS"
    RTDOSE_OTHER_FRAME = "RTDOSE_OTHER_FRAME"
    RTDOSE_GRID_MISALIGNED = "RTDOSE_GRID_MISALIGNED"
    RTDOSE_SUMMATION_TYPE = "RTDOSE_SUMMATION_TYPE"
    RTDOSE_DOUBLE_COUNT = "RTDOSE_DOUBLE_COUNT"
    # --- dosimetry and classification (rules 5-14)
    NO_REGISTRATION = "NO_REGISTRATION"
    NO_DOSE = "NO_DOSE"
    GRID_MISMATCH = "GRID_MISMATCH"
    NO_RECURRENCE = "NO_RECURRENCE"
    AMBIGUOUS_RECURRENCE = "AMBIGUOUS_RECURRENCE"
    EMPTY_RECURRENCE = "EMPTY_RECURRENCE"
    CTV_AMBIGUOUS = "CTV_AMBIGUOUS"
    CTV_DOSE_IMPLAUSIBLE = "CTV_DOSE_IMPLAUSIBLE"
    CTV_MISSING = "CTV_MISSING"
    UNKNOWN_COVARIATE_ARM = "UNKNOWN_COVARIATE_ARM"
    ARM_MISMATCH = "ARM_MISMATCH"
    ARM_UNASSIGNED = "ARM_UNASSIGNED"
    ARM_AMBIGUOUS = "ARM_AMBIGUOUS"
    CENTROID_OUTSIDE_DOSE_GRID = "CENTROID_OUTSIDE_DOSE_GRID"
    MOHAMED_UNDECIDED = "MOHAMED_UNDECIDED"
    COHORT_RADIUS_PENDING = "COHORT_RADIUS_PENDING"
    # --- trial subject key (rule 17): from the catalog's rejects, named by hash only
    PATIENT_ID_MISMATCH = "PATIENT_ID_MISMATCH"
    PATIENT_ID_UNMAPPED = "PATIENT_ID_UNMAPPED"
    NO_EXPORT_FOLDER = "NO_EXPORT_FOLDER"
    # --- trial data and operation
    COVARIATES_NO_ID = "COVARIATES_NO_ID"
    UNEXPECTED_ERROR = "UNEXPECTED_ERROR"


MEANINGS: dict[IssueCode, str] = {
    IssueCode.NO_PLANNING_CT: "No CT series both shares its frame of reference with an RTDOSE and is referenced by a "
    "structure set with a CTV (the message lists what was found).",
    IssueCode.PLANNING_CT_ONE_SLICE: "The only CT a CTV structure set references has one slice: not a planning CT.",
    IssueCode.AMBIGUOUS_PLANNING_CT: "Several CT series qualify as the planning CT.",
    IssueCode.INCONSISTENT_SERIES: "The planning CT series spans several studies.",
    IssueCode.NO_CTV_STRUCTURE: "No structure set has a structure matching the CTV aliases.",
    IssueCode.AMBIGUOUS_PLANNING_RTSTRUCT: "Several structure sets with a CTV reference the planning CT.",
    IssueCode.RTSTRUCT_EMPTY: "A structure set holds no ROI at all.",
    IssueCode.NO_RTDOSE: "The patient has no RTDOSE (the planning CT is defined by the dose's frame of reference).",
    IssueCode.AMBIGUOUS_RTDOSE: "Dose files on the planning frame of reference cannot be summed unambiguously "
    "(two totals for one plan, or untyped parts beside a total).",
    IssueCode.NO_STUDY_DATE: "The planning study has no date, so a later relapse study cannot be told apart.",
    IssueCode.NO_RELAPSE_STUDY: "No study is dated after the planning study.",
    IssueCode.NO_RECURRENCE_STRUCTURE: "No structure set in a later study has a structure matching the recurrence aliases.",
    IssueCode.AMBIGUOUS_RELAPSE: "Several later structure sets have a recurrence structure.",
    IssueCode.AMBIGUOUS_RECURRENCE_STRUCTURE: "The relapse structure set has several recurrence structures.",
    IssueCode.RECURRENCE_EMPTY: "The recurrence structure exists but has no contour (or no voxel); the message names it.",
    IssueCode.NO_RELAPSE_IMAGE: "The relapse structure set references no CT or MR series other than the planning CT.",
    IssueCode.AMBIGUOUS_RELAPSE_IMAGE: "The relapse structure set references several image series.",
    IssueCode.NOT_IN_MANIFEST: "A patient run was asked for a patient without a complete manifest (see its manifest issues).",
    IssueCode.MANIFEST_ROLE: "The manifest rows handed to the imaging step lack a role or its files.",
    IssueCode.SERIES_TOO_FEW_SLICES: "An image series has fewer than two slices.",
    IssueCode.SERIES_MULTIFRAME: "Enhanced (multi-frame) image objects are not read.",
    IssueCode.SERIES_MIXED_ORIENTATION: "Slices of one series have different orientations.",
    IssueCode.SERIES_INCONSISTENT_GEOMETRY: "Slices of one series differ in size or pixel spacing.",
    IssueCode.SERIES_GANTRY_TILT: "Slice origins do not move along the slice normal (gantry tilt or a sheared stack).",
    IssueCode.SERIES_DUPLICATE_SLICE: "Two slices share one position with different content.",
    IssueCode.SERIES_NONUNIFORM_SPACING: "RTDOSE frames whose offsets are not uniform (image series are resampled instead).",
    IssueCode.SERIES_GAP: "A slice step longer than slice_geometry.max_step_ratio x the median (a missing slice); the "
    "message gives the step, the positions and the estimated number of missing slices.",
    IssueCode.SERIES_DUPLICATE_POSITION: "Two slices closer than the duplicate tolerance with different content "
    "(identical duplicates are kept once).",
    IssueCode.SERIES_BAD_ORIENTATION: "Direction cosines that are not two orthogonal unit vectors.",
    IssueCode.SERIES_NO_GEOMETRY: "A slice lacks ImageOrientationPatient or ImagePositionPatient.",
    IssueCode.RTSTRUCT_NOT_RTSTRUCT: "A file given as a structure set is not one.",
    IssueCode.RTSTRUCT_MISSING_STRUCTURE: "A structure asked for by name is not in the structure set.",
    IssueCode.CONTOUR_NOT_IN_SLICE_PLANE: "A contour does not lie in a slice plane of the grid it is rasterised on.",
    IssueCode.RECURRENCE_MISSING: "The relapse structure set has no structure matching the recurrence aliases.",
    IssueCode.RECURRENCE_AMBIGUOUS: "Several relapse structures match the recurrence aliases.",
    IssueCode.LANDMARK_MISSING: "No landmark structure (registration start and uncertainty, rules 4-5).",
    IssueCode.LANDMARK_AMBIGUOUS: "Several structures match the landmark aliases.",
    IssueCode.LANDMARK_EMPTY: "The landmark structure has no voxels.",
    IssueCode.RECURRENCE_MAPPED_EMPTY: "The recurrence mapped into planning space is empty (outside the planning grid?).",
    IssueCode.RTDOSE_NOT_RTDOSE: "A file given as an RTDOSE is not one.",
    IssueCode.RTDOSE_UNITS: "DoseUnits other than GY.",
    IssueCode.RTDOSE_RELATIVE: "DoseUnits RELATIVE: no absolute dose to classify against.",
    IssueCode.RTDOSE_FRAME_OFFSETS: "GridFrameOffsetVector is neither relative nor absolute, or does not match the frames.",
    IssueCode.RTDOSE_OTHER_FRAME: "A dose (or a part of one) is on another frame of reference than the planning CT.",
    IssueCode.RTDOSE_GRID_MISALIGNED: "Dose grids to be summed have different orientations.",
    IssueCode.RTDOSE_SUMMATION_TYPE: "A dose summation type that cannot be part of a plan total (per-session, record).",
    IssueCode.RTDOSE_DOUBLE_COUNT: "A plan total was given together with one of its own parts.",
    IssueCode.NO_REGISTRATION: "Classification asked for a patient with no registration.",
    IssueCode.NO_DOSE: "The patient's volumes hold no dose on the working grid.",
    IssueCode.GRID_MISMATCH: "A structure is not on the dose's working grid.",
    IssueCode.NO_RECURRENCE: "No mapped recurrence among the patient's volumes.",
    IssueCode.AMBIGUOUS_RECURRENCE: "Several mapped recurrence structures.",
    IssueCode.EMPTY_RECURRENCE: "The mapped recurrence handed to dosimetry has no voxels.",
    IssueCode.CTV_AMBIGUOUS: "Two structures match one level's CTV names, or one structure matches two levels.",
    IssueCode.CTV_DOSE_IMPLAUSIBLE: "A level's CTV has D95 above (1 + tolerance) x P or mean below (1 - tolerance) x P: "
    "probably another level's CTV (never a silent arm).",
    IssueCode.CTV_MISSING: "A present level has no CTV matching its names.",
    IssueCode.UNKNOWN_COVARIATE_ARM: "The covariates name an arm the trial configuration does not know.",
    IssueCode.ARM_MISMATCH: "The covariates' arm differs from the arm the dose says (rule 8).",
    IssueCode.ARM_UNASSIGNED: "No arm fits the CTV mean dose: classes left empty.",
    IssueCode.ARM_AMBIGUOUS: "Several arms tie on the high-level prescription: classes left empty.",
    IssueCode.CENTROID_OUTSIDE_DOSE_GRID: "The recurrence centroid lies outside the dose grid (dose 0).",
    IssueCode.MOHAMED_UNDECIDED: "A CTV the Mohamed decision needs is missing: type left empty.",
    IssueCode.COHORT_RADIUS_PENDING: "Cohort radius policy before cohort_uncertainty exists: classified with the fixed "
    "radius for now; re-classified automatically when the cohort radius is computed.",
    IssueCode.PATIENT_ID_MISMATCH: "A file's PatientID differs from the rest of its export, or maps to another "
    "subject (named by a salted hash; the raw PatientID is never stored).",
    IssueCode.PATIENT_ID_UNMAPPED: "Mapping source: a file's PatientID is not in the trial's mapping file.",
    IssueCode.NO_EXPORT_FOLDER: "Folder source: a file lies directly in the trial folder, outside any subject's export.",
    IssueCode.COVARIATES_NO_ID: "The covariates file has no patient_id column.",
    IssueCode.UNEXPECTED_ERROR: "A failure that is not a known data problem (a bug): the run log has the traceback.",
}
