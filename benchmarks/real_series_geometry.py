"""Slice geometry on real exports (rule 15, issue 9): refused fraction before/after, and structure volumes.

    .venv/bin/python benchmarks/real_series_geometry.py /work/tcia/HNSCC [--duplicate-max-difference 0]

<folder> holds one folder per patient (any nesting below it), e.g. the head-and-neck CT + RTSTRUCT
exports of the public repository RadiotherapyAI/test-data-public (TCIA HNSCC, CC BY 3.0; fetch it
yourself, never commit it). For every CT series that has an RTSTRUCT with at least one contour
(referenced by SeriesInstanceUID, else by FrameOfReferenceUID):

- before: the reader's former rule on the headers (1 % step tolerance, as in rtmap before rule 15:
  SERIES_NONUNIFORM_SPACING / SERIES_DUPLICATE_SLICE / SERIES_GANTRY_TILT / SERIES_MIXED_ORIENTATION);
- after: `read_image_series_with_layout` with the trial config's `SliceGeometry` (defaults unless
  overridden here): OK by kind (uniform / jitter / irregular, duplicates kept once) or the refusal code;
- volumes: for every structure of an accepted series whose polygon volume is over --min-cc (20 cc),
  the volume rasterised by rtmap's `rasterise` on the 2 mm working-grid lattice (identity direction,
  origin on multiples of 2 mm: the lattice of `imaging.grid.working_grid`, cropped here to the
  structure's box + 4 mm, which gives the same voxels) against the polygon geometry: per contour
  plane, the even-odd (XOR) area of its polygons (shapely) x the plane's slab (midpoint to midpoint
  between neighbouring planes; half the median spacing beyond the end planes), summed — the slab
  convention of `rasterise`. Reported: relative difference (grid - polygon) / polygon for the
  pipeline's volume rule (`occupancy="volume"`) and the former voxel-centre rule
  (`occupancy="centre"`); with the centre rule also on a grid whose slices are the contour planes
  (in-plane sampling only) and on a fine 0.5 mm grid (checks the polygon computation itself,
  independently of the volume rule's own area computation).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtmap_assets.config import SliceGeometry  # noqa: E402
from rtmap_assets.dicom.readers import rasterise, read_image_series_with_layout, read_rtstruct  # noqa: E402
from rtmap_assets.errors import PatientDataError  # noqa: E402
from rtmap_assets.imaging import grid as wg  # noqa: E402


def scan_patient(folder: Path) -> list[tuple[list[str], list[pydicom.Dataset], str]]:
    """(CT slice files, their headers, RTSTRUCT file) for each CT series with a non-empty RTSTRUCT."""
    series: dict[str, list[str]] = collections.defaultdict(list)
    headers: dict[str, list[pydicom.Dataset]] = collections.defaultdict(list)
    series_for: dict[str, str] = {}
    structs: list[tuple[str, str | None, str | None]] = []
    for root, _dirs, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(root, name)
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # not DICOM
                continue
            modality = str(getattr(ds, "Modality", ""))
            if modality == "CT":
                series[str(ds.SeriesInstanceUID)].append(path)
                headers[str(ds.SeriesInstanceUID)].append(ds)
                series_for[str(ds.SeriesInstanceUID)] = str(getattr(ds, "FrameOfReferenceUID", ""))
            elif modality == "RTSTRUCT":
                if not any(len(getattr(rc, "ContourSequence", [])) for rc in getattr(ds, "ROIContourSequence", [])):
                    continue
                ref_series, ref_for = None, None
                for fr in getattr(ds, "ReferencedFrameOfReferenceSequence", []):
                    ref_for = str(fr.FrameOfReferenceUID)
                    for st in getattr(fr, "RTReferencedStudySequence", []):
                        for se in getattr(st, "RTReferencedSeriesSequence", []):
                            ref_series = str(se.SeriesInstanceUID)
                structs.append((path, ref_series, ref_for))
    pairs = []
    used = set()
    for uid, files in series.items():
        match = [p for p, rs, _ in structs if rs == uid] or [p for p, rs, fr in structs
                                                              if rs not in series and fr == series_for[uid]]
        if match:
            pairs.append((files, headers[uid], match[0]))
            used.update(match)
    for p, rs, fr in structs:
        if p not in used:
            print(f"  {folder.name}: non-empty RTSTRUCT {p} matches no CT series here "
                  f"(references series {rs}, frame {fr})")
    return pairs


def old_rule(hs: list[pydicom.Dataset]) -> str:
    """The reader's rule before rule 15, on headers only (same checks, same order)."""
    if len(hs) < 2:
        return "SERIES_TOO_FEW_SLICES"
    iop0 = np.asarray(hs[0].ImageOrientationPatient, float)
    pix = np.asarray(hs[0].PixelSpacing, float)
    for h in hs:
        if np.max(np.abs(np.asarray(h.ImageOrientationPatient, float) - iop0)) > 1e-3:
            return "SERIES_MIXED_ORIENTATION"
        if (int(h.Rows), int(h.Columns)) != (int(hs[0].Rows), int(hs[0].Columns)) or np.max(
                np.abs(np.asarray(h.PixelSpacing, float) - pix)) > 1e-4:
            return "SERIES_INCONSISTENT_GEOMETRY"
    row, col = iop0[:3] / np.linalg.norm(iop0[:3]), iop0[3:] / np.linalg.norm(iop0[3:])
    normal = np.cross(row, col)
    ipp = np.array([np.asarray(h.ImagePositionPatient, float) for h in hs])
    along = ipp @ normal
    order = np.argsort(along)
    ipp, along = ipp[order], along[order]
    steps = np.diff(along)
    if np.any(np.abs(steps) < 0.01):
        return "SERIES_DUPLICATE_SLICE"
    median = float(np.median(steps))
    if np.any(np.abs(steps - median) > max(0.01, 0.01 * abs(median))):
        return "SERIES_NONUNIFORM_SPACING"
    offsets = np.diff(ipp, axis=0)
    perpendicular = offsets - np.outer(offsets @ normal, normal)
    if np.max(np.linalg.norm(perpendicular, axis=1)) > max(0.01, 0.01 * float(np.mean(steps))):
        return "SERIES_GANTRY_TILT"
    return "OK"


