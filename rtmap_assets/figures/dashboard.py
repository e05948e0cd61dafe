"""Cohort dashboard: one self-contained, offline plotly HTML page from the dbt marts.

Inputs are the marts `patient_summary` (one row per patient, wide) and `classification_by_arm`
(counts with percentages). Each chart is its own figure with its own legend (classes differ between
schemes), arms are in order, axes are titled; plotly.js is inlined once. The patient table at the
bottom is plain HTML: sorted, rounded, codes spelled out, issue codes in full, and a link to each
patient's viewer.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from rtmap_assets.figures.codes import SCHEME_TITLES, VOLUME_CLASS, codes_legend_html, explain_volume
from rtmap_assets.lake import atomic_write

SCHEMES = ("seed_volume", "seed_centroid", "dawson", "mohamed")
LEVEL_ORDER = ("low", "intermediate", "high", "patient")
CLASS_COLOURS = {
    "inside": "#1a9850", "peripheral": "#fdae61", "outside": "#d73027",
    "in-field": "#1a9850", "marginal": "#fdae61",
    "A": "#1a9850", "B": "#91cf60", "C": "#fee08b", "D": "#fc8d59", "E": "#d73027",
    "not classified": "#bbbbbb",
}
COVARIATES = (("hpv_status", "HPV status"), ("t_stage", "T stage"), ("n_stage", "N stage"), ("smoking", "smoking"))
QC_DEFAULTS = {"max_landmark_distance_mm": 5.0, "max_folding_fraction": 0.001}


def _col(df: pl.DataFrame, name: str, dtype=pl.Utf8) -> pl.Series:
    return df[name] if name in df.columns else pl.Series(name, [None] * df.height, dtype=dtype)


def _arms(summary: pl.DataFrame) -> list[str]:
    arms = [a for a in _col(summary, "arm").unique().to_list() if a is not None]
    return sorted(arms) + (["(none)"] if _col(summary, "arm").null_count() else [])


def _volume_label(code) -> str:
    return "not classified" if code is None else VOLUME_CLASS.get(int(code), str(code))


def _layout(fig: go.Figure, title: str, x: str | None = None, y: str | None = None, height: int = 380) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0.01}, height=height, margin={"l": 60, "r": 20, "t": 60, "b": 60},
                      template="plotly_white", legend={"traceorder": "normal"})
    if x is not None:
        fig.update_xaxes(title_text=x)
    if y is not None:
        fig.update_yaxes(title_text=y)
    return fig


def patients_per_arm(summary: pl.DataFrame) -> go.Figure:
    arms = _arms(summary)
    arm = _col(summary, "arm").fill_null("(none)").to_list()
    n = [arm.count(a) for a in arms]
    total = max(sum(n), 1)
    fig = go.Figure(go.Bar(x=arms, y=n, text=[f"{k} ({100 * k / total:.0f} %)" for k in n], textposition="outside",
                           marker_color="#4575b4", name="patients", showlegend=False,
                           hovertemplate="arm %{x}: %{y} patients<extra></extra>"))
    fig.update_xaxes(categoryorder="array", categoryarray=arms)
    fig.update_yaxes(range=[0, max(n + [1]) * 1.25], dtick=1 if max(n + [1]) < 12 else None)
    return _layout(fig, f"Patients per arm (n = {sum(n)})", "arm", "patients", height=340)


def class_by_level(by_arm: pl.DataFrame, scheme: str) -> go.Figure:
    """Stacked % of each arm's patients per class at each level, one figure (and legend) per scheme."""
    sub = by_arm.filter(pl.col("scheme") == scheme) if by_arm.height else by_arm
    fig = go.Figure()
    if sub.height:
        sub = sub.with_columns(pl.col("level").replace_strict({lv: i for i, lv in enumerate(LEVEL_ORDER)},
                                                              default=9).alias("_lo")).sort("arm", "_lo", "class_order")
        cats = sub.select("arm", "level", "_lo").unique().sort("arm", "_lo")
        x0, x1 = cats["arm"].to_list(), cats["level"].to_list()
        for label in sub.sort("class_order")["class_label"].unique(maintain_order=True).to_list():
            part = {(r["arm"], r["level"]): r for r in sub.filter(pl.col("class_label") == label).iter_rows(named=True)}
            pct = [part[(a, lv)]["pct_of_arm_level"] if (a, lv) in part else 0 for a, lv in zip(x0, x1)]
            n = [part[(a, lv)]["patients"] if (a, lv) in part else 0 for a, lv in zip(x0, x1)]
            code = next(iter(part.values()))["class_code"]
            name = label if code == label else f"{code} {label}"
            fig.add_trace(go.Bar(x=[x0, x1], y=pct, name=name, marker_color=CLASS_COLOURS.get(label),
                                 text=[str(k) if k else "" for k in n], textposition="inside",
                                 customdata=n, hovertemplate="%{x}: %{customdata} patients (%{y:.0f} %)<extra>" + name
                                 + "</extra>"))
    fig.update_layout(barmode="stack")
    fig.update_yaxes(range=[0, 100])
    return _layout(fig, f"{SCHEME_TITLES[scheme]} — % of the arm's patients (n in bars)", "arm · level",
                   "% of patients")


