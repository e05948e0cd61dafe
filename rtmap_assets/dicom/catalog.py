"""Bronze layer: a header-only catalog of every file in a trial's raw folder.

`catalog_folder(data/raw/<trial>)` returns two tables:

* `dicom_files` — one row per DICOM object (schema `FILES_SCHEMA`), the facts the manifest and the
  readers need (UIDs, modality, dates, frames of reference, references, geometry, ROI names);
* `dicom_rejects` — one row per file that is not usable, with the reason.

Conventions
-----------
* `path` is POSIX, **relative to the raw root** (the parent of the trial folder), e.g.
  `SYNTH-HN/P001/study1/ct/IM0001.dcm`; `resolve_path(raw_root, path)` turns it back into a file
  path. Relative paths keep fingerprints stable when the data folder moves.
* `export` is the top-level folder under the trial (one PACS export); null for files lying
  directly in the trial folder.
* Dates are `pl.Date` (null when absent or malformed).
* Privacy: only the tags in `_TAGS` (and the few nested ones in `_WANT`) are ever decoded, so
  PatientName, BirthDate, addresses, other IDs, institution and physician names are skipped
  unread. PatientID is read but never stored (rule 17): `patient_id` is the trial subject ID from
  the declared source (`SubjectKey`: the export folder, or a mapping file), and `patient_id_hash`
  a salted hash of the file's PatientID (salt in `<data>/.rtmap_subject_salt`, outside the lake)
  used to check that every file of an export belongs to one subject; a file that does not is a
  `PATIENT_ID_MISMATCH` reject, named by hash only.
* Speed: pixel data is never read, and reading stops at the first element after the last wanted
  tag (for RTSTRUCT: at ROIContourSequence, so ContourData is never parsed). Headers are parsed
  by a small little-endian parser that decodes only the wanted tags (pydicom is the fallback for
  other encodings); `workers` > 1 spreads reading over processes.
* Incremental: rows whose (path, size_bytes, mtime_ns) match the previous run are reused without
  reading the file. Duplicate-UID rejects are recomputed every run (they depend on other files),
  and so are I/O failures ("unreadable file: ...", e.g. permissions), which may be transient.
* Files and folders whose name starts with "." (hidden, partial uploads) are ignored.
* Folders as users arrange them (`_walk`): folders reached through symbolic links are followed, each
  real folder once (a link loop or a second link to a walked folder is a reject row, not a hang or
  duplicates); a file or folder name that is not valid UTF-8, a zero-byte file and a broken link are
  reject rows with their own reasons. These rejects come from the listing and are recomputed each run.
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing as mp
import os
import struct
import time
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag, Tag

log = logging.getLogger(__name__)

FILES_SCHEMA: dict[str, pl.DataType] = {
    "path": pl.String(),
    "trial": pl.String(),
    "export": pl.String(),
    "size_bytes": pl.Int64(),
    "mtime_ns": pl.Int64(),
    "patient_id": pl.String(),  # the trial subject ID (rule 17), never the raw DICOM PatientID
    "patient_id_hash": pl.String(),  # salted hash of the file's PatientID, for the consistency check
    "study_instance_uid": pl.String(),
    "series_instance_uid": pl.String(),
    "sop_instance_uid": pl.String(),
    "sop_class_uid": pl.String(),
    "modality": pl.String(),
    "transfer_syntax_uid": pl.String(),
    "study_date": pl.Date(),
    "series_date": pl.Date(),
    "content_date": pl.Date(),
    "frame_of_reference_uid": pl.String(),
    "referenced_frame_of_reference_uids": pl.List(pl.String()),
    "referenced_series_uids": pl.List(pl.String()),
    "referenced_sop_instance_uids": pl.List(pl.String()),
    "instance_number": pl.Int64(),
    "image_position_patient": pl.List(pl.Float64()),
    "image_orientation_patient": pl.List(pl.Float64()),
    "rows": pl.Int64(),
    "columns": pl.Int64(),
    "pixel_spacing": pl.List(pl.Float64()),
    "slice_thickness": pl.Float64(),
    "number_of_frames": pl.Int64(),
    "structure_names": pl.List(pl.String()),
    "series_description": pl.String(),
    "dose_units": pl.String(),
    "dose_summation_type": pl.String(),
}

REJECTS_SCHEMA: dict[str, pl.DataType] = {
    "path": pl.String(),
    "trial": pl.String(),
    "size_bytes": pl.Int64(),
    "mtime_ns": pl.Int64(),
    "reason": pl.String(),
    "rejected_at": pl.Datetime("us", "UTC"),
}

DUPLICATE_REASON_PREFIX = "duplicate SOPInstanceUID of "
# Rule 17 rejects: recomputed every run (they depend on the other files of the export and the mapping).
MISMATCH_CODE = "PATIENT_ID_MISMATCH"  # the file's PatientID differs from its export's subject
UNMAPPED_CODE = "PATIENT_ID_UNMAPPED"  # subject_key mapping: the PatientID is not in the mapping file
NO_EXPORT_CODE = "NO_EXPORT_FOLDER"  # subject_key folder: the file lies directly in the trial folder
SUBJECT_CODES = (MISMATCH_CODE, UNMAPPED_CODE, NO_EXPORT_CODE)
SALT_FILE = ".rtmap_subject_salt"
IO_REASON_PREFIX = "unreadable file: "
EMPTY_REASON = "empty file (0 bytes): nothing to read (an export still being copied?)"
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"

# Top-level tags read from each file. Nothing else is parsed (privacy and speed).
_TAG_NAMES = (
    (0x0008, 0x0016, "SOPClassUID"),
    (0x0008, 0x0018, "SOPInstanceUID"),
    (0x0008, 0x0020, "StudyDate"),
    (0x0008, 0x0021, "SeriesDate"),
    (0x0008, 0x0023, "ContentDate"),
    (0x0008, 0x0060, "Modality"),
    (0x0008, 0x103E, "SeriesDescription"),
    (0x0010, 0x0020, "PatientID"),
    (0x0018, 0x0050, "SliceThickness"),
    (0x0020, 0x000D, "StudyInstanceUID"),
    (0x0020, 0x000E, "SeriesInstanceUID"),
    (0x0020, 0x0013, "InstanceNumber"),
    (0x0020, 0x0032, "ImagePositionPatient"),
    (0x0020, 0x0037, "ImageOrientationPatient"),
    (0x0020, 0x0052, "FrameOfReferenceUID"),
    (0x0028, 0x0008, "NumberOfFrames"),
    (0x0028, 0x0010, "Rows"),
    (0x0028, 0x0011, "Columns"),
    (0x0028, 0x0030, "PixelSpacing"),
    (0x3004, 0x0002, "DoseUnits"),
    (0x3004, 0x000A, "DoseSummationType"),
    (0x3006, 0x0010, "ReferencedFrameOfReferenceSequence"),
    (0x3006, 0x0020, "StructureSetROISequence"),
    (0x300C, 0x0002, "ReferencedRTPlanSequence"),
    (0x300C, 0x0060, "ReferencedStructureSetSequence"),
)
_TAGS: list[BaseTag] = [Tag(g, e) for g, e, _ in _TAG_NAMES]
_LAST_TAG = max(_TAGS)
_ROI_CONTOUR_SEQUENCE = Tag(0x3006, 0x0039)
_PIXEL_DATA_TAGS = {Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009), Tag(0x7FE0, 0x0010)}

_CHUNK = 256


class RejectedFile(Exception):
    """The file cannot enter `dicom_files`; the message is the reject reason."""


class CatalogResult(NamedTuple):
    """Named fields; also unpacks like a tuple (files first)."""

    files: pl.DataFrame  # dicom_files, FILES_SCHEMA, sorted by path
    rejects: pl.DataFrame  # dicom_rejects, REJECTS_SCHEMA, sorted by path
    n_read: int  # files whose header was read in this run
    n_reused: int  # files whose previous row (file or reject) was reused unread
    n_removed: int  # paths known to the previous run that no longer exist
    elapsed_s: float = 0.0


def empty_files() -> pl.DataFrame:
    return pl.DataFrame(schema=FILES_SCHEMA)


def empty_rejects() -> pl.DataFrame:
    return pl.DataFrame(schema=REJECTS_SCHEMA)


def resolve_path(raw_root: str | Path, path: str) -> Path:
    """Absolute file path of a catalog `path` (which is relative to the raw root)."""
    return Path(raw_root) / path


# ----------------------------------------------------------------------------------------------
# Reading one header
# ----------------------------------------------------------------------------------------------


def _text(v: Any) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def _date(v: Any) -> dt.date | None:
    s = _text(v)
    if s is None:
        return None
    s = s.replace(".", "")  # ACR-NEMA style YYYY.MM.DD
    if len(s) < 8 or not s[:8].isdigit():
        return None
    try:
        return dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))
    except ValueError:
        return None


def _int(v: Any) -> int | None:
    if v is None or v == "":
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _float(v: Any) -> float | None:
    if v is None or v == "":
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _floats(v: Any) -> list[float] | None:
    if v is None or v == "":
        return None
    if isinstance(v, (str, bytes, int, float)):
        v = [v]
    try:
        return [float(x) for x in v]
    except (TypeError, ValueError):
        return None


def _uniq(items: Iterable[str | None]) -> list[str]:
    out: list[str] = []
    for s in items:
        if s and s not in out:
            out.append(s)
    return out


def _seq(ds: Dataset, keyword: str) -> list[Dataset]:
    v = ds.get(keyword)
    return list(v) if v is not None else []


def _rt_references(ds: Dataset) -> tuple[list[str], list[str], list[str], list[str]]:
    """(referenced FoR UIDs, referenced series UIDs, referenced SOP UIDs, ROI names)."""
    fors: list[str | None] = []
    series: list[str | None] = []
    for ref_for in _seq(ds, "ReferencedFrameOfReferenceSequence"):
        fors.append(_text(ref_for.get("FrameOfReferenceUID")))
        for study in _seq(ref_for, "RTReferencedStudySequence"):
            for ser in _seq(study, "RTReferencedSeriesSequence"):
                series.append(_text(ser.get("SeriesInstanceUID")))
    names: list[str] = []
    for roi in _seq(ds, "StructureSetROISequence"):
        name = _text(roi.get("ROIName"))
        if name is not None:
            names.append(name)
        fors.append(_text(roi.get("ReferencedFrameOfReferenceUID")))
    sops: list[str | None] = []
    for kw in ("ReferencedRTPlanSequence", "ReferencedStructureSetSequence"):
        for item in _seq(ds, kw):
            sops.append(_text(item.get("ReferencedSOPInstanceUID")))
    return _uniq(fors), _uniq(series), _uniq(sops), names


def read_header(path: str | Path) -> dict[str, Any]:
    """Header facts of one DICOM file (FILES_SCHEMA columns minus path/trial/export/size/mtime).

    Fast path: a small explicit/implicit little-endian parser that decodes only the wanted tags
    from the first 64 kB (the whole header region up to the stop tag when that is larger). Anything
    it does not handle (big endian, deflate, odd encodings) goes through pydicom
    (`read_header_pydicom`), which gives the same row. Raises `RejectedFile` with the reason.
    """
    with open(path, "rb") as fp:
        size = os.fstat(fp.fileno()).st_size
        buf = fp.read(_FIRST_READ)
        if len(buf) < 132 or buf[128:132] != b"DICM":
            raise RejectedFile("not a DICOM file (no DICM preamble)")
        try:
            try:
                parsed = _fast_parse(buf, size)
            except _NeedMore:
                fp.seek(0)
                parsed = _fast_parse(fp.read(), size)
        except _Unsupported:
            return read_header_pydicom(path)
    if parsed.media_class == DICOMDIR_CLASS:
        raise RejectedFile("DICOMDIR index file, not a DICOM object")
    return _row_from_parsed(parsed)


def read_header_pydicom(path: str | Path) -> dict[str, Any]:
    """Same row as `read_header`, through pydicom's reader (`read_partial` with `specific_tags`).

    The fallback for encodings the fast parser leaves alone, and the benchmark's baseline.
    """
    path = Path(path)
    size = path.stat().st_size
    state: dict[str, Any] = {}
    with open(path, "rb") as fp:
        head = fp.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            raise RejectedFile("not a DICOM file (no DICM preamble)")
        fp.seek(0)

        def stop(tag: BaseTag, vr: str | None, length: int) -> bool:
            if tag == _ROI_CONTOUR_SEQUENCE or tag > _LAST_TAG:
                # Positioned at the value: a pixel element must fit in the file, else the
                # export is still being written (or was cut).
                if tag in _PIXEL_DATA_TAGS and length != _UNDEFINED and fp.tell() + length > size:
                    state["truncated"] = (length, size - fp.tell())
                return True
            return False

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                ds = read_partial(fp, stop_when=stop, defer_size=None, force=False,
                                  specific_tags=list(_TAGS))
            except Exception as exc:  # pydicom raises many types on corrupt input
                raise RejectedFile(f"unreadable DICOM: {type(exc).__name__}: {exc}") from None
        eof = [w for w in caught if "End of file" in str(w.message) or "EOF" in str(w.message)]
        if eof:
            raise RejectedFile(f"unreadable DICOM: truncated header ({eof[0].message})")
        if fp.tell() > size:
            raise RejectedFile("unreadable DICOM: truncated file (an element runs past the end)")
    if "truncated" in state:
        need, have = state["truncated"]
        raise RejectedFile(_truncated_pixels(need, have))

    meta = ds.file_meta
    if _text(meta.get("MediaStorageSOPClassUID")) == DICOMDIR_CLASS:
        raise RejectedFile("DICOMDIR index file, not a DICOM object")
    try:
        return _row_from_dataset(ds, _text(meta.get("TransferSyntaxUID")))
    except RejectedFile:
        raise
    except Exception as exc:  # malformed values (bad VR contents, broken sequences)
        raise RejectedFile(f"unreadable DICOM: {type(exc).__name__}: {exc}") from None


def _truncated_pixels(need: int, have: int) -> str:
    return f"unreadable DICOM: truncated pixel data ({max(have, 0)} of {need} bytes present)"


def _row_from_dataset(ds: Dataset, transfer_syntax: str | None) -> dict[str, Any]:
    sop = _text(ds.get("SOPInstanceUID"))
    if sop is None:
        raise RejectedFile("missing SOPInstanceUID")
    patient_id = _text(ds.get("PatientID"))
    if patient_id is None:
        raise RejectedFile("missing PatientID")
    modality = _text(ds.get("Modality"))
    fors, series, sops, names = _rt_references(ds)
    return _row(
        patient_id=patient_id,
        study_instance_uid=_text(ds.get("StudyInstanceUID")),
        series_instance_uid=_text(ds.get("SeriesInstanceUID")),
        sop_instance_uid=sop,
        sop_class_uid=_text(ds.get("SOPClassUID")),
        modality=modality,
        transfer_syntax_uid=transfer_syntax,
        study_date=_date(ds.get("StudyDate")),
        series_date=_date(ds.get("SeriesDate")),
        content_date=_date(ds.get("ContentDate")),
        frame_of_reference_uid=_text(ds.get("FrameOfReferenceUID")),
        fors=fors, series=series, sops=sops, names=names,
        instance_number=_int(ds.get("InstanceNumber")),
        image_position_patient=_floats(ds.get("ImagePositionPatient")),
        image_orientation_patient=_floats(ds.get("ImageOrientationPatient")),
        rows=_int(ds.get("Rows")),
        columns=_int(ds.get("Columns")),
        pixel_spacing=_floats(ds.get("PixelSpacing")),
        slice_thickness=_float(ds.get("SliceThickness")),
        number_of_frames=_int(ds.get("NumberOfFrames")),
        series_description=_text(ds.get("SeriesDescription")),
        dose_units=_text(ds.get("DoseUnits")),
        dose_summation_type=_text(ds.get("DoseSummationType")),
    )


def _row(*, fors: list[str], series: list[str], sops: list[str], names: list[str],
         **cols: Any) -> dict[str, Any]:
    cols["referenced_frame_of_reference_uids"] = fors
    cols["referenced_series_uids"] = series
    cols["referenced_sop_instance_uids"] = sops
    # ROI names only mean something on a structure set; null elsewhere.
    cols["structure_names"] = names if cols["modality"] == "RTSTRUCT" or names else None
    return {k: cols[k] for k in FILES_SCHEMA if k in cols}


# ----------------------------------------------------------------------------------------------
# Fast header parser (little endian, explicit or implicit VR)
# ----------------------------------------------------------------------------------------------

_FIRST_READ = 64 * 1024
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_STOP_TAGS_INT = (int(_ROI_CONTOUR_SEQUENCE),)
_LAST_INT = int(_LAST_TAG)
_PIXEL_INT = frozenset(int(t) for t in _PIXEL_DATA_TAGS)
_U16 = struct.Struct("<H").unpack_from
_U32 = struct.Struct("<I").unpack_from
_TAG = struct.Struct("<HH").unpack_from

_LEAF = None
# What to decode: tag -> None (a value) or a dict (a sequence; what to decode in its items).
_WANT: dict[int, Any] = {int(t): _LEAF for t in _TAGS}
_WANT[0x00080005] = _LEAF  # SpecificCharacterSet, to decode text
_WANT[0x30060010] = {  # ReferencedFrameOfReferenceSequence
    0x00200052: _LEAF,  # FrameOfReferenceUID
    0x30060012: {0x30060014: {0x0020000E: _LEAF}},  # RTReferencedStudy > RTReferencedSeries > UID
}
_WANT[0x30060020] = {0x30060026: _LEAF, 0x30060024: _LEAF}  # StructureSetROI: ROIName, ref FoR
_WANT[0x300C0002] = {0x00081155: _LEAF}  # ReferencedRTPlanSequence > ReferencedSOPInstanceUID
_WANT[0x300C0060] = {0x00081155: _LEAF}  # ReferencedStructureSetSequence > ReferencedSOPInstanceUID
_META_WANT = {0x00020002: _LEAF, 0x00020010: _LEAF}


class _NeedMore(Exception):
    """The first read was too short; parse the whole file."""


class _Unsupported(Exception):
    """An encoding the fast parser leaves to pydicom."""


@dataclass
class _Parsed:
    media_class: str | None
    transfer_syntax: str | None
    values: dict[int, Any]


class _Reader:
    """Walks data elements in a buffer; `complete` says whether the buffer is the whole file."""

    def __init__(self, buf: bytes, explicit: bool, complete: bool):
        self.buf = buf
        self.n = len(buf)
        self.explicit = explicit
        self.complete = complete
        self.stopped_at: tuple[int, int, int] | None = None  # (tag, length, value position)

    def _need(self, end: int) -> None:
        if end > self.n:
            if self.complete:
                raise RejectedFile("unreadable DICOM: truncated file (an element runs past the end)")
            raise _NeedMore

    def header(self, pos: int, explicit: bool) -> tuple[int, bytes | None, int, int]:
        self._need(pos + 8)
        g, e = _TAG(self.buf, pos)
        tag = (g << 16) | e
        if g == 0xFFFE or not explicit:
            return tag, None, _U32(self.buf, pos + 4)[0], pos + 8
        vr = self.buf[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            self._need(pos + 12)
            return tag, vr, _U32(self.buf, pos + 8)[0], pos + 12
        if not (b"AA" <= vr <= b"ZZ"):
            raise _Unsupported  # VR switch inside the data set: pydicom copes
        return tag, vr, _U16(self.buf, pos + 6)[0], pos + 8

    def elements(self, pos: int, end: int | None, want: dict[int, Any], *, top: bool = False,
                 explicit: bool | None = None) -> tuple[dict[int, Any], int]:
        explicit = self.explicit if explicit is None else explicit
        out: dict[int, Any] = {}
        while end is None or pos < end:
            if top and pos >= self.n:
                if self.complete:
                    break
                raise _NeedMore
            tag, vr, length, vpos = self.header(pos, explicit)
            if tag == _ITEM_END:
                return out, vpos
            if top and (tag > _LAST_INT or tag in _STOP_TAGS_INT):
                self.stopped_at = (tag, length, vpos)
                return out, pos
            sub = want.get(tag, 0)
            if length == _UNDEFINED:
                items, pos = self.items(vpos, None, sub if isinstance(sub, dict) else {})
                if isinstance(sub, dict):
                    out[tag] = items
                continue
            nxt = vpos + length
            if isinstance(sub, dict):
                self._need(nxt)
                out[tag], _ = self.items(vpos, nxt, sub)
            elif sub is _LEAF:
                self._need(nxt)
                out[tag] = self.buf[vpos:nxt]
            pos = nxt
        return out, pos

    def items(self, pos: int, end: int | None, want: dict[int, Any]) -> tuple[list[dict[int, Any]], int]:
        items: list[dict[int, Any]] = []
        while end is None or pos < end:
            tag, _, length, vpos = self.header(pos, False)
            if tag == _SEQ_END:
                return items, vpos
            if tag != _ITEM:
                raise _Unsupported  # not an item where one must be: let pydicom judge
            if length == _UNDEFINED:
                item, pos = self.elements(vpos, None, want)
            else:
                nxt = vpos + length
                if want:
                    self._need(nxt)
                    item, _ = self.elements(vpos, nxt, want)
                else:
                    item = {}
                pos = nxt
            items.append(item)
        return items, pos


def _fast_parse(buf: bytes, size: int) -> _Parsed:
    complete = len(buf) >= size
    meta_reader = _Reader(buf, True, complete)
    pos = 132
    meta: dict[int, Any] = {}
    while True:
        meta_reader._need(pos + 2)
        if _U16(buf, pos)[0] != 0x0002:
            break
        tag, _, length, vpos = meta_reader.header(pos, True)
        if tag in _META_WANT:
            meta_reader._need(vpos + length)
            meta[tag] = buf[vpos:vpos + length]
        pos = vpos + length
    ts = _uid(meta.get(0x00020010))
    if ts == _EXPLICIT_LE or (ts is not None and ts not in (_IMPLICIT_LE, _BIG_ENDIAN, _DEFLATED)):
        explicit = True  # every other (compressed) syntax is explicit VR little endian
    elif ts == _IMPLICIT_LE:
        explicit = False
    else:
        raise _Unsupported
    reader = _Reader(buf, explicit, complete)
    values, _ = reader.elements(pos, None, _WANT, top=True)
    if reader.stopped_at is not None:
        tag, length, vpos = reader.stopped_at
        if tag in _PIXEL_INT and length != _UNDEFINED and vpos + length > size:
            raise RejectedFile(_truncated_pixels(length, size - vpos))
    return _Parsed(_uid(meta.get(0x00020002)), ts, values)


def _uid(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    s = raw.rstrip(b"\0 ").decode("ascii", "replace").strip()
    return s or None


def _ascii(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    s = raw.rstrip(b"\0").decode("ascii", "replace").strip()
    return s or None


def _multi(raw: bytes | None) -> list[str] | None:
    s = _ascii(raw)
    return None if s is None else s.split("\\")


@lru_cache(maxsize=64)
def _encodings(charset: bytes | None) -> tuple[str, ...]:
    if not charset:
        return tuple(convert_encodings(None))
    terms = [t.strip() for t in charset.decode("ascii", "replace").split("\\")]
    return tuple(convert_encodings(terms if len(terms) > 1 else terms[0]))


def _decode_text(raw: bytes | None, encodings: tuple[str, ...]) -> str | None:
    if raw is None:
        return None
    s = decode_bytes(raw.rstrip(b"\0"), list(encodings), {0x5C}).strip()
    return s or None


def _row_from_parsed(p: _Parsed) -> dict[str, Any]:
    v = p.values
    enc = _encodings(v.get(0x00080005))
    sop = _uid(v.get(0x00080018))
    if sop is None:
        raise RejectedFile("missing SOPInstanceUID")
    patient_id = _decode_text(v.get(0x00100020), enc)
    if patient_id is None:
        raise RejectedFile("missing PatientID")
    fors: list[str | None] = []
    series: list[str | None] = []
    for ref_for in v.get(0x30060010, ()):
        fors.append(_uid(ref_for.get(0x00200052)))
        for study in ref_for.get(0x30060012, ()):
            for ser in study.get(0x30060014, ()):
                series.append(_uid(ser.get(0x0020000E)))
    names: list[str] = []
    for roi in v.get(0x30060020, ()):
        name = _decode_text(roi.get(0x30060026), enc)
        if name is not None:
            names.append(name)
        fors.append(_uid(roi.get(0x30060024)))
    sops = [_uid(item.get(0x00081155)) for t in (0x300C0002, 0x300C0060) for item in v.get(t, ())]
    explicit_us = v.get(0x00280010), v.get(0x00280011)
    rows, cols = (_U16(b)[0] if b is not None and len(b) >= 2 else None for b in explicit_us)
    modality = _ascii(v.get(0x00080060))
    return _row(
        patient_id=patient_id,
        study_instance_uid=_uid(v.get(0x0020000D)),
        series_instance_uid=_uid(v.get(0x0020000E)),
        sop_instance_uid=sop,
        sop_class_uid=_uid(v.get(0x00080016)),
        modality=modality,
        transfer_syntax_uid=p.transfer_syntax,
        study_date=_date(_ascii(v.get(0x00080020))),
        series_date=_date(_ascii(v.get(0x00080021))),
        content_date=_date(_ascii(v.get(0x00080023))),
        frame_of_reference_uid=_uid(v.get(0x00200052)),
        fors=_uniq(fors), series=_uniq(series), sops=_uniq(sops), names=names,
        instance_number=_int(_ascii(v.get(0x00200013))),
        image_position_patient=_floats(_multi(v.get(0x00200032))),
        image_orientation_patient=_floats(_multi(v.get(0x00200037))),
        rows=rows,
        columns=cols,
        pixel_spacing=_floats(_multi(v.get(0x00280030))),
        slice_thickness=_float(_ascii(v.get(0x00180050))),
        number_of_frames=_int(_ascii(v.get(0x00280008))),
        series_description=_decode_text(v.get(0x0008103E), enc),
        dose_units=_ascii(v.get(0x30040002)),
        dose_summation_type=_ascii(v.get(0x3004000A)),
    )


def _read_many(paths: list[str]) -> list[tuple[str, dict[str, Any] | None, str | None]]:
    """(path, header row or None, reject reason or None) for each path; runs in workers too."""
    out: list[tuple[str, dict[str, Any] | None, str | None]] = []
    for p in paths:
        try:
            out.append((p, read_header(p), None))
        except RejectedFile as exc:
            out.append((p, None, str(exc)))
        except OSError as exc:  # vanished or unreadable between listing and reading
            out.append((p, None, f"{IO_REASON_PREFIX}{exc.strerror or exc}"))
    return out


# ----------------------------------------------------------------------------------------------
# Walking a folder, incrementally
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Listed:
    rel: str  # relative to the raw root
    abs: str
    size: int
    mtime_ns: int
    reject: str | None = None  # reason when the listing itself rules the entry out (never read)


EMPTY_FILE_REASON = EMPTY_REASON  # one wording for a zero-byte file, wherever it is met
NON_UTF8_REASON = "name is not valid UTF-8 ({what}); rename it so paths can be stored (bytes shown escaped)"
SYMLINK_LOOP_REASON = "symbolic link loop: folder points back to its ancestor {target}; not followed"
SYMLINK_SEEN_REASON = "folder already catalogued as {target} (reached again through a symbolic link); not read twice"
BROKEN_LINK_REASON = "broken symbolic link (its target does not exist)"


def _printable(path: str) -> str:
    """A path with undecodable bytes (surrogate escapes from os.scandir) shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _walk(trial_dir: Path, raw_root: Path) -> Iterator[_Listed]:
    """Every non-hidden file under `trial_dir`, and a reject entry for what cannot be catalogued.

    Folders reached through symbolic links are followed (users link patient folders into a trial
    folder). Each real folder is walked once, by its (device, inode): a link back to one of its own
    ancestors is a loop and becomes a reject entry instead of a hang, and a second way into an
    already walked folder becomes a reject entry instead of duplicate rows. Names that are not
    valid UTF-8, zero-byte files and broken links are reject entries too, so one odd file never
    stops the catalog.
    """
    prefix_len = len(str(raw_root)) + 1
    root_st = os.stat(trial_dir)
    root_key = (root_st.st_dev, root_st.st_ino)
    walked: dict[tuple[int, int], str] = {root_key: str(trial_dir)}
    stack: list[tuple[str, tuple[tuple[int, int], ...]]] = [(str(trial_dir), (root_key,))]
    # Linked folders wait until every real folder is walked, so a folder is named by its real path
    # whatever order the listing comes in (a link into it is then the reject).
    links: list[tuple[str, tuple[tuple[int, int], ...], os.stat_result]] = []

    def reject(path: str, reason: str, st: os.stat_result | None) -> _Listed:
        return _Listed(_printable(path[prefix_len:].replace(os.sep, "/")), path,
                       st.st_size if st else 0, st.st_mtime_ns if st else 0, reason)

    while stack or links:
        if not stack:
            path, ancestors, lst = links.pop(0)
            key = ancestors[-1]
            if key in walked:
                yield reject(path, SYMLINK_SEEN_REASON.format(target=_printable(walked[key][prefix_len:])), lst)
                continue
            walked[key] = path
            stack.append((path, ancestors))
        d, ancestors = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list %s: %s", _printable(d), exc)
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                lst = e.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished between listing and stat
            try:
                e.name.encode("utf-8")
            except UnicodeEncodeError:
                what = "folder: its files are not read" if e.is_dir() else "file"
                yield reject(e.path, NON_UTF8_REASON.format(what=what), lst)
                continue
            try:
                is_dir = e.is_dir()  # follows links
                st = e.stat() if (is_dir or e.is_file()) else None
            except OSError:
                is_dir, st = False, None
            if e.is_symlink() and st is None:
                yield reject(e.path, BROKEN_LINK_REASON, lst)
                continue
            if is_dir:
                assert st is not None
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    yield reject(e.path, SYMLINK_LOOP_REASON.format(target=_printable(walked[key][prefix_len:])), lst)
                elif e.is_symlink():
                    links.append((e.path, (*ancestors, key), lst))
                else:
                    walked[key] = e.path
                    stack.append((e.path, (*ancestors, key)))
            elif st is not None:
                rel = e.path[prefix_len:].replace(os.sep, "/")
                if st.st_size == 0:
                    yield reject(e.path, EMPTY_FILE_REASON, st)
                else:
                    yield _Listed(rel, e.path, st.st_size, st.st_mtime_ns)


