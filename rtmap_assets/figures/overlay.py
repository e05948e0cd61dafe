"""Per-patient overlay figure for clinical physicists: can this classification be trusted?

Three orthogonal slices through the mapped-recurrence centroid: planning CT (W400/L40), a dose
colour wash (transparent below a floor), the 95 % isodose line of each level present, the CTV
contours, the mapped recurrence and the uncertainty sphere. Orientation: the image is read in LPS
(reoriented if its direction is not the identity); axial and coronal show the patient's left on
the viewer's right (radiological convention); axial has anterior up; coronal and sagittal have
superior up; sagittal has anterior on the left. Pixels are square in mm (extent in mm, equal aspect).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless; the pipeline never opens windows
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from rtmap_assets.config import LEVELS  # noqa: E402
from rtmap_assets.lake import atomic_write  # noqa: E402
from rtmap_assets.pipeline.volumes import PatientVolumes  # noqa: E402

CT_WINDOW = (40.0 - 200.0, 40.0 + 200.0)  # W400 / L40
LEVEL_COLOURS = {"low": "#1f9bff", "intermediate": "#ffb000", "high": "#ff2d2d"}
RECURRENCE_COLOUR = "#39ff14"
SPHERE_COLOUR = "white"


@dataclass
class OverlayContext:
    """What the figure shows besides the volumes: the classification's geometry and labels."""

    patient_id: str
    arm: str
    centroid_mm: tuple[float, float, float]
    recurrence: sitk.Image
    sphere: sitk.Image
    ctvs: Mapping[str, sitk.Image | None] = field(default_factory=dict)  # level -> CTV mask
    prescriptions: Mapping[str, float] | None = None  # level -> Gy (None: arm not resolved)
    isodose_fraction: float = 0.95
    class_summary: str = ""  # one line, e.g. "high: centroid 1, volume 2, Dawson marginal | Mohamed B"
    dose_floor_gy: float = 2.0  # no colour wash below this dose
    half_width_mm: float | None = 80.0  # zoom: show centroid ± this (clipped to the grid); None = whole grid


def _lps(image: sitk.Image) -> sitk.Image:
    identity = np.allclose(np.asarray(image.GetDirection()).reshape(3, 3), np.eye(3))
    return image if identity else sitk.DICOMOrient(image, "LPS")


def _arr(image: sitk.Image | None) -> np.ndarray | None:
    return None if image is None else sitk.GetArrayFromImage(_lps(image))


def _axes_mm(image: sitk.Image) -> list[np.ndarray]:
    """Voxel-centre coordinates (mm) along x, y, z of an LPS-oriented image."""
    o, s, n = image.GetOrigin(), image.GetSpacing(), image.GetSize()
    return [o[k] + s[k] * np.arange(n[k]) for k in range(3)]


def _slices(arr: np.ndarray, ijk: tuple[int, int, int]) -> list[np.ndarray]:
    i, j, k = ijk
    # axial (rows y, cols x), coronal (rows z, cols x), sagittal (rows z, cols y)
    return [arr[k, :, :], arr[:, j, :], arr[:, :, i]]