def centroid_dose_by_arm(summary: pl.DataFrame) -> go.Figure:
    """Dose at the recurrence centroid as % of the high prescription, per arm, coloured by volume class."""
    done = summary.filter(_col(summary, "classified", pl.Boolean).fill_null(False)) if summary.height else summary
    fig = go.Figure()
    arms = _arms(done) if done.height else []
    for code in (1, 2, 0):
        part = done.filter(pl.col("high_volume_class") == code) if done.height else done
        if not part.height:
            continue
        fig.add_trace(go.Box(x=part["arm"].to_list(), y=part["high_centroid_dose_pct_of_prescription"].to_list(),
                             name=explain_volume(code), boxpoints="all", pointpos=0, jitter=0.4,
                             fillcolor="rgba(0,0,0,0)", line={"color": "rgba(0,0,0,0)"},
                             marker={"color": CLASS_COLOURS[VOLUME_CLASS[code]], "size": 10},
                             text=part["patient_id"].to_list(),
                             hovertemplate="%{text}: %{y:.1f} % of P<extra></extra>"))
    fig.add_hline(y=95, line_dash="dash", line_color="#444", annotation_text="95 % isodose",
                  annotation_position="top left")
    fig.update_xaxes(categoryorder="array", categoryarray=arms)
    fig.update_layout(boxmode="group", legend={"title": {"text": "high-level volume class"}})
    return _layout(fig, "Dose at the recurrence centroid relative to the high-risk prescription, by arm", "arm",
                   "centroid dose (% of high prescription)")


def classes_by_covariate(summary: pl.DataFrame) -> go.Figure:
    """Patients per covariate value, stacked by the high-level volume class (one shared legend)."""
    fig = make_subplots(rows=1, cols=len(COVARIATES), subplot_titles=[t for _, t in COVARIATES],
                        horizontal_spacing=0.05, shared_yaxes=True)
    labels = [_volume_label(c) for c in _col(summary, "high_volume_class", pl.Int32).to_list()]
    order = ["inside", "peripheral", "outside", "not classified"]
    for c, (col, _title) in enumerate(COVARIATES, start=1):
        values = [v if v is not None else "unknown" for v in _col(summary, col).to_list()]
        cats = sorted(set(values))
        for label in order:
            n = [sum(1 for v, lab in zip(values, labels) if v == val and lab == label) for val in cats]
            if not any(n):
                continue
            fig.add_trace(go.Bar(x=cats, y=n, name=label, legendgroup=label, showlegend=c == 1 or label not in
                                 {t.name for t in fig.data}, marker_color=CLASS_COLOURS[label],
                                 hovertemplate="%{x}: %{y} patients<extra>" + label + "</extra>"), row=1, col=c)
    fig.update_layout(barmode="stack", legend={"title": {"text": "high-level volume class"}})
    fig.update_yaxes(title_text="patients", row=1, col=1)
    return _layout(fig, "High-level volume class against the trial covariates", None, None)


def months_by_class(summary: pl.DataFrame) -> go.Figure:
    fig = go.Figure()
    labels = [_volume_label(c) for c in _col(summary, "high_volume_class", pl.Int32).to_list()]
    months = _col(summary, "months_to_relapse", pl.Float64).to_list()
    for label in ("inside", "peripheral", "outside"):
        y = [m for m, lab in zip(months, labels) if lab == label and m is not None]
        if y:
            fig.add_trace(go.Box(y=y, name=label, boxpoints="all", jitter=0.4, pointpos=0,
                                 marker_color=CLASS_COLOURS[label], showlegend=False))
    return _layout(fig, "Months from planning to recurrence, by high-level volume class", "high-level volume class",
                   "months to recurrence")


