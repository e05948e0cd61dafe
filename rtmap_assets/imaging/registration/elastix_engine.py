"""The ``"elastix"`` engine: the seed's elastix parameter maps (AdvancedMattesMutualInformation;
Translation, EulerTransform, BSplineTransform with FinalGridSpacingInPhysicalUnits 30) run in-process by
itk-elastix, and the conversion of elastix's result parameter maps into exact SimpleITK transforms
(shared with the ``"skrt"`` engine).

itk-elastix leaves the initial transform out of the transform it returns, so the landmark translation
`t0` is applied by shifting the moving image's origin by -t0 and composed back afterwards. The result is
not a displacement field sampled on the planning working grid (which would map every point outside that
grid to itself, landmark shift included) but the composite of elastix's own transforms:

    p -> B(E(T(p))) + t0        (elastix's "Compose": each stage acts on its initial transform's output)

so points outside the grid map by the translation/rigid part (and the B-spline where its grid reaches).
Checked against transformix's deformation field (float32) to 5e-7 mm; the one difference is a point lying
exactly on the upper edge of the B-spline's valid region, which ITK still deforms and elastix does not.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ParameterMap = Mapping[str, Sequence[str]]


def elastix_parameter_maps(bspline_grid_mm: float = 30.0) -> list[dict[str, list[str]]]:
    """The seed's three elastix stages as plain dicts (usable by itk-elastix and written for the CLI)."""
    common = {
        "FixedInternalImagePixelType": ["float"], "MovingInternalImagePixelType": ["float"],
        "FixedImageDimension": ["3"], "MovingImageDimension": ["3"],
        "UseDirectionCosines": ["true"],
        "Registration": ["MultiResolutionRegistration"],
        "Interpolator": ["BSplineInterpolator"], "ResampleInterpolator": ["FinalBSplineInterpolator"],
        "Resampler": ["DefaultResampler"],
        "FixedImagePyramid": ["FixedSmoothingImagePyramid"], "MovingImagePyramid": ["MovingSmoothingImagePyramid"],
        "Optimizer": ["AdaptiveStochasticGradientDescent"],
        "Metric": ["AdvancedMattesMutualInformation"], "NumberOfHistogramBins": ["32"],
        "ImageSampler": ["RandomCoordinate"], "NumberOfSpatialSamples": ["2048"],
        "NewSamplesEveryIteration": ["true"], "CheckNumberOfSamples": ["false"],
        "BSplineInterpolationOrder": ["1"], "FinalBSplineInterpolationOrder": ["3"],
        "DefaultPixelValue": ["-1000"], "WriteResultImage": ["false"],
        "ResultImagePixelType": ["float"], "ResultImageFormat": ["nii"],
        "HowToCombineTransforms": ["Compose"], "AutomaticTransformInitialization": ["false"],
    }
    translation = dict(common, Transform=["TranslationTransform"], NumberOfResolutions=["3"],
                       MaximumNumberOfIterations=["250"], AutomaticScalesEstimation=["true"])
    rigid = dict(common, Transform=["EulerTransform"], NumberOfResolutions=["3"],
                 MaximumNumberOfIterations=["250"], AutomaticScalesEstimation=["true"],
                 AutomaticTransformInitialization=["false"])
    bspline = dict(common, Transform=["BSplineTransform"], NumberOfResolutions=["3"],
                   MaximumNumberOfIterations=["500"],
                   FinalGridSpacingInPhysicalUnits=[f"{bspline_grid_mm:g}"],
                   GridSpacingSchedule=["4", "2", "1"])
    return [translation, rigid, bspline]


def write_parameter_file(params: ParameterMap, path: Path) -> None:
    """elastix parameter-file text: `(Key value ...)`, strings quoted."""
    lines = []
    for key, values in params.items():
        vals = " ".join(v if _is_number(v) else f'"{v}"' for v in values)
        lines.append(f"({key} {vals})")
    path.write_text("\n".join(lines) + "\n")


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def shifted(image: sitk.Image, t0: np.ndarray) -> sitk.Image:
    """Copy of `image` moved by -t0 in physical space, so the landmark start becomes the identity."""
    out = sitk.Image(image)
    out.SetOrigin(tuple(np.asarray(image.GetOrigin()) - t0))
    return out


# ------------------------------------------------------------------------- result maps -> SimpleITK


class UnsupportedElastixTransform(ValueError):
    """An elastix result parameter map this module cannot convert exactly (refused rather than approximated)."""


def _values(params: ParameterMap, key: str, n: int | None = None) -> list[float]:
    if key not in params:
        raise UnsupportedElastixTransform(f"elastix parameter map has no {key!r} (transform {params.get('Transform')})")
    vals = [float(v) for v in params[key]]
    if n is not None and len(vals) != n:
        raise UnsupportedElastixTransform(f"elastix {key!r} has {len(vals)} values, expected {n}")
    return vals


def _word(params: ParameterMap, key: str, default: str) -> str:
    return str(params.get(key, [default])[0]).strip('"')


