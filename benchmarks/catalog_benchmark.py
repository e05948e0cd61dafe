"""Catalog throughput: cold scan, incremental scan with nothing changed, and (--baseline) the
pydicom reading paths on the same files.

    .venv/bin/python benchmarks/catalog_benchmark.py --n 3000 --baseline
    .venv/bin/python benchmarks/catalog_benchmark.py --trial-dir data/raw/SYNTH-HN   # existing folder

Without --trial-dir it writes a synthetic folder of about N files under a temporary directory:
patients with a planning CT and a relapse CT series (128x128 slices), a planning RTSTRUCT with
contours on every slice, a relapse RTSTRUCT and an RTDOSE. The file cache is warm for every
pass (the folder was just written, or is read once first), so the numbers measure parsing, not
the disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtmap_assets.dicom.catalog import catalog_folder, read_header, read_header_pydicom  # noqa: E402

SLICES = 60
CT, RS, RD = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.481.3", "1.2.840.10008.5.1.4.1.1.481.2"


def _ds(sop_class: str, modality: str, pid: str, study: str, series: str, date: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.Modality, ds.PatientID, ds.PatientName = modality, pid, "Anon^Bench"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.InstitutionName, ds.Manufacturer = "Bench Hospital", "Bench"
    return ds


def _series(folder: Path, pid: str, date: str, study: str, for_uid: str) -> tuple[str, list[str]]:
    series, sops = generate_uid(), []
    pixels = np.zeros((128, 128), np.int16).tobytes()
    for i in range(SLICES):
        ds = _ds(CT, "CT", pid, study, series, date)
        ds.FrameOfReferenceUID = for_uid
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-128.0, -128.0, 2.5 * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [2.0, 2.0], 2.5
        ds.Rows = ds.Columns = 128
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 1
        ds.PixelData = pixels
        ds.save_as(folder / f"{generate_uid()[-12:]}.dcm", write_like_original=False)
        sops.append(ds.SOPInstanceUID)
    return series, sops


def _rtstruct(path: Path, pid: str, date: str, study: str, for_uid: str, series: str, sops: list[str],
              names: list[str]) -> str:
    ds = _ds(RS, "RTSTRUCT", pid, study, generate_uid(), date)
    ser = Dataset()
    ser.SeriesInstanceUID = series
    ser.ContourImageSequence = Sequence([Dataset() for _ in sops])
    for item, sop in zip(ser.ContourImageSequence, sops):
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CT, sop
    st = Dataset()
    st.RTReferencedSeriesSequence = Sequence([ser])
    ref = Dataset()
    ref.FrameOfReferenceUID = for_uid
    ref.RTReferencedStudySequence = Sequence([st])
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref])
    rois, contours = [], []
    ang = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    rings = [_ring(ang, k) for k in range(SLICES)]
    for n, name in enumerate(names, 1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = n, name, for_uid
        rois.append(roi)
        rc = Dataset()
        rc.ReferencedROINumber = n
        items = []
        for k in range(SLICES):
            c = Dataset()
            c.ContourGeometricType, c.NumberOfContourPoints = "CLOSED_PLANAR", 64
            c.add_new(0x30060050, "DS", rings[k])  # ContourData, preformatted
            items.append(c)
        rc.ContourSequence = Sequence(items)
        contours.append(rc)
    ds.StructureSetROISequence, ds.ROIContourSequence = Sequence(rois), Sequence(contours)
    ds.save_as(path, write_like_original=False)
    return ds.SOPInstanceUID


def _ring(ang: np.ndarray, k: int) -> str:
    pts = np.stack([30 * np.cos(ang), 30 * np.sin(ang), np.full(ang.size, 2.5 * k)], 1).ravel()
    return "\\".join(f"{v:.2f}" for v in pts)


def make_folder(root: Path, n_files: int) -> Path:
    trial = root / "BENCH"
    per_patient = 2 * SLICES + 3
    for p in range(max(1, round(n_files / per_patient))):
        pid = f"B{p:04d}"
        exp = trial / f"export-{pid}"
        exp.mkdir(parents=True)
        plan_study, plan_for, rel_study, rel_for = (generate_uid() for _ in range(4))
        series, sops = _series(exp, pid, "20200101", plan_study, plan_for)
        rs = _rtstruct(exp / "rs_plan.dcm", pid, "20200101", plan_study, plan_for, series, sops,
                       ["BODY", "CTV_65", "CTV_54", "SpinalCord", "Parotid_L", "Parotid_R"])
        dose = _ds(RD, "RTDOSE", pid, plan_study, generate_uid(), "20200101")
        dose.FrameOfReferenceUID, dose.NumberOfFrames, dose.Rows, dose.Columns = plan_for, SLICES, 64, 64
        dose.DoseUnits, dose.DoseSummationType = "GY", "PLAN"
        dose.BitsAllocated = dose.BitsStored = 32
        dose.HighBit, dose.PixelRepresentation = 31, 0
        dose.ReferencedStructureSetSequence = Sequence([Dataset()])
        dose.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID = rs
        dose.PixelData = np.zeros((SLICES, 64, 64), np.uint32).tobytes()
        dose.save_as(exp / "rd.dcm", write_like_original=False)
        series, sops = _series(exp, pid, "20211001", rel_study, rel_for)
        _rtstruct(exp / "rs_rel.dcm", pid, "20211001", rel_study, rel_for, series, sops, ["Rec_CT"])
    return trial


def _timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="approximate number of files to generate")
    ap.add_argument("--trial-dir", type=Path, help="scan this existing raw trial folder instead")
    ap.add_argument("--workers", type=int, default=2, help="worker processes for the pooled pass")
    ap.add_argument("--repeat", type=int, default=3, help="passes per measurement (median reported)")
    ap.add_argument("--baseline", action="store_true", help="also time pydicom reading on the same files")
    args = ap.parse_args(argv)

    tmp = None
    if args.trial_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="rtmap-catalog-bench-"))
        t = time.perf_counter()
        trial = make_folder(tmp, args.n)
        print(f"generated {sum(1 for _ in trial.rglob('*.dcm'))} files in {time.perf_counter() - t:.1f} s")
    else:
        trial = args.trial_dir
    paths = sorted(p for p in trial.rglob("*") if p.is_file() and not p.name.startswith("."))
    n = len(paths)
    total_mb = sum(p.stat().st_size for p in paths) / 1e6
    print(f"{n} files, {total_mb:.0f} MB, {os.cpu_count()} CPUs (shared machine: numbers are pessimistic)")
    try:
        for p in paths:  # warm the page cache
            p.read_bytes()
        cold = catalog_folder(trial, workers=1)
        res = {
            "catalog cold, 1 process": _timed(lambda: catalog_folder(trial, workers=1), args.repeat),
            f"catalog cold, workers={args.workers}": _timed(
                lambda: catalog_folder(trial, workers=args.workers), args.repeat),
            "catalog incremental, nothing changed": _timed(
                lambda: catalog_folder(trial, cold.files, cold.rejects), args.repeat),
            "read_header loop (fast parser only)": _timed(lambda: [_safe(read_header, p) for p in paths], args.repeat),
        }
        if args.baseline:
            res["baseline: read_header_pydicom loop (same rows)"] = _timed(
                lambda: [_safe(read_header_pydicom, p) for p in paths], args.repeat)
            res["baseline: pydicom.dcmread(stop_before_pixels) loop, no row"] = _timed(
                lambda: [_safe(lambda q: pydicom.dcmread(q, stop_before_pixels=True), p) for p in paths],
                args.repeat)
        print(f"catalog: {cold.files.height} rows, {cold.rejects.height} rejects")
        width = max(map(len, res))
        for name, secs in res.items():
            print(f"{name:<{width}}  {secs:7.3f} s  {n / secs:9.0f} files/s")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _safe(fn, p):
    try:
        return fn(p)
    except Exception as exc:  # rejects are part of a real folder; count them as work done
        return exc


if __name__ == "__main__":
    raise SystemExit(main())
