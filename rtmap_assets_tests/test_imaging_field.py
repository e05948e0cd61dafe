"""One displacement field of T per patient (grid.displacement_field): the registered relapse image and the Jacobian
QC taken from it equal what evaluating the transform again gives (imaging_patient.mapping_step / qc_step)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from rtmap_assets.imaging import grid as wg
from rtmap_assets.imaging.qc import jacobian_stats


def _warp(reference: sitk.Image) -> sitk.Transform:
    bspline = sitk.BSplineTransformInitializer(reference, [2, 2, 2], order=3)
    rng = np.random.default_rng(7)
    bspline.SetParameters(tuple(rng.uniform(-3.0, 3.0, len(bspline.GetParameters()))))
    rigid = sitk.Euler3DTransform()
    rigid.SetRotation(0.03, -0.02, 0.05)
    rigid.SetTranslation((5.0, -3.0, 4.0))  # part of the planning grid maps outside the relapse image
    composite = sitk.CompositeTransform(rigid)
    composite.AddTransform(bspline)
    return composite


def test_registered_image_and_jacobian_from_one_field_equal_the_transforms():
    reference = sitk.Image([30, 28, 26], sitk.sitkUInt8)
    reference.SetSpacing((2.0, 2.0, 2.0))
    reference.SetOrigin((-30.0, -28.0, -26.0))
    moving = sitk.GetImageFromArray(np.random.default_rng(1).normal(0.0, 300.0, (40, 35, 45)).astype(np.float32))
    moving.SetSpacing((1.5, 1.6, 1.2))
    moving.SetOrigin((-31.0, -27.0, -25.0))
    t = _warp(reference)
    expected = sitk.GetArrayFromImage(wg.resample(moving, reference, transform=t, default_value=-1000.0))
    field = wg.displacement_field(t, reference)
    got = wg.resample_with_field(moving, field, default_value=-1000.0)
    assert got.GetPixelID() == sitk.sitkFloat32 and got.GetSize() == reference.GetSize()
    assert got.GetOrigin() == reference.GetOrigin() and got.GetSpacing() == reference.GetSpacing()
    arr = sitk.GetArrayFromImage(got)
    assert 0 < np.count_nonzero(arr == -1000.0) < arr.size  # some of the grid maps outside the moving image
    assert np.max(np.abs(arr - expected)) <= 1e-3  # float32 of ~300: the same interpolation, to rounding
    assert jacobian_stats(t, reference, field=field) == jacobian_stats(t, reference)
