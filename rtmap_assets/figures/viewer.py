"""Per-patient interactive viewer: one self-contained, offline plotly HTML page (plotly.js inlined).

What a physicist needs to judge one classification: the planning CT with a dose colour wash (clipped
below a fraction of the prescription, with a colour bar), each CTV and each 95 % isodose, the mapped
recurrence, the uncertainty sphere and its centroid (top row); the registered relapse image with the
relapse contour mapped through the same transform (bottom row), so a misregistration shows as the
contour not sitting on the relapse anatomy. One slider per orientation moves both rows; clicking a
legend entry toggles that structure in every panel. Below the figure: the classes of every scheme
with their codes explained.

Size: the volumes are cropped to a box around the recurrence centroid (`half_width_mm`) on the
working grid and stored once as base64 arrays (CT and relapse int16, dose uint16 in cGy, masks as
bits); a small script slices them when a slider moves. The page is plotly.js (~4.8 MB) plus
~0.3–1 MB of data, whatever the number of slices.

Orientation as in the overlay PNG (LPS, radiological): axial and coronal show the patient's left on
the viewer's right, axial has anterior up, coronal and sagittal superior up, sagittal anterior left.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import polars as pl
import SimpleITK as sitk
from plotly.subplots import make_subplots

from rtmap_assets.config import LEVELS
from rtmap_assets.dosimetry.regions import sphere as make_sphere
from rtmap_assets.figures.codes import codes_legend_html, explain_centroid, explain_volume
from rtmap_assets.lake import atomic_write
from rtmap_assets.pipeline.volumes import PatientVolumes

CT_WINDOW_HU = (40.0 - 200.0, 40.0 + 200.0)  # W400 / L40
LEVEL_COLOURS = {"low": "#1f9bff", "intermediate": "#ffb000", "high": "#ff2d2d"}
RECURRENCE_COLOUR = "#39ff14"
RELAPSE_CONTOUR_COLOUR = "#ff00ff"
SPHERE_COLOUR = "#ffffff"
DOSE_COLOURSCALE = "Jet"
ORIENTS = ("axial", "coronal", "sagittal")
AXIS_TITLES = {  # (horizontal, vertical) per orientation
    "axial": ("x (mm, → patient left)", "y (mm, ↑ anterior)"),
    "coronal": ("x (mm, → patient left)", "z (mm, ↑ superior)"),
    "sagittal": ("y (mm, → posterior)", "z (mm, ↑ superior)"),
}


@dataclass(frozen=True)
class _Box:
    """Crop of the working grid: index ranges [lo, hi) along x, y, z and the voxel-centre coordinates."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    axes_mm: tuple[np.ndarray, np.ndarray, np.ndarray]


def _lps(image: sitk.Image) -> sitk.Image:
    identity = np.allclose(np.asarray(image.GetDirection()).reshape(3, 3), np.eye(3))
    return image if identity else sitk.DICOMOrient(image, "LPS")


def crop_box(image: sitk.Image, centre_mm: tuple[float, float, float], half_width_mm: float) -> _Box:
    """Index box of `centre ± half_width_mm` (clipped to the grid) on an LPS-oriented image."""
    o, s, n = image.GetOrigin(), image.GetSpacing(), image.GetSize()
    lo, hi, axes = [], [], []
    for d in range(3):
        a = int(np.floor((centre_mm[d] - half_width_mm - o[d]) / s[d]))
        b = int(np.ceil((centre_mm[d] + half_width_mm - o[d]) / s[d])) + 1
        a, b = max(a, 0), min(b, n[d])
        if b <= a:  # centre far outside the grid: show the whole axis rather than nothing
            a, b = 0, n[d]
        lo.append(a)
        hi.append(b)
        axes.append(o[d] + s[d] * np.arange(a, b))
    return _Box(tuple(lo), tuple(hi), tuple(axes))


def _crop(image: sitk.Image | None, box: _Box) -> np.ndarray | None:
    if image is None:
        return None
    arr = sitk.GetArrayViewFromImage(_lps(image))
    return np.ascontiguousarray(arr[box.lo[2]:box.hi[2], box.lo[1]:box.hi[1], box.lo[0]:box.hi[0]])


