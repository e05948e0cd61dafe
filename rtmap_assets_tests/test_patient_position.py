"""Patient position and orientation (issue 9 point 4): HFS, HFP, FFS, FFP and any axial direction cosines.

Each case writes a CT whose bright cylinder and RTSTRUCT contour sit at one known LPS location
(off-centre in x and y, so a flipped axis would move it), reads both back, and checks that the image
content and the rasterised mask land there: on the axis-aligned working grid and on the CT's own grid.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from rtmap_assets.dicom.readers import rasterise, read_image_series, read_rtstruct
from rtmap_assets.errors import PatientDataError
from rtmap_assets.imaging import grid as wg
from rtmap_assets.imaging.mapping import mask_centroid_mm
from rtmap_assets_tests.dicom_factory import uid, write_image_series, write_rtstruct

CENTRE = np.array([12.0, 2.0, 0.0])  # LPS mm; the field of view is x, y in [-8, 22], centre (7, 7)
RADIUS_MM = 4.5
HALF_HEIGHT_MM = 4.5
C30, S30 = np.cos(np.radians(30)), np.sin(np.radians(30))


def _cylinder_hu(pts: np.ndarray) -> np.ndarray:
    r = np.linalg.norm(pts[..., :2] - CENTRE[:2], axis=-1)
    inside = (r <= RADIUS_MM) & (np.abs(pts[..., 2] - CENTRE[2]) <= HALF_HEIGHT_MM)
    return np.where(inside, 1000.0, 0.0)


def _write_case(tmp_path, position: str, iop):
    series = write_image_series(tmp_path / "ct", "pos", "P1", uid("pos/study"), uid("pos/for"), "20200101",
                                n_slices=11, shape=(16, 16), spacing=2.0, slice_thickness=2.0,
                                patient_position=position, iop=iop, pixel_fn=_cylinder_hu)
    rs_path = tmp_path / "rs" / "RS.dcm"
    write_rtstruct(rs_path, "pos", "P1", uid("pos/study"), "20200101", ["GTV"], referenced=series,
                   contour_centre_xy=(CENTRE[0], CENTRE[1]), contour_radius=RADIUS_MM,
                   contour_z=[-4.0, -2.0, 0.0, 2.0, 4.0])
    return series, rs_path


def _bright_centroid_mm(image: sitk.Image) -> np.ndarray:
    return mask_centroid_mm(sitk.Cast(image > 500, sitk.sitkUInt8))


CASES = {
    "HFS": ("HFS", None),
    "HFP": ("HFP", None),
    "FFS": ("FFS", None),
    "FFP": ("FFP", None),
    "axial rotated 30 deg": ("HFS", (C30, S30, 0.0, -S30, C30, 0.0)),
    "axial rotated 90 deg (decubitus)": ("HFDR", (0.0, 1.0, 0.0, -1.0, 0.0, 0.0)),
    "HFP tag with HFS cosines (IOP wins)": ("HFP", (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_structure_lands_at_its_physical_location(tmp_path, case):
    position, iop = CASES[case]
    series, rs_path = _write_case(tmp_path, position, iop)
    ct = read_image_series(series.paths)
    rs = read_rtstruct(rs_path)
    # the CT's own grid, whatever its direction matrix
    native = rasterise(rs, "GTV", ct)
    assert mask_centroid_mm(native) == pytest.approx(CENTRE, abs=0.3)
    assert _bright_centroid_mm(ct) == pytest.approx(CENTRE, abs=0.3)
    # the axis-aligned 2 mm working grid
    ref = wg.make_grid(*wg.physical_bounds(ct), 2.0)
    mask = rasterise(rs, "GTV", ref)
    img = wg.resample_image(ct, ref, default_value=0.0)
    assert mask_centroid_mm(mask) == pytest.approx(CENTRE, abs=0.5)
    assert _bright_centroid_mm(img) == pytest.approx(CENTRE, abs=0.5)
    m = sitk.GetArrayViewFromImage(mask).astype(bool)
    b = sitk.GetArrayViewFromImage(img) > 500
    dice = 2 * (m & b).sum() / (m.sum() + b.sum())  # a flipped axis moves the object 10 mm: Dice 0
    assert dice > 0.8, f"image and contour disagree on the working grid (Dice {dice:.2f})"


def test_feet_first_slices_run_along_minus_z(tmp_path):
    series, _ = _write_case(tmp_path, "FFS", None)
    ct = read_image_series(series.paths)
    direction = np.asarray(ct.GetDirection()).reshape(3, 3)
    assert direction[:, 0] == pytest.approx([-1, 0, 0]) and direction[:, 2] == pytest.approx([0, 0, -1])
    assert ct.GetOrigin()[2] == pytest.approx(10.0)  # the first slice along the normal is the highest z


def test_gantry_tilted_cosines_with_axial_stacking_refused(tmp_path):
    # 15 deg gantry tilt: the cosines are tilted but the scanner stacks the slices along z
    t = np.radians(15)
    series = write_image_series(tmp_path / "ct", "tilt", "P1", uid("t/study"), uid("t/for"), "20200101",
                                n_slices=5, iop=(1.0, 0.0, 0.0, 0.0, np.cos(t), np.sin(t)))
    with pytest.raises(PatientDataError) as err:
        read_image_series(series.paths)
    assert err.value.code == "SERIES_GANTRY_TILT" and "tilt 15.00 deg" in err.value.message


def test_non_orthonormal_cosines_refused(tmp_path):
    series = write_image_series(tmp_path / "ct", "bad", "P1", uid("b/study"), uid("b/for"), "20200101",
                                n_slices=3, iop=(1.0, 0.0, 0.0, 0.1, 1.0, 0.0))
    with pytest.raises(PatientDataError) as err:
        read_image_series(series.paths)
    assert err.value.code == "SERIES_BAD_ORIENTATION" and "row.column = 0.1000" in err.value.message
