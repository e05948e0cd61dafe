"""Per-patient overlay figure for clinical physicists: can this classification be trusted?

Three orthogonal slices through the mapped-recurrence centroid: planning CT (W400/L40), a dose
colour wash with its colour bar (transparent below a fraction of the highest prescription, so the
anatomy stays readable), the 95 % isodose line of each level present, the CTV contours, the mapped
recurrence and the uncertainty sphere; when the registered relapse image is given, a fourth panel
shows its axial slice with the relapse contour mapped through the same transform (a
misregistration shows as the contour off the relapse anatomy). A footer explains the class codes. Orientation: the image is read in LPS
(reoriented if its direction is not the identity); axial and coronal show the patient's left on
the viewer's right (radiological convention); axial has anterior up; coronal and sagittal have
superior up; sagittal has anterior on the left. Pixels are square in mm (extent in mm, equal aspect).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure  # no pyplot: headless, no global figure state (~0.2 s less import)
from matplotlib.lines import Line2D

from rtmap_assets.config import LEVELS
from rtmap_assets.figures.codes import codes_legend_text
from rtmap_assets.lake import atomic_write
from rtmap_assets.pipeline.volumes import PatientVolumes

CT_WINDOW = (40.0 - 200.0, 40.0 + 200.0)  # W400 / L40
LEVEL_COLOURS = {"low": "#1f9bff", "intermediate": "#ffb000", "high": "#ff2d2d"}
RECURRENCE_COLOUR = "#39ff14"
RELAPSE_CONTOUR_COLOUR = "#ff00ff"
SPHERE_COLOUR = "white"
LEGEND_FACE = "#3a3a3a"  # dark legend box: the white sphere and the neon recurrence swatches must show


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
    dose_floor_gy: float = 2.0  # no colour wash below this dose when no prescription is known
    dose_floor_fraction: float = 0.3  # no colour wash below this fraction of the highest prescription
    half_width_mm: float | None = 80.0  # zoom: show centroid ± this (clipped to the grid); None = whole grid
    registered_relapse: sitk.Image | None = None  # relapse image resampled onto the working grid (4th panel)
    relapse_contour: sitk.Image | None = None  # the relapse contour on the working grid; None = `recurrence`


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
    floor = context.dose_floor_fraction * max(present.values()) if present else context.dose_floor_gy
    vmax = max(vmax, floor + 1e-3)
    relapse = _arr(context.registered_relapse)
    overlays = {"recurrence": _arr(context.recurrence), "sphere": _arr(context.sphere)}
    ctvs = {lvl: _arr(m) for lvl, m in context.ctvs.items() if m is not None}

    n_panels = 4 if relapse is not None else 3
    fig = Figure(figsize=(16 if n_panels == 3 else 21, 7.6), dpi=dpi)
    axes = fig.subplots(1, n_panels)
    for p, ax in enumerate(axes[:3]):
        u, v = coords[p]
        du, dv = (u[1] - u[0]) if len(u) > 1 else 1.0, (v[1] - v[0]) if len(v) > 1 else 1.0
        extent = (u[0] - du / 2, u[-1] + du / 2, v[0] - dv / 2, v[-1] + dv / 2)
        ax.imshow(_slices(ct, ijk)[p], cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1],
                  origin="lower", extent=extent, interpolation="nearest")
        if dose is not None:
            ds = _slices(dose, ijk)[p]
            ax.imshow(np.ma.masked_less(ds, floor), cmap="jet", vmin=floor, vmax=vmax, alpha=0.35,
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

    if relapse is not None:
        _relapse_panel(axes[3], relapse, _arr(context.relapse_contour if context.relapse_contour is not None
                                              else context.recurrence), ctvs, ijk, coords[0], marks[0], context)
    if dose is not None:
        # the wash's colour bar (alpha as drawn, so the colours match the panels)
        fig.subplots_adjust(left=0.045, right=0.925, top=0.86, bottom=0.25, wspace=0.28)
        bar = fig.colorbar(ScalarMappable(Normalize(floor, vmax), "jet"), cax=fig.add_axes((0.94, 0.3, 0.01, 0.52)),
                           alpha=0.35)
        bar.set_label(f"dose (Gy), wash from {floor:.1f} Gy", fontsize=8)
        bar.ax.tick_params(labelsize=7)

    handles = legend_handles(context, present, set(ctvs), relapse is not None)
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.075), ncol=min(len(handles), 5),
               fontsize=8, frameon=True, framealpha=1.0, facecolor=LEGEND_FACE, edgecolor=LEGEND_FACE,
               labelcolor="white")
    fig.text(0.5, 0.005, "\n".join(codes_legend_text()), ha="center", va="bottom", fontsize=7, color="#333")
    fig.suptitle(f"{context.patient_id} — arm {context.arm}\n{context.class_summary}", fontsize=11)
    if dose is None:  # (with a dose, the margins were fixed above to make room for the colour bar)
        fig.tight_layout(rect=(0, 0.18, 1, 0.95))

    out_png = Path(out_png)
    atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png"))
    return out_png


def legend_handles(context: OverlayContext, present: Mapping[str, float], ctv_levels: set[str],
                   relapse_panel: bool) -> list[Line2D]:
    """Legend entries, drawn in the colours and styles of the panels (on the dark LEGEND_FACE box)."""
    handles = [Line2D([], [], color=RECURRENCE_COLOUR, lw=1.5, label="mapped recurrence"),
               Line2D([], [], color=SPHERE_COLOUR, lw=1.5, ls=":", label="uncertainty sphere")]
    if relapse_panel:
        handles.append(Line2D([], [], color=RELAPSE_CONTOUR_COLOUR, lw=1.5, label="relapse contour (registered)"))
    for lvl in LEVELS:
        if lvl in ctv_levels:
            handles.append(Line2D([], [], color=LEVEL_COLOURS[lvl], lw=1.0, label=f"CTV {lvl}"))
        if lvl in present:
            handles.append(Line2D([], [], color=LEVEL_COLOURS[lvl], lw=1.2, ls="--",
                                  label=f"{context.isodose_fraction:.0%} of {present[lvl]:g} Gy ({lvl})"))
    return handles


def _relapse_panel(ax, relapse: np.ndarray, contour: np.ndarray | None, ctvs: Mapping[str, np.ndarray],
                   ijk: tuple[int, int, int], uv: tuple[np.ndarray, np.ndarray], mark: tuple[float, float],
                   context: OverlayContext) -> None:
    """Axial slice of the registered relapse image with the relapse contour and the CTVs."""
    u, v = uv
    sl = _slices(relapse, ijk)[0]
    is_ct = bool(np.nanmin(relapse) < -500)  # a CT has air; an MR has no negative values
    lo, hi = CT_WINDOW if is_ct else tuple(np.percentile(sl, [1, 99]))
    du, dv = (u[1] - u[0]) if len(u) > 1 else 1.0, (v[1] - v[0]) if len(v) > 1 else 1.0
    extent = (u[0] - du / 2, u[-1] + du / 2, v[0] - dv / 2, v[-1] + dv / 2)
    ax.imshow(sl, cmap="gray", vmin=lo, vmax=max(hi, lo + 1), origin="lower", extent=extent, interpolation="nearest")
    for lvl, m in ctvs.items():
        s = _slices(m, ijk)[0]
        if s.any():
            ax.contour(u, v, s.astype(float), levels=[0.5], colors=LEVEL_COLOURS.get(lvl, "cyan"), linewidths=0.8)
    if contour is not None and _slices(contour, ijk)[0].any():
        ax.contour(u, v, _slices(contour, ijk)[0].astype(float), levels=[0.5], colors=RELAPSE_CONTOUR_COLOUR,
                   linewidths=1.5)
    ax.plot(*mark, marker="+", color=SPHERE_COLOUR, markersize=10, mew=1.5)
    ax.set_aspect("equal")
    (u0, u1), (v0, v1) = (extent[0], extent[1]), (extent[2], extent[3])
    if context.half_width_mm is not None:
        hw = context.half_width_mm
        u0, u1 = max(u0, mark[0] - hw), min(u1, mark[0] + hw)
        v0, v1 = max(v0, mark[1] - hw), min(v1, mark[1] + hw)
    ax.set_xlim(u0, u1)
    ax.set_ylim(v1, v0)
    ax.set_title(f"registered relapse ({'CT' if is_ct else 'MR'}), axial", fontsize=10)
    ax.set_xlabel("x (mm, → patient left)", fontsize=8)
    ax.set_ylabel("y (mm, ↑ anterior)", fontsize=8)
    ax.tick_params(labelsize=7)
