"""Cohort dashboard: one self-contained plotly HTML page from the dbt marts."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from rtmap_assets.lake import atomic_write

SCHEMES = ("seed_volume", "seed_centroid", "dawson", "mohamed")


def build_cohort_dashboard(summary: pl.DataFrame, by_arm: pl.DataFrame, out: Path) -> Path:
    """Write the dashboard HTML (atomically) and return its path."""
    fig = make_subplots(
        rows=2, cols=2,
        subplot_titles=("High-risk level: seed volume class per arm", "Mohamed type per arm",
                        "Uncertainty vs probability of being inside (high level)", "Dawson class per arm (high level)"),
        vertical_spacing=0.14,
    )
    for (row, col, scheme, level) in ((1, 1, "seed_volume", "high"), (1, 2, "mohamed", "patient"),
                                      (2, 2, "dawson", "high")):
        sub = by_arm.filter((pl.col("scheme") == scheme) & (pl.col("level") == level)) if by_arm.height else by_arm
        for cls in sorted(sub["class"].unique().to_list()) if sub.height else []:
            part = sub.filter(pl.col("class") == cls)
            fig.add_trace(go.Bar(x=part["arm"].to_list(), y=part["patients"].to_list(), name=f"{scheme}: {cls}",
                                 legendgroup=scheme), row=row, col=col)
    done = summary.filter(pl.col("classified")) if summary.height else summary
    if done.height:
        fig.add_trace(go.Scatter(
            x=done["uncertainty_mm"].to_list(), y=done["high_probability_inside"].to_list(), mode="markers+text",
            text=done["patient_id"].to_list(), textposition="top center", name="patients",
            marker={"size": 10, "color": done["high_volume_class"].cast(pl.Float64).to_list(), "colorscale": "Viridis"},
        ), row=2, col=1)
    fig.update_xaxes(title_text="landmark distance (mm)", row=2, col=1)
    fig.update_yaxes(title_text="P(inside 95 % isodose)", range=[-0.05, 1.05], row=2, col=1)
    fig.update_layout(barmode="stack", height=900, title=(
        f"rtmap cohort — {summary.height} patients, {done.height} classified, "
        f"{int((summary['open_issues'] > 0).sum()) if summary.height else 0} with open issues"))

    table = go.Figure(go.Table(
        header={"values": ["patient", "arm", "uncertainty mm", "volume class", "Dawson", "Mohamed", "issues"]},
        cells={"values": [summary[c].to_list() for c in ("patient_id", "arm", "uncertainty_mm", "high_volume_class",
                                                         "high_dawson_class", "mohamed_type", "issue_codes")]
               if summary.height else [[]] * 7},
    ))
    html = (fig.to_html(full_html=True, include_plotlyjs=True)
            .replace("</body>", table.to_html(full_html=False, include_plotlyjs=False) + "</body>"))
    return atomic_write(Path(out), lambda tmp: tmp.write_text(html))