def elastix_stage_transform(params: ParameterMap) -> sitk.Transform:
    """One elastix result parameter map (TranslationTransform, EulerTransform or cubic BSplineTransform,
    3-D, combined by "Compose") as the equal SimpleITK transform, fixed point -> moving point."""
    kind = _word(params, "Transform", "")
    dim = int(_word(params, "FixedImageDimension", "3"))
    if dim != 3 or int(_word(params, "MovingImageDimension", "3")) != 3:
        raise UnsupportedElastixTransform(f"elastix {kind} is {dim}-D; only 3-D transforms are converted")
    combine = _word(params, "HowToCombineTransforms", "Compose")
    if combine != "Compose":
        raise UnsupportedElastixTransform(f"elastix HowToCombineTransforms {combine!r}; only 'Compose' is converted")
    if kind == "TranslationTransform":
        return sitk.TranslationTransform(3, _values(params, "TransformParameters", 3))
    if kind == "EulerTransform":
        euler = sitk.Euler3DTransform()
        euler.SetCenter(_values(params, "CenterOfRotationPoint", 3))
        euler.SetComputeZYX(_word(params, "ComputeZYX", "false") == "true")
        euler.SetParameters(_values(params, "TransformParameters", 6))  # (rx, ry, rz, tx, ty, tz), as ITK
        return euler
    if kind == "BSplineTransform":
        order = int(_word(params, "BSplineTransformSplineOrder", "3"))
        if order != 3 or _word(params, "UseCyclicTransform", "false") != "false":
            raise UnsupportedElastixTransform(f"elastix B-spline of order {order} / cyclic: only cubic, non-cyclic")
        size = _values(params, "GridSize", 3)
        if any(v != 0 for v in _values(params, "GridIndex", 3)):
            raise UnsupportedElastixTransform(f"elastix B-spline GridIndex {params['GridIndex']}: only 0 0 0")
        # elastix writes direction matrices column by column; ITK's fixed parameters hold them row by row.
        direction = np.asarray(_values(params, "GridDirection", 9)).reshape(3, 3).T
        fixed = (size + _values(params, "GridOrigin", 3) + _values(params, "GridSpacing", 3)
                 + direction.ravel().tolist())
        bspline = sitk.BSplineTransform(3, 3)
        bspline.SetFixedParameters(fixed)
        bspline.SetParameters(_values(params, "TransformParameters", 3 * int(np.prod(size))))
        return bspline
    raise UnsupportedElastixTransform(f"elastix transform {kind!r} is not converted (Translation, Euler, BSpline)")


def transform_from_elastix(maps: Sequence[ParameterMap], t0_mm: np.ndarray) -> sitk.CompositeTransform:
    """The chain of elastix result maps (first = the innermost, elastix's initial transform) followed by the
    landmark translation `t0_mm`, as one SimpleITK composite: p -> S_n(...S_1(p)) + t0."""
    if not maps:
        raise UnsupportedElastixTransform("elastix returned no transform parameter maps")
    stages = [elastix_stage_transform(m) for m in maps]
    # CompositeTransform applies the last-added transform first.
    return sitk.CompositeTransform([sitk.TranslationTransform(3, [float(v) for v in t0_mm]), *reversed(stages)])


def parameter_maps_of(result_params) -> list[dict[str, list[str]]]:
    """itk-elastix's result ParameterObject as plain dicts, in chain order."""
    return [{k: [str(v) for v in vals] for k, vals in result_params.GetParameterMap(i).items()}
            for i in range(result_params.GetNumberOfParameterMaps())]


# ------------------------------------------------------------------------------------------ engine


def _sitk_to_itk(image: sitk.Image, dtype=np.float32):
    import itk

    out = itk.GetImageFromArray(np.ascontiguousarray(sitk.GetArrayViewFromImage(image), dtype=dtype))
    out.SetOrigin(image.GetOrigin())
    out.SetSpacing(image.GetSpacing())
    out.SetDirection(itk.matrix_from_array(np.asarray(image.GetDirection()).reshape(3, 3)))
    return out


def register_elastix(fixed: sitk.Image, moving: sitk.Image, t0: np.ndarray, bspline_grid_mm: float,
                     mask: sitk.Image | None, threads: int) -> tuple[sitk.Transform, dict[str, float], float | None]:
    """itk-elastix from the landmark start; the transform is elastix's own chain + t0 (module docstring)."""
    import itk

    timings: dict[str, float] = {}
    t = time.perf_counter()
    fixed_itk = _sitk_to_itk(fixed)
    moving_itk = _sitk_to_itk(shifted(moving, t0))
    pobj = itk.ParameterObject.New()
    for params in elastix_parameter_maps(bspline_grid_mm):
        pobj.AddParameterMap(params)
    kwargs = {}
    if mask is not None:
        kwargs["fixed_mask"] = _sitk_to_itk(mask, np.uint8)
    with tempfile.TemporaryDirectory(prefix="rtmap_elastix_") as tmp:
        _, result_params = itk.elastix_registration_method(
            fixed_itk, moving_itk, parameter_object=pobj, log_to_console=False,
            number_of_threads=threads, output_directory=tmp, **kwargs)
    timings["elastix_s"] = time.perf_counter() - t
    transform = transform_from_elastix(parameter_maps_of(result_params), t0)
    return transform, timings, None