def _export_of(rel: str) -> str | None:
    parts = rel.split("/")
    return parts[1] if len(parts) > 2 else None


def _usable_previous(df: pl.DataFrame | None, schema: dict[str, pl.DataType], trial: str,
                     what: str) -> pl.DataFrame | None:
    """Previous table if its schema is the current one, else None (everything is re-read)."""
    if df is None or df.is_empty():
        return None
    if dict(df.schema) != schema:
        log.warning("previous %s has another schema; re-reading every file", what)
        return None
    return df.filter(pl.col("trial") == trial)


def _read_all(paths: list[str], workers: int) -> list[tuple[str, dict[str, Any] | None, str | None]]:
    if not paths:
        return []
    if workers <= 1 or len(paths) < 64:
        return _read_many(paths)
    # A few chunks per worker: balanced, yet few enough that pickling rows stays cheap.
    size = min(_CHUNK, -(-len(paths) // (4 * workers)))
    chunks = [paths[i:i + size] for i in range(0, len(paths), size)]
    out: list[tuple[str, dict[str, Any] | None, str | None]] = []
    # fork: workers start in milliseconds (forkserver/spawn re-import the caller's main module and
    # the libraries, seconds per worker). The workers only parse bytes: they never touch polars,
    # logging or other state that a fork could copy in a locked state.
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as pool:
        for part in pool.map(_read_many, chunks):
            out.extend(part)
    return out


def subject_salt(data_dir: str | Path) -> bytes:
    """This deployment's secret salt for PatientID hashes (created once, mode 0600, outside the lake)."""
    path = Path(data_dir) / SALT_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(16).hex().encode())
    return path.read_bytes().strip()


def hash_patient_id(raw: str, salt: bytes) -> str:
    """Short salted hash of a raw PatientID: names it in messages without revealing it."""
    import hashlib

    return hashlib.blake2b(raw.strip().encode(), key=salt[:64], digest_size=6).hexdigest()


def read_subject_mapping(path: str | Path, salt: bytes) -> dict[str, str]:
    """Hashed PatientID → subject ID from a CSV with columns patient_id, subject_id."""
    df = pl.read_csv(path, schema_overrides={"patient_id": pl.String, "subject_id": pl.String})
    missing = {"patient_id", "subject_id"} - set(df.columns)
    if missing:
        raise ValueError(f"subject mapping {path}: missing column(s) {sorted(missing)}")
    return {hash_patient_id(r, salt): s for r, s in zip(df["patient_id"], df["subject_id"]) if r and s}


def assign_subjects(files: pl.DataFrame, subject_key: Any = None,
                    mapping: dict[str, str] | None = None) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Set `patient_id` to the trial subject ID; files that cannot belong to it become rejects.

    folder (default): subject = export folder; the export's PatientID is its most frequent hash, other
    files are PATIENT_ID_MISMATCH. mapping: subject = mapping[hash]; unknown → PATIENT_ID_UNMAPPED; in
    an export mapping to several subjects the minority files are PATIENT_ID_MISMATCH.
    Returns (files, reject rows as {path, reason}).
    """
    source = getattr(subject_key, "source", "folder")
    if source == "mapping":
        mapping = mapping or {}
        files = files.with_columns(pl.col("patient_id_hash").replace_strict(mapping, default=None)
                                   .alias("patient_id"))
        bad = files.filter(pl.col("patient_id").is_null())
        rejects = [{"path": p, "reason": f"{UNMAPPED_CODE}: PatientID #{h} is not in the subject mapping file"}
                   for p, h in zip(bad["path"], bad["patient_id_hash"])]
        key = "patient_id"
    else:
        files = files.with_columns(pl.col("export").alias("patient_id"))
        bad = files.filter(pl.col("export").is_null())
        rejects = [{"path": p, "reason": f"{NO_EXPORT_CODE}: file lies directly in the trial folder, so it has "
                    "no export folder to name its subject"} for p in bad["path"]]
        key = "patient_id_hash"
    files = files.filter(pl.col("patient_id").is_not_null())
    # Each export belongs to one subject: its most frequent value of `key` (ties: the smallest).
    counts = files.group_by("export", key).len().sort(["export", "len", key], descending=[False, True, False])
    major = counts.group_by("export", maintain_order=True).first().select("export", pl.col(key).alias("_major"))
    files = files.join(major, on="export", how="left", nulls_equal=True)
    odd = files.filter(pl.col(key) != pl.col("_major"))
    for row in odd.iter_rows(named=True):
        if source == "mapping":
            what = f"maps to subject {row['patient_id']}, the rest of export {row['export']} to {row['_major']}"
        else:
            what = f"PatientID #{row['patient_id_hash']} differs from the rest of export {row['export']} (#{row['_major']})"
        rejects.append({"path": row["path"], "reason": f"{MISMATCH_CODE}: {what}"})
    return files.filter(pl.col(key) == pl.col("_major")).drop("_major"), rejects


def subject_issues(rejects: pl.DataFrame) -> list[dict[str, Any]]:
    """pipeline_issues rows (stage manifest) for rule-17 rejects, one per subject and code."""
    if rejects.is_empty():
        return []
    rows = rejects.filter(pl.col("reason").str.contains(f"^({'|'.join(SUBJECT_CODES)}):"))
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path, reason in zip(rows["path"], rows["reason"]):
        subject = _export_of(path)
        code, msg = reason.split(": ", 1)
        if subject is None:
            continue
        entry = out.setdefault((subject, code), {"patient_id": subject, "code": code, "message": msg,
                                                 "file": path, "n": 0})
        entry["n"] += 1
    return [{**{k: v for k, v in e.items() if k != "n"},
             "message": e["message"] + (f" (and {e['n'] - 1} more file(s))" if e["n"] > 1 else "")}
            for e in out.values()]


def catalog_folder(raw_trial_dir: str | Path, previous_files: pl.DataFrame | None = None,
                   previous_rejects: pl.DataFrame | None = None, *,
                   workers: int = 1, subject_key: Any = None, salt: bytes | None = None) -> CatalogResult:
    """Catalog `data/raw/<trial>/` (trial = the folder name), reusing unchanged previous rows.

    `workers` > 1 reads headers in that many forked processes. Opt-in: on the shared 2-core
    machine one process already does 2,500-10,000 files/s and 2 workers gained between -35 % and
    +20 % (benchmarks/catalog_benchmark.py); a pool pays on many-core machines with huge folders.

    `subject_key` (`config.SubjectKey`, default: the export folder) says where `patient_id` comes
    from; `salt` keys the PatientID hashes (default: `subject_salt(<data dir>)`, the raw root's parent).
    """
    t0 = time.perf_counter()
    # abspath, not resolve(): a symlinked trial folder keeps its own name as the trial.
    trial_dir = Path(os.path.abspath(raw_trial_dir))
    raw_root = trial_dir.parent
    trial = trial_dir.name
    now = dt.datetime.now(dt.timezone.utc)

    walk = list(_walk(trial_dir, raw_root)) if trial_dir.is_dir() else []
    listed = {f.rel: f for f in walk if f.reject is None}
    walk_rejects = [f for f in walk if f.reject is not None]  # decided by the listing, recomputed every run
    if not trial_dir.is_dir():
        log.warning("raw trial folder %s does not exist; empty catalog", trial_dir)

    prev_files = _usable_previous(previous_files, FILES_SCHEMA, trial, "dicom_files")
    prev_rejects = _usable_previous(previous_rejects, REJECTS_SCHEMA, trial, "dicom_rejects")

    known: set[str] = set()
    reused_files: list[pl.DataFrame] = []
    reused_rejects: list[pl.DataFrame] = []
    reused_paths: set[str] = set()
    current = pl.DataFrame(
        {"path": list(listed), "size_bytes": [f.size for f in listed.values()],
         "mtime_ns": [f.mtime_ns for f in listed.values()]},
        schema={"path": pl.String(), "size_bytes": pl.Int64(), "mtime_ns": pl.Int64()},
    )
    if prev_files is not None:
        known.update(prev_files["path"].to_list())
        same = prev_files.join(current, on=["path", "size_bytes", "mtime_ns"], how="semi")
        reused_files.append(same)
        reused_paths.update(same["path"].to_list())
    if prev_rejects is not None:
        known.update(prev_rejects["path"].to_list())
        # Duplicate and subject rejects depend on other files, I/O failures may be transient: re-read.
        stable = prev_rejects.filter(~pl.col("reason").str.starts_with(DUPLICATE_REASON_PREFIX),
                                     ~pl.col("reason").str.starts_with(IO_REASON_PREFIX),
                                     ~pl.col("reason").str.contains(f"^({'|'.join(SUBJECT_CODES)}):"))
        same = stable.join(current, on=["path", "size_bytes", "mtime_ns"], how="semi")
        reused_rejects.append(same)
        reused_paths.update(same["path"].to_list())

    to_read = sorted(p for p in listed if p not in reused_paths and listed[p].size > 0)
    results = _read_all([listed[p].abs for p in to_read], workers)
    # A zero-byte file is its own reject reason (often a copy still in progress), not "not DICOM".
    empty = sorted(p for p in listed if p not in reused_paths and listed[p].size == 0)
    to_read += empty
    results += [(listed[p].abs, None, EMPTY_REASON) for p in empty]

    salt = salt if salt is not None else subject_salt(raw_root.parent)
    new_rows: list[dict[str, Any]] = []
    new_rejects: list[dict[str, Any]] = []
    for rel, (_, row, reason) in zip(to_read, results):
        f = listed[rel]
        base = {"path": rel, "trial": trial, "size_bytes": f.size, "mtime_ns": f.mtime_ns}
        if row is None:
            new_rejects.append({**base, "reason": reason, "rejected_at": now})
        else:
            # rule 17: the raw PatientID goes no further than this line; the subject is set below
            raw_id = row.pop("patient_id")
            if raw_id.strip() and raw_id.strip() in (row.get("series_description") or ""):  # free text
                row["series_description"] = row["series_description"].replace(raw_id.strip(), "[PatientID]")
            new_rows.append({**base, "export": _export_of(rel), **row,
                             "patient_id": None, "patient_id_hash": hash_patient_id(raw_id, salt)})

    files = pl.concat(
        [*reused_files, pl.DataFrame(new_rows, schema=FILES_SCHEMA)], how="vertical"
    ).select(list(FILES_SCHEMA)).sort("path")
    mapping = (read_subject_mapping(subject_key.mapping_file, salt)
               if getattr(subject_key, "source", "folder") == "mapping" else None)
    files, subject_rejects = assign_subjects(files, subject_key, mapping)
    by_path = {f: listed[f] for f in (r["path"] for r in subject_rejects)}
    new_rejects += [{"path": r["path"], "trial": trial, "size_bytes": by_path[r["path"]].size,
                     "mtime_ns": by_path[r["path"]].mtime_ns, "reason": r["reason"], "rejected_at": now}
                    for r in subject_rejects]
    files = files.select(list(FILES_SCHEMA)).sort("path")
    files, dup_rejects = _split_duplicates(files, now)
    new_rejects.extend({"path": f.rel, "trial": trial, "size_bytes": f.size, "mtime_ns": f.mtime_ns,
                        "reason": f.reject, "rejected_at": now} for f in walk_rejects)
    rejects = pl.concat(
        [*reused_rejects, pl.DataFrame(new_rejects, schema=REJECTS_SCHEMA), dup_rejects],
        how="vertical",
    ).sort("path")

    n_removed = len(known - set(listed) - {f.rel for f in walk_rejects})
    elapsed = time.perf_counter() - t0
    log.info("catalog %s: %d files, %d rejects; read %d, reused %d, removed %d in %.2f s",
             trial, files.height, rejects.height, len(to_read), len(reused_paths), n_removed, elapsed)
    return CatalogResult(files, rejects, len(to_read), len(reused_paths), n_removed, elapsed)


def _split_duplicates(files: pl.DataFrame, now: dt.datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Keep the lexicographically first path of each SOPInstanceUID; the others become rejects."""
    files = files.with_columns(
        pl.col("path").first().over("sop_instance_uid", order_by="path").alias("_kept")
    )
    dups = files.filter(pl.col("path") != pl.col("_kept"))
    rejects = dups.select(
        "path", "trial", "size_bytes", "mtime_ns",
        (pl.lit(DUPLICATE_REASON_PREFIX) + pl.col("_kept")).alias("reason"),
        pl.lit(now, dtype=pl.Datetime("us", "UTC")).alias("rejected_at"),
    )
    return files.filter(pl.col("path") == pl.col("_kept")).drop("_kept"), rejects