def _slice(arr: np.ndarray, orient: str, idx: int) -> np.ndarray:
    """2-D slice (rows = vertical axis) of a [z, y, x] array."""
    if orient == "axial":
        return arr[idx, :, :]
    if orient == "coronal":
        return arr[:, idx, :]
    return arr[:, :, idx]


def _b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()).decode()


def _classes(classification: pl.DataFrame) -> dict:
    """Per-level rows and patient-level fields of this patient's recurrence_classification rows."""
    rows = {r["level"]: r for r in classification.iter_rows(named=True)}
    first = next(iter(rows.values())) if rows else {}
    return {"levels": rows, "first": first}


def _fmt(v, spec: str = "", missing: str = "—") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return missing
    return format(v, spec)


def classes_table_html(classification: pl.DataFrame) -> str:
    """The classes of every scheme for one patient, as an HTML table (absent levels shown as such)."""
    info = _classes(classification)
    head = ("<tr><th>level</th><th>prescription</th><th>CTV</th><th>centroid dose</th><th>centroid class</th>"
            "<th>sphere fraction ≥ 95 %</th><th>volume class</th><th>rGTV fraction ≥ 95 %</th><th>Dawson</th>"
            "<th>P(inside)</th></tr>")
    body = []
    for lvl in LEVELS:
        r = info["levels"].get(lvl)
        if r is None:
            continue
        if r.get("level_present") is None:
            body.append(f"<tr><td>{lvl}</td><td colspan='9'>arm {html.escape(str(r.get('arm')))}: no prescription "
                        "known, no class</td></tr>")
            continue
        if not r.get("level_present"):
            body.append(f"<tr><td>{lvl}</td><td colspan='9'>level absent in arm {html.escape(str(r.get('arm')))} "
                        "(no class)</td></tr>")
            continue
        p = r.get("prescription_gy")
        rel = (r["centroid_dose_gy"] / p) if p and r.get("centroid_dose_gy") is not None else None
        body.append(
            f"<tr><td>{lvl}</td><td>{_fmt(p, 'g')} Gy</td><td>{html.escape(str(r.get('ctv_name') or '—'))}</td>"
            f"<td>{_fmt(r.get('centroid_dose_gy'), '.1f')} Gy ({_fmt(rel, '.0%')})</td>"
            f"<td>{explain_centroid(r.get('centroid_class'))}</td>"
            f"<td>{_fmt(r.get('sphere_fraction'), '.0%')}</td><td>{explain_volume(r.get('volume_class'))}</td>"
            f"<td>{_fmt(r.get('dawson_fraction'), '.0%')}</td><td>{html.escape(str(r.get('dawson_class') or '—'))}</td>"
            f"<td>{_fmt(r.get('probability_inside'), '.2f')}</td></tr>")
    f = info["first"]
    summary = (f"arm <b>{html.escape(str(f.get('arm')))}</b> ({html.escape(str(f.get('arm_source')))}) · "
               f"Mohamed type <b>{html.escape(str(f.get('mohamed_type') or '—'))}</b> "
               f"<span class='muted'>({html.escape(str(f.get('mohamed_reason') or ''))})</span> · "
               f"sphere radius {_fmt(f.get('radius_mm'), '.1f')} mm ({html.escape(str(f.get('radius_policy')))} "
               f"policy) · landmark distance (uncertainty) {_fmt(f.get('uncertainty_mm'), '.1f')} mm · "
               f"σ for P(inside) {_fmt(f.get('sigma_mm'), '.1f')} mm")
    return f"<p>{summary}</p><table class='classes'>{head}{''.join(body)}</table>"


def _mask_bits(masks: list[np.ndarray]) -> np.ndarray:
    dtype = np.uint8 if len(masks) <= 8 else np.uint16
    bits = np.zeros(masks[0].shape, dtype=dtype) if masks else np.zeros((1, 1, 1), dtype=np.uint8)
    for b, m in enumerate(masks):
        bits |= (m.astype(dtype) << b)
    return bits


def _window(arr: np.ndarray, modality_ct: bool) -> tuple[float, float]:
    if modality_ct:
        return CT_WINDOW_HU
    lo, hi = np.percentile(arr, [1, 99]) if arr.size else (0.0, 1.0)
    return float(lo), float(max(hi, lo + 1))


