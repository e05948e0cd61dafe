"""Volume-faithful rasterisation (issue 9: structure volumes on the 2 mm grid within 2 % of the polygons).

Analytic shapes whose polygon volume is known exactly (per contour plane: even-odd polygon area x the
plane's slab, midpoint to midpoint) are rasterised on a 2 mm grid with `rasterise`'s pipeline rule
(`occupancy="volume"`) and with the voxel-centre rule (`occupancy="centre"`, the rule before). Each test
asserts the measured volume error of both: the new rule within a fraction of a percent, the old one off
by more — cords 8-12 mm wide on 2.5 / 3 mm contour planes were 1.9-3.5 % too large.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk

from rtmap_assets.dicom.readers import rasterise
from rtmap_assets.imaging import grid as wg


def _ellipse(cx: float, cy: float, a: float, b: float, z: float, n: int = 128, turn_rad: float = 0.0) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = a * np.cos(t), b * np.sin(t)
    c, s = np.cos(turn_rad), np.sin(turn_rad)
    return np.column_stack([cx + c * x - s * y, cy + s * x + c * y, np.full(n, z)])


def _area_mm2(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _grid(size, spacing, origin, direction=None) -> sitk.Image:
    g = sitk.Image(size, sitk.sitkUInt8)
    g.SetSpacing(spacing)
    g.SetOrigin(origin)
    if direction is not None:
        g.SetDirection(direction)
    return g


def _box_grid(contours: list[np.ndarray], spacing_mm: float = 2.0) -> sitk.Image:
    """The working-grid lattice (origin on multiples of the spacing) around the contours + 4 mm."""
    pts = np.concatenate(contours)
    return wg.make_grid(pts.min(axis=0) - 4.0, pts.max(axis=0) + 4.0, spacing_mm)


def _volume_mm3(contours: list[np.ndarray], reference: sitk.Image, occupancy: str) -> float:
    mask = rasterise(contours, None, reference, occupancy=occupancy)
    arr = sitk.GetArrayViewFromImage(mask)
    assert arr.dtype == np.uint8 and set(np.unique(arr)) <= {0, 1}
    return float(arr.sum()) * float(np.prod(reference.GetSpacing()))


def _errors_pct(contours, reference, true_mm3) -> tuple[float, float]:
    new, old = (100 * (_volume_mm3(contours, reference, occ) / true_mm3 - 1) for occ in ("volume", "centre"))
    return new, old


@pytest.mark.parametrize("plane_mm", [2.5, 3.0])
@pytest.mark.parametrize("diameter_mm", [8.0, 10.0, 12.0])
def test_thin_cylinder_like_a_spinal_cord(plane_mm, diameter_mm):
    zs = np.arange(0.0, 120.0, plane_mm) + 0.3
    contours = [_ellipse(0.37, -0.21, diameter_mm / 2, diameter_mm / 2, z) for z in zs]
    true_mm3 = _area_mm2(contours[0]) * len(zs) * plane_mm  # slabs: half a spacing beyond the end planes
    new, old = _errors_pct(contours, _box_grid(contours), true_mm3)
    assert abs(new) < 0.3, f"volume rule {new:+.2f} %"
    assert abs(old) > 1.5, f"centre rule {old:+.2f} % (measured 1.9-3.5 %)"


def test_annulus_keeps_its_hole():
    zs = np.arange(0.0, 60.0, 2.5)
    contours = []
    for z in zs:
        contours += [_ellipse(0.5, 0.5, 12.0, 12.0, z), _ellipse(0.5, 0.5, 6.0, 6.0, z)]
    true_mm3 = (_area_mm2(contours[0]) - _area_mm2(contours[1])) * len(zs) * 2.5
    ref = _box_grid(contours)
    new, old = _errors_pct(contours, ref, true_mm3)
    assert abs(new) < 0.5 and abs(old) > 0.8, (new, old)  # measured +0.01 % and -0.93 %
    arr = sitk.GetArrayFromImage(rasterise(contours, None, ref))
    centre = ref.TransformPhysicalPointToIndex((0.5, 0.5, 30.0))
    ring = ref.TransformPhysicalPointToIndex((9.5, 0.5, 30.0))
    assert arr[centre[2], centre[1], centre[0]] == 0  # the hole stays empty
    assert arr[ring[2], ring[1], ring[0]] == 1


def test_two_islands_on_each_plane():
    zs = np.arange(0.0, 45.0, 3.0)
    contours = []
    for z in zs:
        contours += [_ellipse(-15.3, 0.0, 5.0, 5.0, z), _ellipse(15.1, 4.0, 4.0, 6.0, z)]
    left_mm3, right_mm3 = (_area_mm2(c) * len(zs) * 3.0 for c in contours[:2])
    ref = _box_grid(contours)
    new, old = _errors_pct(contours, ref, left_mm3 + right_mm3)
    assert abs(new) < 0.5 and abs(old) > 1.5, (new, old)
    arr = sitk.GetArrayFromImage(rasterise(contours, None, ref))
    split = ref.TransformPhysicalPointToIndex((0.0, 0.0, 0.0))[0]
    left, right = arr[:, :, :split].sum() * 8.0, arr[:, :, split:].sum() * 8.0
    # each island keeps its own volume (one ranking over both traded 4.6 % between them)
    assert left == pytest.approx(left_mm3, rel=0.005) and right == pytest.approx(right_mm3, rel=0.005)


def test_ellipse_on_a_rotated_grid():
    # grid turned 30 degrees about z (axial contours are still in its slice planes); ellipse turned 10 degrees
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    ref = _grid((30, 30, 30), (2.0, 2.0, 2.0), (-20.0, -35.0, -1.0), (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    zs = np.arange(0.0, 50.0, 2.5)
    contours = [_ellipse(2.2, -0.7, 12.0, 5.0, z, turn_rad=np.pi / 18) for z in zs]
    true_mm3 = _area_mm2(contours[0]) * len(zs) * 2.5
    new, old = _errors_pct(contours, ref, true_mm3)
    assert abs(new) < 0.3 and abs(old) > 0.5, (new, old)


def test_irregular_planes_take_the_midpoint_slabs():
    # real contour planes follow real slice positions: gaps 2.4 / 2.6 / 3.1 mm; one 6 mm gap (part not drawn)
    gaps = [2.4, 2.6, 3.1, 2.4, 2.6, 6.0, 2.5, 2.5, 2.4, 2.6] * 2
    zs = np.cumsum([0.0] + gaps)
    contours = [_ellipse(0.0, 0.0, 5.0, 5.0, z) for z in zs]
    median = float(np.median(gaps))
    half = np.where(np.array(gaps) <= 1.5 * median, np.array(gaps) / 2, median / 2)
    thickness = np.concatenate([[median / 2], half]) + np.concatenate([half, [median / 2]])
    true_mm3 = _area_mm2(contours[0]) * float(thickness.sum())
    new, old = _errors_pct(contours, _box_grid(contours), true_mm3)
    assert abs(new) < 0.3 and abs(old) > 1.5, (new, old)


def test_single_plane_lands_on_its_nearest_slice():
    ref = _grid((21, 21, 6), (1.0, 1.0, 2.0), (-10.0, -10.0, 0.0))
    arr = sitk.GetArrayFromImage(rasterise([_ellipse(0, 0, 6.0, 6.0, 3.2)], None, ref))
    assert arr.reshape(6, -1).sum(axis=1).nonzero()[0].tolist() == [2]
    assert arr.sum() * 1.0 == pytest.approx(_area_mm2(_ellipse(0, 0, 6.0, 6.0, 0)), abs=1.0)


def test_contours_partly_outside_the_grid_keep_the_inside_volume():
    zs = np.arange(0.0, 30.0, 2.0) + 1.0
    contours = [_ellipse(0.0, 0.0, 10.0, 10.0, z) for z in zs]
    ref = _grid((10, 20, 15), (1.0, 1.0, 2.0), (0.5, -9.5, 1.0))  # x from 0 mm: the right half of the disc
    half_mm3 = _area_mm2(contours[0]) / 2 * len(zs) * 2.0
    assert _volume_mm3(contours, ref, "volume") == pytest.approx(half_mm3, rel=0.01)


def test_clinical_sized_structure_set_is_fast():
    # ~15 structures, ~120k contour points in all, on a 2 mm box (a clinical head-and-neck set)
    zs = np.arange(-150.0, 150.0, 2.5)
    structures = [[_ellipse(0, 0, 180.0, 120.0, z, n=300) for z in zs]]  # body: 120 planes x 300 points
    for k in range(14):
        planes = zs[20 + 5 * k: 60 + 5 * k]
        structures.append([_ellipse(-60 + 9 * k, 10.0, 6.0 + k, 4.0 + k, z, n=180) for z in planes])
    assert 100_000 < sum(len(c) for s in structures for c in s) < 140_000
    ref = _box_grid(structures[0])
    t0 = time.perf_counter()
    volumes = [_volume_mm3(s, ref, "volume") for s in structures]
    elapsed = time.perf_counter() - t0
    body_mm3 = _area_mm2(structures[0][0]) * len(zs) * 2.5
    assert volumes[0] == pytest.approx(body_mm3, rel=1e-3)
    assert elapsed < 4.0, f"{elapsed:.2f} s"  # 1.4 s at load average ~4 on 2 shared cores