def uncertainty_and_probability(summary: pl.DataFrame) -> go.Figure:
    """Landmark distance distribution with the radius actually used, and P(inside) against the σ used."""
    done = summary.filter(_col(summary, "classified", pl.Boolean).fill_null(False)) if summary.height else summary
    policies = sorted({p for p in _col(done, "radius_policy").to_list() if p})
    radii = sorted({round(r, 2) for r in _col(done, "radius_mm", pl.Float64).to_list() if r is not None})
    policy_text = ", ".join(policies) or "—"
    radius_text = (f"{radii[0]:g} mm" if len(radii) == 1 else
                   f"{radii[0]:g}–{radii[-1]:g} mm (per patient)" if radii else "—")
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=(
        "uncertainty (landmark distance)", "P(inside high isodose) vs σ"))
    dist = [d for d in _col(done, "uncertainty_mm", pl.Float64).to_list() if d is not None]
    fig.add_trace(go.Histogram(x=dist, name="patients", marker_color="#4575b4", xbins={"size": 0.5},
                               showlegend=False, hovertemplate="%{x} mm: %{y} patients<extra></extra>"), row=1, col=1)
    for r in radii if len(radii) <= 3 else []:
        fig.add_vline(x=r, line_dash="dash", line_color="#d73027", row=1, col=1,
                      annotation_text=f"radius {r:g} mm ({policy_text})", annotation_position="top right")
    if done.height:
        labels = [_volume_label(c) for c in done["high_volume_class"].to_list()]
        for label in ("inside", "peripheral", "outside"):
            idx = [i for i, lab in enumerate(labels) if lab == label]
            if not idx:
                continue
            fig.add_trace(go.Scatter(
                x=[done["sigma_mm"][i] for i in idx], y=[done["high_probability_inside"][i] for i in idx],
                mode="markers+text", text=[done["patient_id"][i] for i in idx], textposition="top center",
                marker={"size": 10, "color": CLASS_COLOURS[label]}, name=label, legendgroup=label,
                hovertemplate="%{text}: σ %{x:.2f} mm, P %{y:.2f}<extra></extra>"), row=1, col=2)
    fig.update_xaxes(title_text="landmark distance (mm)", range=[0, 1.2 * max(dist + radii + [1.0])], row=1, col=1)
    fig.update_yaxes(title_text="patients", row=1, col=1)
    fig.update_xaxes(title_text="σ used for the probability (mm)", rangemode="tozero", row=1, col=2)
    fig.update_yaxes(title_text="P(inside high 95 % isodose)", range=[-0.05, 1.1], row=1, col=2)
    fig.update_layout(legend={"title": {"text": "high-level volume class"}})
    fig.update_layout(legend={"title": {"text": "high-level volume class"}, "traceorder": "normal"})
    return _layout(fig, f"Uncertainty — sphere radius used: {radius_text}, {policy_text} policy", None, None,
                   height=400)


def registration_qc(summary: pl.DataFrame, limits: Mapping[str, float]) -> go.Figure:
    reg = summary.filter(_col(summary, "landmark_distance_mm", pl.Float64).is_not_null()) if summary.height else summary
    fig = go.Figure()
    if reg.height:
        reg = reg.sort("landmark_distance_mm", descending=True)
        passed = _col(reg, "registration_qc_passed", pl.Boolean).to_list()
        for ok, name, colour in ((True, "QC passed", "#1a9850"), (False, "QC failed", "#d73027")):
            idx = [i for i, p in enumerate(passed) if bool(p) == ok]
            if idx:
                fig.add_trace(go.Bar(
                    x=[reg["patient_id"][i] for i in idx], y=[reg["landmark_distance_mm"][i] for i in idx], name=name,
                    marker_color=colour, customdata=[[reg["folding_fraction"][i], reg["tre_mean_mm"][i]] for i in idx],
                    hovertemplate="%{x}: landmark %{y:.2f} mm, folding %{customdata[0]:.4f}, TRE mean "
                                  "%{customdata[1]:.2f} mm<extra></extra>"))
        fig.update_xaxes(categoryorder="array", categoryarray=reg["patient_id"].to_list())
    lim = limits["max_landmark_distance_mm"]
    fig.add_hline(y=lim, line_dash="dash", line_color="#444", annotation_text=f"QC limit {lim:g} mm")
    return _layout(fig, f"Registration QC (fails: landmark > {lim:g} mm or folding > {limits['max_folding_fraction']:g})",
                   "patient", "landmark distance (mm)")


def _cell(v, spec: str = "") -> str:
    if v is None:
        return "—"
    return html.escape(format(v, spec) if spec else str(v))