def build_patient_viewer(
    volumes: PatientVolumes,
    classification: pl.DataFrame,
    *,
    registered_relapse: sitk.Image | None,
    relapse_contour_mask: sitk.Image | None,
    dose_floor_fraction: float,
    out: Path,
    isodose_fraction: float = 0.95,
    half_width_mm: float = 40.0,
    relapse_is_ct: bool | None = None,
    shared_plotlyjs: bool = False,
) -> Path:
    """Write the patient's viewer HTML (atomically) and return its path (arguments: `viewer_figure`).

    `shared_plotlyjs`: instead of inlining plotly.js (~4.8 MB per page), load `plotly.min.js` from the
    page's folder (written there once): still offline, ~1 MB per patient, for trial-size cohorts.
    """
    fig, data, note = viewer_figure(volumes, classification, registered_relapse=registered_relapse,
                                    relapse_contour_mask=relapse_contour_mask, dose_floor_fraction=dose_floor_fraction,
                                    isodose_fraction=isodose_fraction, half_width_mm=half_width_mm,
                                    relapse_is_ct=relapse_is_ct)
    if shared_plotlyjs:
        bundle = Path(out).parent / "plotly.min.js"
        if not bundle.exists():
            from plotly.offline import get_plotlyjs

            atomic_write(bundle, lambda tmp: tmp.write_text(get_plotlyjs(), encoding="utf-8"))
    plot = fig.to_html(full_html=False, include_plotlyjs="directory" if shared_plotlyjs else True, div_id="viewer",
                       config={"displaylogo": False, "responsive": False})
    page = _PAGE.format(
        title=html.escape(f"rtmap viewer — {volumes.patient_id}"), plot=plot, data=json.dumps(data), script=_SCRIPT,
        classes=classes_table_html(classification), codes=codes_legend_html(), note=html.escape(note))
    return atomic_write(Path(out), lambda tmp: tmp.write_text(page, encoding="utf-8"))