def polygon_volume_cc(contours: list[np.ndarray]) -> float | None:
    """Sum over planes of the even-odd polygon area x the plane's slab thickness (None for a single plane)."""
    from shapely.geometry import Polygon
    from shapely.validation import make_valid

    planes: dict[float, list[np.ndarray]] = collections.defaultdict(list)
    for pts in contours:
        planes[round(float(np.mean(pts[:, 2])), 2)].append(pts)
    zs = np.array(sorted(planes))
    if len(zs) < 2:
        return None
    gaps = np.diff(zs)
    median = float(np.median(gaps))
    # Each plane stands for the slab between the midpoints to its neighbours (the end planes: half
    # the usual spacing outward); across a gap wider than 1.5x the usual spacing (part not drawn)
    # a plane reaches half the usual spacing only.
    half_gaps = np.where(gaps <= 1.5 * median, gaps / 2, median / 2)
    thickness = np.concatenate([[median / 2], half_gaps]) + np.concatenate([half_gaps, [median / 2]])
    volume = 0.0
    for z, dz in zip(zs, thickness):
        shape = None
        for pts in planes[z]:
            poly = make_valid(Polygon(pts[:, :2]))
            shape = poly if shape is None else shape.symmetric_difference(poly)
        volume += shape.area * dz
    return volume / 1000.0


def grid_volume_cc(contours: list[np.ndarray], spacing_mm: float, occupancy: str = "volume") -> float:
    lo, hi = (np.concatenate(contours).min(axis=0), np.concatenate(contours).max(axis=0))
    ref = wg.make_grid(lo - 4.0, hi + 4.0, spacing_mm)  # same lattice as the working grid (snapped origin)
    mask = rasterise(contours, None, ref, occupancy=occupancy)
    return float(sitk.GetArrayViewFromImage(mask).sum()) * spacing_mm ** 3 / 1000.0


