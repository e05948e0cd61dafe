"""Slice geometry (rule 15): pure classification of true slice positions, and the reader built on it."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from rtmap_assets.config import SliceGeometry, TrialConfig, parse_trial_config, ConfigError
from rtmap_assets.dicom import slice_geometry as sg
from rtmap_assets.dicom.readers import read_image_series
from rtmap_assets.errors import PatientDataError
from rtmap_assets_tests.test_readers_dicom import write_ct

CFG = SliceGeometry()


def _flat(n: int) -> list[np.ndarray]:
    return [np.full((2, 2), float(k)) for k in range(n)]


# ----------------------------------------------------------------------------------------- pure functions


def test_uniform_positions_need_nothing():
    lay = sg.classify_positions(np.arange(10) * 2.5 - 40.0, CFG)
    assert lay.kind == "uniform" and not lay.needs_resampling
    assert (lay.origin_mm, lay.step_mm, lay.n_slices) == pytest.approx((-40.0, 2.5, 10))


def test_jitter_is_placed_on_its_lattice_without_resampling():
    jitter = np.array([0.0, 0.13, -0.1, 0.06, -0.13, 0.0, 0.1, -0.06])
    p = np.arange(8) * 2.5 + jitter
    lay = sg.classify_positions(p, CFG)
    assert lay.kind == "jitter" and not lay.needs_resampling
    assert lay.step_mm == pytest.approx(2.5, abs=0.03)
    assert lay.max_lattice_deviation_mm == pytest.approx(np.max(np.abs(p - lay.target_positions_mm)))
    assert lay.max_lattice_deviation_mm <= 0.2


def test_irregular_steps_are_resampled_on_the_median_step():
    # steps seen on real 2.5 mm series: 2.19-2.82 mm, with drift away from any lattice
    steps = [2.5, 2.25, 2.5, 2.56, 2.19, 2.5, 2.82, 2.5, 2.44, 2.5, 2.25, 2.5]
    p = np.concatenate([[0.0], np.cumsum(steps)])
    lay = sg.classify_positions(p, CFG)
    assert lay.kind == "irregular" and lay.needs_resampling
    # the step nearest the 2.5 mm median that spans the true extent 29.51 mm exactly: 12 intervals
    assert lay.n_slices == 13 and lay.step_mm == pytest.approx(29.51 / 12)
    assert lay.origin_mm == 0.0 and lay.target_positions_mm[-1] == pytest.approx(p[-1])
    assert lay.max_step_ratio == pytest.approx(2.82 / 2.5)


def test_irregular_beyond_configured_limit_is_a_gap():
    p = np.array([0.0, 2.5, 5.0, 8.5, 11.0, 13.5])  # one 3.5 mm step = 1.4x
    assert sg.classify_positions(p, CFG).kind == "irregular"
    with pytest.raises(PatientDataError) as err:
        sg.classify_positions(p, SliceGeometry(max_step_ratio=1.3))
    assert err.value.code == "SERIES_GAP"
    assert "3.500 mm between positions 5.000 and 8.500" in err.value.message and "1.40x" in err.value.message


def test_missing_slice_is_a_gap_with_its_size():
    p = np.array([0.0, 2.5, 5.0, 10.0, 12.5, 15.0])  # 7.5 missing
    with pytest.raises(PatientDataError) as err:
        sg.classify_positions(p, CFG, file="x.dcm")
    assert err.value.code == "SERIES_GAP" and err.value.file == "x.dcm"
    assert "5.000 mm" in err.value.message and "2.00x the nominal 2.500 mm" in err.value.message
    assert "1 missing slice" in err.value.message


def test_identical_duplicate_is_kept_once():
    p = np.array([0.0, 2.5, 5.0, 5.07, 7.5, 10.0])
    pixels = _flat(6)
    pixels[3] = pixels[2].copy()
    lay = sg.classify_positions(p, CFG, pixels=pixels)
    assert lay.kept.tolist() == [0, 1, 2, 4, 5]
    assert lay.dropped_duplicates == [(pytest.approx(5.07), pytest.approx(0.07))]
    assert lay.kind == "uniform" and lay.n_slices == 5
    # a coincident position is a duplicate even with a zero tolerance (never a zero step)
    lay0 = sg.classify_positions(np.array([0.0, 2.5, 2.5, 5.0]), SliceGeometry(duplicate_tolerance_mm=0),
                                 pixels=[pixels[0], pixels[1], pixels[1], pixels[4]])
    assert lay0.kept.tolist() == [0, 1, 3] and lay0.step_mm == pytest.approx(2.5)


def test_different_duplicate_is_refused_with_distance():
    p = np.array([0.0, 2.5, 5.0, 5.07, 7.5, 10.0])
    pixels = _flat(6)
    pixels[3] = pixels[2] + 11.0
    with pytest.raises(PatientDataError) as err:
        sg.classify_positions(p, CFG, pixels=pixels)
    assert err.value.code == "SERIES_DUPLICATE_POSITION"
    assert "0.070 mm apart" in err.value.message and "max pixel difference 11" in err.value.message
    # a trial may accept near-identical content explicitly
    lay = sg.classify_positions(p, SliceGeometry(duplicate_max_difference=20), pixels=pixels)
    assert lay.kept.tolist() == [0, 1, 2, 4, 5]
    # without pixel content a duplicate cannot be checked: refused
    with pytest.raises(PatientDataError):
        sg.classify_positions(p, CFG)


def test_tilt_and_mixed_orientation_refused_with_angle():
    normal = np.array([0.0, 0.0, 1.0])
    k = np.arange(5)[:, None]
    straight = np.hstack([np.zeros((5, 2)), 2.0 * k])
    sg.check_not_tilted(straight, normal, 0.5)
    tilted = straight + np.hstack([np.zeros((5, 1)), 2.0 * np.tan(np.radians(15)) * k, np.zeros((5, 1))])
    with pytest.raises(PatientDataError) as err:
        sg.check_not_tilted(tilted, normal, 0.5)
    assert err.value.code == "SERIES_GANTRY_TILT" and "tilt 15.00 deg" in err.value.message
    iops = np.array([[1, 0, 0, 0, 1, 0], [1, 0, 0, 0, np.cos(0.1), np.sin(0.1)]], float)
    with pytest.raises(PatientDataError) as err:
        sg.check_same_orientation(iops, 1e-3)
    assert err.value.code == "SERIES_MIXED_ORIENTATION" and "5.73 deg" in err.value.message


def test_bad_direction_cosines_refused():
    assert sg.normal_from_iop([-1, 0, 0, 0, -1, 0])[:, 2] == pytest.approx([0, 0, 1])
    assert sg.normal_from_iop([-1, 0, 0, 0, 1, 0])[:, 2] == pytest.approx([0, 0, -1])
    with pytest.raises(PatientDataError) as err:
        sg.normal_from_iop([1, 0, 0, 0.2, 1, 0])
    assert err.value.code == "SERIES_BAD_ORIENTATION" and "row.column = 0.2" in err.value.message


def test_resample_along_normal_is_linear_between_true_slices():
    p = np.array([0.0, 2.0, 5.0])
    vol = np.stack([np.full((2, 3), v, np.float32) for v in (0.0, 20.0, 50.0)])
    out = sg.resample_along_normal(vol, p, np.array([0.0, 1.0, 2.5, 5.0]))
    assert out[:, 0, 0] == pytest.approx([0.0, 10.0, 25.0, 50.0])  # a linear ramp stays exact
    with pytest.raises(ValueError):
        sg.resample_along_normal(vol, p, np.array([5.5]))


def test_slice_geometry_in_trial_config():
    cfg = TrialConfig(trial="t")
    assert cfg.slice_geometry == SliceGeometry()
    cfg2 = parse_trial_config({"trial": "t", "slice_geometry": {"max_step_ratio": 1.3}})
    assert cfg2.slice_geometry.max_step_ratio == 1.3
    with pytest.raises(ConfigError, match="slice_geometry.max_step_ratio"):
        parse_trial_config({"trial": "t", "slice_geometry": {"max_step_ratio": 0.9}})


# ----------------------------------------------------------------------------------------- reader


def test_reader_resamples_irregular_series_from_true_positions(tmp_path):
    # HU = 10 * z (mm): linear along the normal, so resampling from the true positions is exact
    steps = [2.5, 2.25, 2.5, 2.82, 2.19, 2.5, 2.56, 2.5]
    zs = np.concatenate([[20.0], 20.0 + np.cumsum(steps)])
    vol = np.stack([np.full((4, 4), 10.0 * z) for z in zs]).astype(np.float32)
    img = read_image_series(write_ct(tmp_path, vol, z_positions=list(zs), slope=0.5, intercept=0.0))
    assert img.GetSize()[2] == 9 and img.GetSpacing()[2] == pytest.approx(19.82 / 8)  # spans 20 .. 39.82 mm
    assert img.GetOrigin()[2] == pytest.approx(20.0)
    arr = sitk.GetArrayViewFromImage(img)
    target_z = 20.0 + np.arange(img.GetSize()[2]) * img.GetSpacing()[2]
    assert arr[:, 0, 0] == pytest.approx(10.0 * target_z, abs=0.5)
    # a jittered series is kept slice for slice, on its lattice
    zs_j = 20.0 + np.arange(6) * 2.5 + np.array([0, 0.1, -0.1, 0.05, 0, -0.05])
    img_j = read_image_series(write_ct(tmp_path / "j", vol[:6], z_positions=list(zs_j)))
    assert img_j.GetSize()[2] == 6 and img_j.GetSpacing()[2] == pytest.approx(2.5, abs=0.05)


def test_reader_keeps_identical_duplicate_and_refuses_a_different_one(tmp_path):
    zs = [0.0, 2.0, 4.0, 4.07, 6.0, 8.0]
    vol = np.stack([np.full((4, 4), 100.0 * k) for k in (0, 1, 2, 2, 4, 5)]).astype(np.float32)
    img = read_image_series(write_ct(tmp_path / "same", vol, z_positions=zs))
    assert img.GetSize()[2] == 5
    assert sitk.GetArrayViewFromImage(img)[:, 0, 0] == pytest.approx([0, 100, 200, 400, 500])
    vol[3] = 300.0
    with pytest.raises(PatientDataError) as err:
        read_image_series(write_ct(tmp_path / "diff", vol, z_positions=zs))
    assert err.value.code == "SERIES_DUPLICATE_POSITION" and "0.070 mm apart" in err.value.message


def test_mr_series_uses_the_same_rule_and_the_trial_tolerances(tmp_path):
    import pydicom

    from rtmap_assets_tests.dicom_factory import uid, write_image_series

    series = write_image_series(tmp_path, "mr", "P1", uid("mr/study"), uid("mr/for"), "20210101", modality="MR",
                                n_slices=6, slice_thickness=3.0)
    zs = [0.0, 3.0, 6.3, 9.0, 12.0, 15.2]  # irregular steps 2.7-3.3 mm (ratio <= 1.1)
    for path, z in zip(series.paths, zs):
        ds = pydicom.dcmread(str(path))
        ds.ImagePositionPatient = [-8.0, -8.0, z]
        ds.save_as(str(path))
    img = read_image_series(series.paths)
    assert img.GetSpacing()[2] == pytest.approx(15.2 / 5) and img.GetSize()[2] == 6
    with pytest.raises(PatientDataError) as err:
        read_image_series(series.paths, SliceGeometry(max_step_ratio=1.05))
    assert err.value.code == "SERIES_GAP" and "3.300 mm" in err.value.message


def test_rasterise_fills_irregular_contour_planes_without_holes():
    # contour planes follow real slice positions: gaps alternate 2.0 / 2.8 mm (median 2.0, ratio 1.4)
    from rtmap_assets.dicom.readers import rasterise
    from rtmap_assets_tests.test_readers_dicom import circle, grid

    zs = np.cumsum([0.0] + [2.0, 2.8] * 6 + [2.0])
    contours = [circle(0, 0, 10.0, z) for z in zs]
    ref = grid((49, 49, 80), (0.5, 0.5, 0.5), (-12.0, -12.0, -4.0))
    per_slice = sitk.GetArrayFromImage(rasterise(contours, None, ref)).reshape(80, -1).sum(axis=1)
    k_first, k_last = int(round((zs[0] + 4) / 0.5)), int(round((zs[-1] + 4) / 0.5))
    assert per_slice[k_first:k_last + 1].min() > 0  # before: slices 1.4 mm from both planes were left empty
    filled_mm = (per_slice > 0).sum() * 0.5
    assert filled_mm == pytest.approx(zs[-1] - zs[0] + 2 * 0.5 * np.median(np.diff(zs)), abs=0.6)