def viewer_figure(
    volumes: PatientVolumes,
    classification: pl.DataFrame,
    *,
    registered_relapse: sitk.Image | None,
    relapse_contour_mask: sitk.Image | None,
    dose_floor_fraction: float,
    isodose_fraction: float = 0.95,
    half_width_mm: float = 40.0,
    relapse_is_ct: bool | None = None,
) -> tuple[go.Figure, dict, str]:
    """(figure at the centroid's slices, the embedded volume data for the slider script, a caption).

    `classification`: this patient's recurrence_classification rows (one per level) — the centroid,
    sphere radius, prescriptions and classes come from there, so the page shows what was classified.
    `relapse_contour_mask`: the relapse RTSTRUCT's recurrence on the working grid (through the
    transform); None = the mapped recurrence of `volumes`. `dose_floor_fraction`: no colour wash below
    this fraction of the highest prescription (of the maximum dose if the arm is unresolved).
    `relapse_is_ct`: window of the relapse image (CT W400/L40, else 1st–99th percentile); None = guess
    from its values (a CT has air below −500).
    """
    info = _classes(classification)
    first = info["first"]
    if not first:
        raise ValueError(f"{volumes.patient_id}: no classification rows to show")
    centre = (float(first["centroid_x_mm"]), float(first["centroid_y_mm"]), float(first["centroid_z_mm"]))
    image = _lps(volumes.image)
    box = crop_box(image, centre, half_width_mm)
    xs, ys, zs = box.axes_mm
    coord = {"axial": (xs, ys), "coronal": (xs, zs), "sagittal": (ys, zs)}
    centre_idx = {o: int(np.clip(np.rint((centre[d] - box.axes_mm[d][0]) / image.GetSpacing()[d]), 0,
                                 len(box.axes_mm[d]) - 1)) for d, o in ((2, "axial"), (1, "coronal"), (0, "sagittal"))}
    pos = {"axial": zs, "coronal": ys, "sagittal": xs}

    ct = np.rint(np.clip(_crop(image, box), -1024, 3071)).astype(np.int16)
    dose_gy = _crop(volumes.dose, box) if volumes.dose is not None else np.zeros(ct.shape, np.float32)
    dose_cgy = np.rint(np.clip(dose_gy * 100.0, 0, 65535)).astype(np.uint16)
    rel = _crop(registered_relapse, box)
    if relapse_is_ct is None and rel is not None:
        relapse_is_ct = bool(rel.size and np.nanmin(rel) < -500)
    rel_i16 = None if rel is None else np.rint(np.clip(rel, -32768, 32767)).astype(np.int16)
    rel_window = _window(rel_i16, bool(relapse_is_ct)) if rel_i16 is not None else (0.0, 1.0)

    prescriptions = {lvl: r["prescription_gy"] for lvl, r in info["levels"].items()
                     if r.get("level_present") and r.get("prescription_gy")}
    p_max = max(prescriptions.values()) if prescriptions else float(dose_gy.max() if dose_gy.size else 1.0)
    floor_gy = dose_floor_fraction * p_max
    dose_max_gy = 1.1 * p_max if prescriptions else max(p_max, 1.0)

    # Masks (one bit each) and their legend entries.
    masks: list[np.ndarray] = []
    mask_specs: list[dict] = []  # {bit, name, colour, dash, rows}

    def add_mask(img: sitk.Image | None, name: str, colour: str, dash: str, rows: tuple[int, ...]) -> None:
        if img is None:
            return
        arr = _crop(img, box)
        if arr is None or not arr.any():
            return
        mask_specs.append({"bit": len(masks), "name": name, "colour": colour, "dash": dash, "rows": rows})
        masks.append(arr > 0)

    ctv_names = {lvl: r.get("ctv_name") for lvl, r in info["levels"].items() if r.get("level_present")}
    by_name = {s.name: s for s in volumes.find("ctv", "planning")}
    for lvl in LEVELS:
        name = ctv_names.get(lvl)
        if name and name in by_name:
            add_mask(by_name[name].mask, f"CTV {lvl}: {name}", LEVEL_COLOURS[lvl], "solid", (1, 2))
    recs = volumes.find("recurrence", "mapped")
    rec_mask = recs[0].mask if recs else None
    add_mask(rec_mask, f"mapped recurrence{': ' + recs[0].name if recs else ''}", RECURRENCE_COLOUR, "solid", (1,))
    radius = first.get("radius_mm")
    if radius and volumes.dose is not None:
        sph = make_sphere(volumes.dose, centre, float(radius))
        add_mask(sph.mask, f"sphere r = {radius:.1f} mm ({first.get('radius_policy')} policy)", SPHERE_COLOUR,
                 "dot", (1,))
    if registered_relapse is not None:
        add_mask(relapse_contour_mask if relapse_contour_mask is not None else rec_mask,
                 "relapse contour (through the registration)", RELAPSE_CONTOUR_COLOUR, "solid", (2,))
    bits = _mask_bits(masks)

    rows = 2 if rel_i16 is not None else 1
    titles = [f"planning CT + dose — {o}" for o in ORIENTS]
    if rows == 2:
        titles += [f"registered relapse image — {o}" for o in ORIENTS]
    fig = make_subplots(rows=rows, cols=3, subplot_titles=titles, horizontal_spacing=0.06,
                        vertical_spacing=0.09 if rows == 2 else 0.1)
    legend_seen: set[str] = set()

    def legend(name: str) -> dict:
        show = name not in legend_seen
        legend_seen.add(name)
        return {"legendgroup": name, "name": name, "showlegend": show}

    for c, orient in enumerate(ORIENTS, start=1):
        u, v = coord[orient]
        k = centre_idx[orient]
        meta = lambda kind, **kw: {"kind": kind, "orient": orient, **kw}  # noqa: E731
        fig.add_trace(go.Heatmap(
            x=u, y=v, z=_slice(ct, orient, k), colorscale="Greys_r", zmin=CT_WINDOW_HU[0], zmax=CT_WINDOW_HU[1],
            showscale=False, meta=meta("ct"), name="planning CT", hovertemplate="%{z} HU<extra>planning CT</extra>"),
            row=1, col=c)
        wash = _slice(dose_cgy, orient, k) / 100.0
        fig.add_trace(go.Heatmap(
            x=u, y=v, z=np.where(wash >= floor_gy, wash, np.nan), coloraxis="coloraxis", opacity=0.4,
            meta=meta("wash"), hovertemplate="%{z:.1f} Gy<extra>dose</extra>",
            **legend(f"dose wash (≥ {dose_floor_fraction:.0%} of {p_max:g} Gy)")), row=1, col=c)
        for lvl in LEVELS:
            if lvl not in prescriptions:
                continue
            thr = isodose_fraction * prescriptions[lvl]
            fig.add_trace(go.Contour(
                x=u, y=v, z=wash, meta=meta("iso"), showscale=False, hoverinfo="skip",
                contours={"start": thr, "end": thr, "size": 1.0, "coloring": "none"},
                line={"color": LEVEL_COLOURS[lvl], "width": 2, "dash": "dash"},
                **legend(f"{isodose_fraction:.0%} isodose of {prescriptions[lvl]:g} Gy ({lvl})")), row=1, col=c)
        if rel_i16 is not None:
            fig.add_trace(go.Heatmap(
                x=u, y=v, z=_slice(rel_i16, orient, k), colorscale="Greys_r", zmin=rel_window[0], zmax=rel_window[1],
                showscale=False, meta=meta("rel"), name="registered relapse",
                hovertemplate="%{z}<extra>registered relapse</extra>"), row=2, col=c)
        for spec in mask_specs:
            for r in spec["rows"]:
                if r > rows:
                    continue
                fig.add_trace(go.Contour(
                    x=u, y=v, z=_slice(masks[spec["bit"]], orient, k).astype(np.uint8), meta=meta("mask", bit=spec["bit"]),
                    showscale=False, hoverinfo="skip", contours={"start": 0.5, "end": 0.5, "size": 1.0, "coloring": "none"},
                    line={"color": spec["colour"], "width": 2, "dash": spec["dash"]}, **legend(spec["name"])),
                    row=r, col=c)
        cu, cv = {"axial": (centre[0], centre[1]), "coronal": (centre[0], centre[2]),
                  "sagittal": (centre[1], centre[2])}[orient]
        for r in range(1, rows + 1):
            fig.add_trace(go.Scatter(
                x=[cu], y=[cv], mode="markers", marker={"symbol": "cross-thin", "size": 14,
                                                        "line": {"color": "#ffff00", "width": 2}},
                meta=meta("centroid"), hovertemplate=(f"centroid ({centre[0]:.1f}, {centre[1]:.1f}, {centre[2]:.1f}) mm"
                                                      "<extra></extra>"),
                **legend("recurrence centroid (projected)")), row=r, col=c)
        for r in range(1, rows + 1):
            fig.update_xaxes(title_text=AXIS_TITLES[orient][0], range=[u[0] - 1, u[-1] + 1], constrain="domain",
                             row=r, col=c, title_font_size=11)
            fig.update_yaxes(title_text=AXIS_TITLES[orient][1], scaleanchor=f"x{(r - 1) * 3 + c if (r, c) != (1, 1) else ''}",
                             constrain="domain", row=r, col=c, title_font_size=11,
                             range=[v[-1] + 1, v[0] - 1] if orient == "axial" else [v[0] - 1, v[-1] + 1])

    sliders = []
    for c, orient in enumerate(ORIENTS):
        axis = {"axial": "z", "coronal": "y", "sagittal": "x"}[orient]
        sliders.append({
            "name": orient, "active": centre_idx[orient], "x": c / 3 + 0.01, "len": 0.3, "y": -0.04, "yanchor": "top",
            "currentvalue": {"prefix": f"{orient} slice {axis} = ", "suffix": " mm", "font": {"size": 12}},
            "pad": {"t": 30}, "font": {"size": 9},
            "steps": [{"method": "skip", "label": f"{p:.0f}", "value": str(i), "args": []}
                      for i, p in enumerate(pos[orient])],
        })
    f = first
    fig.update_layout(
        title={"text": (f"{html.escape(volumes.patient_id)} — arm {f.get('arm')} · Mohamed {f.get('mohamed_type') or '—'}"
                        f" · centroid ({centre[0]:.0f}, {centre[1]:.0f}, {centre[2]:.0f}) mm"), "x": 0.01},
        height=480 * rows + 160, width=1450, sliders=sliders, plot_bgcolor="black",
        legend={"title": {"text": "click to show/hide"}, "font": {"size": 11, "color": "#f0f0f0"}, "x": 1.0, "y": 0.5,
                "yanchor": "top", "bgcolor": "#303030"},  # dark: the white sphere swatch must show
        coloraxis={"colorscale": DOSE_COLOURSCALE, "cmin": floor_gy, "cmax": dose_max_gy,
                   "colorbar": {"title": {"text": "dose (Gy)"}, "x": 1.0, "len": 0.42, "y": 1.0, "yanchor": "top",
                                "thickness": 15}},
        margin={"l": 60, "r": 330, "t": 80, "b": 120},
    )
    data = {
        "shape": list(ct.shape), "floor_gy": floor_gy, "n_masks": len(masks),
        "ct": _b64(ct), "dose_cgy": _b64(dose_cgy), "rel": None if rel_i16 is None else _b64(rel_i16),
        "bits": _b64(bits), "bits_bytes": bits.dtype.itemsize,
    }
    note = (f"Crop ±{half_width_mm:g} mm around the recurrence centroid on the {image.GetSpacing()[0]:g} mm working "
            f"grid ({ct.shape[2]}×{ct.shape[1]}×{ct.shape[0]} voxels). Dose wash hidden below "
            f"{dose_floor_fraction:.0%} of {'the highest prescription' if prescriptions else 'the maximum dose (arm unresolved)'} "
            f"{p_max:g} Gy = {floor_gy:.1f} Gy. Sliders move both rows.")
    return fig, data, note


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 12px; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; margin: 6px 0 12px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
th {{ background: #f2f2f2; }}
.muted {{ color: #666; }}
dl.codes dt {{ font-weight: bold; margin-top: 4px; }}
dl.codes dd {{ margin-left: 16px; font-size: 13px; }}
</style></head>
<body>
{plot}
<p class="muted">{note}</p>
<h3>Classes</h3>
{classes}
<h3>What the codes mean</h3>
{codes}
<script id="rtmap-volume" type="application/json">{data}</script>
<script>{script}</script>
</body></html>
"""

# Slices the embedded volumes when a slider moves and restyles that orientation's traces.
_SCRIPT = r"""
(function () {
  const gd = document.getElementById('viewer');
  const V = JSON.parse(document.getElementById('rtmap-volume').textContent);
  function dec(b64, T) {
    if (!b64) return null;
    const s = atob(b64), buf = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) buf[i] = s.charCodeAt(i);
    return new T(buf.buffer);
  }
  const [nz, ny, nx] = V.shape;
  const vol = {ct: dec(V.ct, Int16Array), dose: dec(V.dose_cgy, Uint16Array), rel: dec(V.rel, Int16Array),
               bits: dec(V.bits, V.bits_bytes === 1 ? Uint8Array : Uint16Array)};
  function slice(arr, orient, k, f) {
    const rows = [];
    if (orient === 'axial') {
      for (let y = 0; y < ny; y++) { const r = new Array(nx); for (let x = 0; x < nx; x++) r[x] = f(arr[(k * ny + y) * nx + x]); rows.push(r); }
    } else if (orient === 'coronal') {
      for (let z = 0; z < nz; z++) { const r = new Array(nx); for (let x = 0; x < nx; x++) r[x] = f(arr[(z * ny + k) * nx + x]); rows.push(r); }
    } else {
      for (let z = 0; z < nz; z++) { const r = new Array(ny); for (let y = 0; y < ny; y++) r[y] = f(arr[(z * ny + y) * nx + k]); rows.push(r); }
    }
    return rows;
  }
  const ident = (v) => v, gy = (v) => v / 100, wash = (v) => (v / 100 >= V.floor_gy ? v / 100 : null);
  function setSlice(orient, k) {
    const zs = [], idx = [];
    gd.data.forEach(function (t, i) {
      const m = t.meta || {};
      if (m.orient !== orient) return;
      let z = null;
      if (m.kind === 'ct') z = slice(vol.ct, orient, k, ident);
      else if (m.kind === 'wash') z = slice(vol.dose, orient, k, wash);
      else if (m.kind === 'iso') z = slice(vol.dose, orient, k, gy);
      else if (m.kind === 'rel') z = slice(vol.rel, orient, k, ident);
      else if (m.kind === 'mask') { const b = m.bit; z = slice(vol.bits, orient, k, (v) => (v >> b) & 1); }
      if (z !== null) { zs.push(z); idx.push(i); }
    });
    window.rtmapViewerSlices[orient] = k;
    return Plotly.restyle(gd, {z: zs}, idx);
  }
  window.rtmapViewerSlices = {};
  window.rtmapViewer = {setSlice: setSlice, shape: V.shape};
  gd.on('plotly_sliderchange', function (e) { setSlice(e.slider.name, parseInt(e.step.value, 10)); });
})();
"""