def in_plane_volume_cc(contours: list[np.ndarray], spacing_mm: float) -> float:
    """Diagnostic: rasterised volume on a grid of `spacing_mm` in-plane whose slices ARE the contour planes,
    so only the in-plane sampling of the voxel-centre rule differs from the polygon geometry."""
    zs = np.array(sorted({round(float(np.mean(c[:, 2])), 2) for c in contours}))
    dz = float(np.median(np.diff(zs)))
    lo, hi = np.concatenate(contours).min(axis=0), np.concatenate(contours).max(axis=0)
    lo_xy = np.floor((lo[:2] - 4.0) / spacing_mm) * spacing_mm
    size = [int(np.ceil((hi[0] + 4.0 - lo_xy[0]) / spacing_mm)) + 1, int(np.ceil((hi[1] + 4.0 - lo_xy[1]) / spacing_mm)) + 1,
            int(round((zs[-1] - zs[0]) / dz)) + 1]
    ref = sitk.Image(size, sitk.sitkUInt8)
    ref.SetOrigin((float(lo_xy[0]), float(lo_xy[1]), float(zs[0])))
    ref.SetSpacing((spacing_mm, spacing_mm, dz))
    mask = rasterise(contours, None, ref, occupancy="centre")
    return float(sitk.GetArrayViewFromImage(mask).sum()) * spacing_mm ** 2 * dz / 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--min-cc", type=float, default=20.0)
    ap.add_argument("--grid-mm", type=float, default=2.0)
    ap.add_argument("--fine-mm", type=float, default=0.5,
                    help="also rasterise on this finer grid (checks the polygon computation; 0 = skip)")
    ap.add_argument("--duplicate-max-difference", type=float, default=None,
                    help="override SliceGeometry.duplicate_max_difference (HU)")
    ap.add_argument("--limit", type=int, default=0, help="first N patient folders only")
    ap.add_argument("--only", nargs="*", default=None, help="these patient folder names only")
    args = ap.parse_args()
    cfg = SliceGeometry() if args.duplicate_max_difference is None else SliceGeometry(
        duplicate_max_difference=args.duplicate_max_difference)
    print(f"load average before: {os.getloadavg()}")
    print(f"SliceGeometry: {cfg.model_dump()}")
    t0 = time.perf_counter()
    patients = sorted(p for p in args.folder.iterdir() if p.is_dir())
    if args.only:
        patients = [p for p in patients if p.name in set(args.only)]
    if args.limit:
        patients = patients[:args.limit]
    pairs = [(p.name, files, hs, rs) for p in patients for files, hs, rs in scan_patient(p)]
    t_scan = time.perf_counter() - t0
    print(f"{len(patients)} patient folders, {len(pairs)} CT series with a non-empty RTSTRUCT "
          f"(scan {t_scan:.1f} s)")

    before, after = collections.Counter(), collections.Counter()
    detail: dict[str, list[str]] = collections.defaultdict(list)
    kind_stats: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    rel_diffs: list[tuple[float, str, str, float, float]] = []
    t_old = t_new = t_vol = t_rast_new = t_rast_old = 0.0
    for patient, files, hs, rs_path in pairs:
        t = time.perf_counter()
        before[old_rule(hs)] += 1
        t_old += time.perf_counter() - t
        t = time.perf_counter()
        try:
            _image, layout = read_image_series_with_layout(files, cfg)
        except PatientDataError as exc:
            after[exc.code] += 1
            detail[exc.code].append(f"{patient}: {exc.message}")
            t_new += time.perf_counter() - t
            continue
        t_new += time.perf_counter() - t
        kind = f"OK ({layout.kind}{', duplicates kept once' if layout.dropped_duplicates else ''})"
        after[kind] += 1
        kind_stats[kind].append((layout.max_lattice_deviation_mm, layout.max_step_ratio))
        t = time.perf_counter()
        rs = read_rtstruct(rs_path)
        for name, contours in rs.contours.items():
            if not contours:
                continue
            poly = polygon_volume_cc(contours)
            if poly is None or poly <= args.min_cc:
                continue
            try:
                t_r = time.perf_counter()
                vox = grid_volume_cc(contours, args.grid_mm)
                t_rast_new += time.perf_counter() - t_r
                t_r = time.perf_counter()
                centre = grid_volume_cc(contours, args.grid_mm, "centre")
                t_rast_old += time.perf_counter() - t_r
            except PatientDataError as exc:
                detail["volume: " + exc.code].append(f"{patient} {name}: {exc.message}")
                continue
            try:
                flat = in_plane_volume_cc(contours, args.grid_mm)
            except PatientDataError:  # irregular plane spacing: no grid has every plane as a slice
                flat = float("nan")
            fine = grid_volume_cc(contours, args.fine_mm, "centre") if args.fine_mm > 0 else float("nan")
            rel_diffs.append(((vox - poly) / poly, patient, name, poly, vox, (flat - poly) / poly,
                              (fine - poly) / poly, (centre - poly) / poly, centre))
        t_vol += time.perf_counter() - t
    total = time.perf_counter() - t0

    n = len(pairs)
    print("\n## Outcome by code")
    print("| outcome | before (1 % rule) | after (rule 15) |\n|---|---|---|")
    for code in sorted(set(before) | set(after), key=lambda c: (not c.startswith("OK"), c)):
        print(f"| {code} | {before.get(code, 0)} | {after.get(code, 0)} |")
    refused_b = n - before.get("OK", 0)
    refused_a = n - sum(v for k, v in after.items() if k.startswith("OK"))
    print(f"| **refused** | **{refused_b} / {n} ({100 * refused_b / max(n, 1):.1f} %)** | "
          f"**{refused_a} / {n} ({100 * refused_a / max(n, 1):.1f} %)** |")
    print("\n## Accepted series: measured size by kind")
    print("| kind | series | max lattice deviation mm (max over series) | largest step / median step (max) |")
    print("|---|---|---|---|")
    for kind, vals in sorted(kind_stats.items()):
        dev = max(v[0] for v in vals)
        ratio = max(v[1] for v in vals)
        print(f"| {kind} | {len(vals)} | {dev:.3f} | {ratio:.3f} |")
    for code, lines in sorted(detail.items()):
        print(f"\n{code}:")
        for line in lines[:10]:
            print(f"  {line}")
    print(f"\n## Volumes of structures > {args.min_cc:g} cc: {args.grid_mm:g} mm grid vs polygon geometry")
    if rel_diffs:
        d = np.array([r[0] for r in rel_diffs]) * 100
        q = np.percentile(d, [0, 1, 5, 25, 50, 75, 95, 99, 100])
        print(f"{len(d)} structures in {len({r[1] for r in rel_diffs})} patients; relative difference % "
              f"(grid - polygon) / polygon:")
        print("| grid | min | p1 | p5 | p25 | median | p75 | p95 | p99 | max | mean | within 2 % |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        print(f"| working grid ({args.grid_mm:g} mm isotropic), volume rule (after) | "
              + " | ".join(f"{v:+.2f}" for v in q) + f" | {d.mean():+.2f} | {np.mean(np.abs(d) <= 2.0) * 100:.1f} % |")
        for col, label in ((7, f"working grid ({args.grid_mm:g} mm isotropic), voxel-centre rule (before)"),
                           (5, f"centre rule, {args.grid_mm:g} mm in-plane, slices = contour planes "
                               "(in-plane sampling only)"),
                           (6, f"centre rule, {args.fine_mm:g} mm isotropic (fine sampling)")):
            other = np.array([r[col] for r in rel_diffs]) * 100
            other = other[np.isfinite(other)]
            if not len(other):
                continue
            qf = np.percentile(other, [0, 1, 5, 25, 50, 75, 95, 99, 100])
            print(f"| {label} | " + " | ".join(f"{v:+.2f}" for v in qf)
                  + f" | {other.mean():+.2f} | {np.mean(np.abs(other) <= 2.0) * 100:.1f} % |")
        small = [r for r in rel_diffs if r[3] < 50]
        if small:
            ds = np.array([r[0] for r in small]) * 100
            print(f"20-50 cc: {len(ds)} structures, |diff| within 2 %: {np.mean(np.abs(ds) <= 2) * 100:.1f} %, "
                  f"p5/median/p95 {np.percentile(ds, 5):+.2f} / {np.median(ds):+.2f} / {np.percentile(ds, 95):+.2f} %")
            dc = np.array([r[7] for r in small]) * 100
            print(f"20-50 cc, centre rule (before): |diff| within 2 %: {np.mean(np.abs(dc) <= 2) * 100:.1f} %, "
                  f"p5/median/p95 {np.percentile(dc, 5):+.2f} / {np.median(dc):+.2f} / {np.percentile(dc, 95):+.2f} %")
        print("worst 8 (volume rule):")
        for r in sorted(rel_diffs, key=lambda r: -abs(r[0]))[:8]:
            print(f"  {r[1]} {r[2]!r}: polygon {r[3]:.2f} cc, grid {r[4]:.2f} cc ({100 * r[0]:+.2f} %), "
                  f"centre rule {r[8]:.2f} cc ({100 * r[7]:+.2f} %)")
        print("worst 8 (centre rule, before):")
        for r in sorted(rel_diffs, key=lambda r: -abs(r[7]))[:8]:
            print(f"  {r[1]} {r[2]!r}: polygon {r[3]:.2f} cc, centre rule {r[8]:.2f} cc ({100 * r[7]:+.2f} %), "
                  f"volume rule {r[4]:.2f} cc ({100 * r[0]:+.2f} %)")
    print(f"\ntiming: scan {t_scan:.1f} s, before rule {t_old:.1f} s, new reader {t_new:.1f} s, "
          f"volumes {t_vol:.1f} s (of which 2 mm rasterise: volume rule {t_rast_new:.1f} s, centre rule "
          f"{t_rast_old:.1f} s), total {total:.1f} s")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