def render_overlay(volumes: PatientVolumes, context: OverlayContext, out_png: Path, *, dpi: int = 100) -> Path:
    """Write the overlay PNG (atomically) and return its path."""
    image = _lps(volumes.image)
    ct = sitk.GetArrayFromImage(image)
    dose = _arr(volumes.dose)
    xs, ys, zs = _axes_mm(image)
    idx = image.TransformPhysicalPointToIndex(tuple(float(v) for v in context.centroid_mm))
    ijk = tuple(int(np.clip(idx[d], 0, image.GetSize()[d] - 1)) for d in range(3))
    coords = [(xs, ys), (xs, zs), (ys, zs)]
    names = [f"axial z={zs[ijk[2]]:.0f} mm", f"coronal y={ys[ijk[1]]:.0f} mm", f"sagittal x={xs[ijk[0]]:.0f} mm"]
    centre = context.centroid_mm
    marks = [(centre[0], centre[1]), (centre[0], centre[2]), (centre[1], centre[2])]

    present = {lvl: p for lvl, p in (context.prescriptions or {}).items() if p > 0}
    vmax = 1.1 * max(present.values()) if present else (float(dose.max()) if dose is not None and dose.size else 1.0)
    overlays = {"recurrence": _arr(context.recurrence), "sphere": _arr(context.sphere)}
    ctvs = {lvl: _arr(m) for lvl, m in context.ctvs.items() if m is not None}

    fig, axes = plt.subplots(1, 3, figsize=(16, 6.8), dpi=dpi)
    for p, ax in enumerate(axes):
        u, v = coords[p]
        du, dv = (u[1] - u[0]) if len(u) > 1 else 1.0, (v[1] - v[0]) if len(v) > 1 else 1.0
        extent = (u[0] - du / 2, u[-1] + du / 2, v[0] - dv / 2, v[-1] + dv / 2)
        ax.imshow(_slices(ct, ijk)[p], cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1],
                  origin="lower", extent=extent, interpolation="nearest")
        if dose is not None:
            ds = _slices(dose, ijk)[p]
            ax.imshow(np.ma.masked_less(ds, context.dose_floor_gy), cmap="jet", vmin=0, vmax=vmax, alpha=0.35,
                      origin="lower", extent=extent, interpolation="nearest")
            for lvl, pres in present.items():
                thr = context.isodose_fraction * pres
                if ds.min() < thr <= ds.max():
                    ax.contour(u, v, ds, levels=[thr], colors=LEVEL_COLOURS[lvl], linewidths=1.2, linestyles="--")
        for lvl, m in ctvs.items():
            s = _slices(m, ijk)[p]
            if s.any():
                ax.contour(u, v, s.astype(float), levels=[0.5], colors=LEVEL_COLOURS.get(lvl, "cyan"), linewidths=1.0)
        for key, colour, style in (("recurrence", RECURRENCE_COLOUR, "-"), ("sphere", SPHERE_COLOUR, ":")):
            s = _slices(overlays[key], ijk)[p]
            if s.any():
                ax.contour(u, v, s.astype(float), levels=[0.5], colors=colour, linewidths=1.5, linestyles=style)
        ax.plot(*marks[p], marker="+", color=SPHERE_COLOUR, markersize=10, mew=1.5)
        ax.set_aspect("equal")
        (u0, u1), (v0, v1) = (extent[0], extent[1]), (extent[2], extent[3])
        if context.half_width_mm is not None:
            hw = context.half_width_mm
            u0, u1 = max(u0, marks[p][0] - hw), min(u1, marks[p][0] + hw)
            v0, v1 = max(v0, marks[p][1] - hw), min(v1, marks[p][1] + hw)
        ax.set_xlim(u0, u1)
        ax.set_ylim((v1, v0) if p == 0 else (v0, v1))  # axial: anterior (small y) at the top
        ax.set_title(names[p], fontsize=10)
        ax.set_xlabel(["x (mm, → patient left)", "x (mm, → patient left)", "y (mm, → posterior)"][p], fontsize=8)
        ax.set_ylabel(["y (mm, ↑ anterior)", "z (mm, ↑ superior)", "z (mm, ↑ superior)"][p], fontsize=8)
        ax.tick_params(labelsize=7)

    handles = [Line2D([], [], color=RECURRENCE_COLOUR, lw=1.5, label="mapped recurrence"),
               Line2D([], [], color="black", lw=1.5, ls=":", label="uncertainty sphere (white)")]
    for lvl in LEVELS:
        if lvl in ctvs:
            handles.append(Line2D([], [], color=LEVEL_COLOURS[lvl], lw=1.0, label=f"CTV {lvl}"))
        if lvl in present:
            handles.append(Line2D([], [], color=LEVEL_COLOURS[lvl], lw=1.2, ls="--",
                                  label=f"{context.isodose_fraction:.0%} of {present[lvl]:g} Gy ({lvl})"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8, frameon=False)
    fig.suptitle(f"{context.patient_id} — arm {context.arm}\n{context.class_summary}", fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))

    out_png = Path(out_png)
    atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out_png