def patient_table_html(summary: pl.DataFrame, viewer_links: Mapping[str, str]) -> str:
    """Sorted (arm, patient), rounded, codes spelled out, issue codes in full, links to the viewers."""
    cols = ["patient", "arm", "HPV", "T", "N", "smoking", "months to recurrence", "uncertainty (mm)",
            "radius (mm, policy)", "centroid dose (Gy)", "% of high P", "high volume class", "high centroid class",
            "high Dawson", "Mohamed", "P(inside high)", "registration QC", "open issues"]
    rows = []
    df = summary.sort([pl.col("arm").fill_null("~"), pl.col("patient_id")]) if summary.height else summary
    for r in df.iter_rows(named=True):
        pid = r["patient_id"]
        link = viewer_links.get(pid)
        name = f"<a href='{html.escape(link)}'>{html.escape(pid)}</a>" if link else html.escape(pid)
        qc = r.get("registration_qc_passed")
        cc = r.get("high_centroid_class")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in (
            name, _cell(r.get("arm")), _cell(r.get("hpv_status")), _cell(r.get("t_stage")), _cell(r.get("n_stage")),
            _cell(r.get("smoking")), _cell(r.get("months_to_relapse"), ".0f"), _cell(r.get("uncertainty_mm"), ".2f"),
            (f"{r['radius_mm']:.1f} ({html.escape(str(r.get('radius_policy')))})" if r.get("radius_mm") is not None
             else "—"),
            _cell(r.get("centroid_dose_gy"), ".1f"), _cell(r.get("high_centroid_dose_pct_of_prescription"), ".0f"),
            explain_volume(r.get("high_volume_class")),
            "—" if cc is None else f"{cc} {'inside' if cc == 1 else 'outside'}",
            _cell(r.get("high_dawson_class")), _cell(r.get("mohamed_type")),
            _cell(r.get("high_probability_inside"), ".2f"),
            "—" if qc is None else ("passed" if qc else "<b>failed</b>"),
            html.escape(r.get("issue_codes") or "") or "none",
        )) + "</tr>")
    return ("<table class='patients'><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def dashboard_figures(summary: pl.DataFrame, by_arm: pl.DataFrame,
                      qc_limits: Mapping[str, float] | None = None) -> dict[str, go.Figure]:
    """Every chart of the dashboard by id (in page order)."""
    limits = {**QC_DEFAULTS, **(qc_limits or {})}
    figs = {"patients_per_arm": patients_per_arm(summary)}
    figs.update({f"class_{s}": class_by_level(by_arm, s) for s in SCHEMES})
    figs["centroid_dose"] = centroid_dose_by_arm(summary)
    figs["covariates"] = classes_by_covariate(summary)
    figs["months"] = months_by_class(summary)
    figs["uncertainty"] = uncertainty_and_probability(summary)
    figs["registration_qc"] = registration_qc(summary, limits)
    return figs


def build_cohort_dashboard(summary: pl.DataFrame, by_arm: pl.DataFrame, out: Path, *,
                           viewer_links: Mapping[str, str] | None = None,
                           qc_limits: Mapping[str, float] | None = None) -> Path:
    """Write the dashboard HTML (atomically) and return its path.

    `viewer_links`: patient_id -> href of the patient's viewer (relative to the dashboard); None = link
    `viewers/<patient_id>.html` wherever that file exists next to `out`.
    """
    out = Path(out)
    if viewer_links is None:
        viewer_links = {pid: f"viewers/{pid}.html" for pid in (summary["patient_id"].to_list() if summary.height else [])
                        if (out.parent / "viewers" / f"{pid}.html").exists()}
    figs = dashboard_figures(summary, by_arm, qc_limits)
    parts = []
    for i, (fid, fig) in enumerate(figs.items()):
        parts.append(f"<div class='chart' id='chart-{fid}'>" + fig.to_html(
            full_html=False, include_plotlyjs=(i == 0), div_id=fid, config={"displaylogo": False}) + "</div>")
    n = summary.height
    done = int(_col(summary, "classified", pl.Boolean).fill_null(False).sum()) if n else 0
    with_issues = int((_col(summary, "open_issues", pl.Int64).fill_null(0) > 0).sum()) if n else 0
    page = _PAGE.format(
        title=f"rtmap cohort — {n} patients, {done} classified, {with_issues} with open issues",
        charts="\n".join(parts), table=patient_table_html(summary, viewer_links), codes=codes_legend_html())
    return atomic_write(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 12px 20px; color: #222; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(620px, 1fr)); gap: 8px 16px; }}
.chart.wide {{ grid-column: 1 / -1; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 7px; text-align: left; white-space: nowrap; }}
th {{ background: #f2f2f2; position: sticky; top: 0; }}
dl.codes dt {{ font-weight: bold; margin-top: 4px; }}
dl.codes dd {{ margin-left: 16px; font-size: 13px; }}
</style></head>
<body>
<h2>{title}</h2>
<div class="grid">
{charts}
</div>
<h3>Patients</h3>
<p>Sorted by arm and patient; the patient name links to its interactive viewer where one was made.</p>
<div style="overflow-x: auto">{table}</div>
<h3>What the codes mean</h3>
{codes}
</body></html>
"""
