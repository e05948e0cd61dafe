"""Mapped-mask volume: the former 0.5-cut of a linearly interpolated 0/1 mask against
`rtmap_assets.imaging.grid.resample_mask` (volume from the interpolated occupancy's integral, placed by
the signed distance), on spheres (5-30 mm) and ellipsoids through identity, half-voxel shifts, an
arbitrary shift, small rotations and a 1.1x scaling.

    .venv/bin/python benchmarks/mask_volume_benchmark.py

Two settings: (a) source mask on the same 2 mm lattice as the target, compared with the source's
voxel volume through the transform's volume change; (b) source rasterised on 1 mm (as the imaging
stage rasterises relapse contours) mapped onto 2 mm, same comparison. Errors in % of that volume.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from rtmap_assets.imaging.grid import resample, resample_mask

CENTRE = np.array([0.3, -0.2, 0.1])
SHAPES = {**{f"sphere r{r}": (r, r, r) for r in (5, 10, 20, 30)},
          "ellipsoid 6/9/12": (6, 9, 12), "ellipsoid 15/25/10": (15, 25, 10)}


def half_cut(mask: sitk.Image, reference: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """The former method: linear interpolation of the 0/1 mask, >= 0.5."""
    frac = resample(sitk.Cast(mask, sitk.sitkFloat32), reference, transform=transform, default_value=0.0)
    return sitk.Cast(frac >= 0.5, sitk.sitkUInt8)


def lattice(n: int, spacing: float, origin: float) -> sitk.Image:
    img = sitk.Image([n] * 3, sitk.sitkUInt8)
    img.SetSpacing((spacing,) * 3)
    img.SetOrigin((origin,) * 3)
    return img


def ellipsoid(ref: sitk.Image, radii) -> sitk.Image:
    n, s, o = ref.GetSize()[0], ref.GetSpacing()[0], ref.GetOrigin()[0]
    c = o + s * np.arange(n)
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    q = sum(((v - CENTRE[k]) / radii[k]) ** 2 for k, v in enumerate((x, y, z))) <= 1
    m = sitk.GetImageFromArray(q.astype(np.uint8))
    m.CopyInformation(ref)
    return m


def transforms() -> dict[str, tuple[sitk.Transform, float]]:
    """name -> (transform, determinant of its linear part)."""
    def euler(rx, ry, rz, shift=(0.0, 0.0, 0.0)):
        t = sitk.Euler3DTransform()
        t.SetRotation(*np.deg2rad([rx, ry, rz]))
        t.SetTranslation(shift)
        return t
    scale = sitk.AffineTransform(3)
    scale.SetMatrix((1.1, 0, 0, 0, 1.1, 0, 0, 0, 1.1))
    return {"identity": (sitk.TranslationTransform(3, (0.0, 0.0, 0.0)), 1.0),
            "half voxel x": (sitk.TranslationTransform(3, (1.0, 0.0, 0.0)), 1.0),
            "half voxel xyz": (sitk.TranslationTransform(3, (1.0, 1.0, 1.0)), 1.0),
            "shift 0.7,-0.4,1.3": (sitk.TranslationTransform(3, (0.7, -0.4, 1.3)), 1.0),
            "rot 5 z + shift": (euler(0, 0, 5, (0.4, -0.3, 0.7)), 1.0),
            "rot 3,-4,7": (euler(3, -4, 7), 1.0),
            "scale 1.1": (scale, 1.1**3)}


def run(source_grid: sitk.Image, label: str) -> None:
    target = lattice(64, 2.0, -63.0)
    ratio = np.prod(source_grid.GetSpacing()) / np.prod(target.GetSpacing())
    errors: dict[str, list[float]] = {"0.5-cut": [], "resample_mask": []}
    print(f"\n{label}")
    for name, radii in SHAPES.items():
        m = ellipsoid(source_grid, radii)
        n0 = int(sitk.GetArrayFromImage(m).sum())
        cells = []
        for tname, (t, det) in transforms().items():
            expected = n0 * ratio / det
            parts = []
            for method, fn in (("0.5-cut", half_cut), ("resample_mask", resample_mask)):
                e = 100 * (int(sitk.GetArrayFromImage(fn(m, target, t)).sum()) / expected - 1)
                errors[method].append(e)
                parts.append(f"{e:+6.2f}")
            cells.append(f"{tname}: {parts[0]} -> {parts[1]}")
        print(f"  {name:19s} " + " | ".join(cells))
    for method, e in errors.items():
        print(f"  {method:14s} mean {np.mean(e):+.2f} %, range {min(e):+.2f} .. {max(e):+.2f} %")


if __name__ == "__main__":
    run(lattice(64, 2.0, -63.0), "(a) 2 mm source -> 2 mm target, volume error % (0.5-cut -> resample_mask)")
    run(lattice(80, 1.0, -39.5), "(b) 1 mm source -> 2 mm target, volume error % (0.5-cut -> resample_mask)")
