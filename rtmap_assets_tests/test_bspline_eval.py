"""The B-spline transform evaluated by tensor products (imaging.bspline_eval) equals SimpleITK's own evaluation:
whole displacement fields (grid.displacement_field's fast path) and the coarse-to-fine refit of the registration."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from rtmap_assets.imaging import bspline_eval as be
from rtmap_assets.imaging import grid as wg
from rtmap_assets.imaging.registration.bspline_mi import _refit_sparse


def _grid(size, spacing, origin) -> sitk.Image:
    image = sitk.Image(list(size), sitk.sitkUInt8)
    image.SetSpacing(tuple(spacing))
    image.SetOrigin(tuple(origin))
    return image


def _bspline(domain: sitk.Image, mesh, seed: int, amplitude: float = 4.0) -> sitk.BSplineTransform:
    bspline = sitk.BSplineTransformInitializer(domain, list(mesh), order=3)
    rng = np.random.default_rng(seed)
    bspline.SetParameters(tuple(rng.uniform(-amplitude, amplitude, len(bspline.GetParameters()))))
    return bspline


def _rigid() -> sitk.Euler3DTransform:
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter((3.0, -2.0, 7.0))
    rigid.SetRotation(0.04, -0.03, 0.06)
    rigid.SetTranslation((5.0, -3.0, 4.0))
    return rigid


def _itk_field(transform: sitk.Transform, reference: sitk.Image) -> np.ndarray:
    to_field = sitk.TransformToDisplacementFieldFilter()
    to_field.SetReferenceImage(reference)
    to_field.SetOutputPixelType(sitk.sitkVectorFloat64)
    return sitk.GetArrayFromImage(to_field.Execute(transform))


DOMAIN = _grid((30, 28, 26), (2.0, 2.0, 2.0), (-30.0, -28.0, -26.0))


@pytest.mark.parametrize("lattice", [
    DOMAIN,  # the grid the B-spline was made on (its upper edge exactly on the valid region's edge)
    _grid((37, 23, 41), (0.7, 1.3, 2.9), (-41.3, -35.1, -60.3)),  # odd spacings, reaching outside the valid region
])
def test_lattice_displacement_equals_itk_for_the_sitk_engines_transform(lattice):
    composite = sitk.CompositeTransform(_rigid())
    composite.AddTransform(_bspline(DOMAIN, [3, 2, 4], seed=3))  # applied first: p -> rigid(p + u(p))
    got = be.lattice_displacement(composite, lattice)
    expected = _itk_field(composite, lattice)
    assert got is not None and got.shape == expected.shape
    assert np.max(np.abs(got - expected)) < 1e-9
    # lone parts too, and through a transform file (generic sitk.Transform objects)
    for part in (_bspline(DOMAIN, [2, 2, 2], seed=4), _rigid()):
        assert np.max(np.abs(be.lattice_displacement(part, lattice) - _itk_field(part, lattice))) < 1e-9
    outside = be.lattice_displacement(_bspline(DOMAIN, [2, 2, 2], seed=5), lattice)
    if lattice is not DOMAIN:  # beyond the valid region ITK leaves points unmoved: so do the tensor products
        assert np.any(np.all(outside == 0.0, axis=-1)) and np.any(np.abs(outside) > 0.1)


def test_field_falls_back_to_itk_where_the_weights_are_not_separable():
    composite = sitk.CompositeTransform(_bspline(DOMAIN, [3, 2, 4], seed=3))
    composite.AddTransform(_rigid())  # rigid first, then the B-spline on rotated points (elastix's order)
    assert be.lattice_displacement(composite, DOMAIN) is None
    tilted = sitk.Image(DOMAIN)
    tilted.SetDirection(sitk.VersorTransform((0, 0, 1), 0.3).GetMatrix())
    assert be.lattice_displacement(_rigid(), tilted) is None
    for transform, reference in ((composite, DOMAIN), (_rigid(), tilted)):
        field = sitk.GetArrayFromImage(wg.displacement_field(transform, reference))
        assert np.max(np.abs(field - _itk_field(transform, reference))) == 0.0


def test_refit_per_axis_equals_the_sparse_least_squares():
    source = _bspline(DOMAIN, [2, 2, 2], seed=6)
    target = sitk.BSplineTransformInitializer(DOMAIN, [4, 3, 5], order=3)
    got = be.refit_coefficients(source, target, DOMAIN, step=3)
    expected = _refit_sparse(source, target, DOMAIN, 3)
    assert got is not None and got.shape == expected.shape
    assert np.max(np.abs(got - expected)) < 1e-6 * np.max(np.abs(expected))
    # and the fit is a good one: the finer grid reproduces the coarse displacement inside the domain
    target.SetParameters(tuple(float(v) for v in got))
    inner = _grid((20, 18, 16), (2.0, 2.0, 2.0), (-20.0, -18.0, -16.0))
    err = be.lattice_displacement(target, inner) - be.lattice_displacement(source, inner)
    assert np.max(np.abs(err)) < 0.05
