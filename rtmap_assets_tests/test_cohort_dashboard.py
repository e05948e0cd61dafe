"""Cohort dashboard from hand-made mart rows: order, titles, the radius/σ actually used, the table."""

from __future__ import annotations

import polars as pl

from rtmap_assets.figures.dashboard import build_cohort_dashboard, dashboard_figures, patient_table_html


def _summary() -> pl.DataFrame:
    rows = [
        # arm C first and B last on purpose: the charts must order A, B, C
        dict(patient_id="P3", arm="C", classified=True, hpv_status="positive", t_stage="T2", n_stage="N1",
             smoking="never", months_to_relapse=7.0, uncertainty_mm=3.123456789, radius_mm=3.123456789,
             radius_policy="patient", sigma_mm=3.123456789, centroid_dose_gy=12.3456, high_volume_class=0,
             high_centroid_class=0, high_dawson_class="outside", mohamed_type="E", high_probability_inside=0.0123,
             high_centroid_dose_pct_of_prescription=24.7, landmark_distance_mm=3.123456789, folding_fraction=0.0,
             tre_mean_mm=None, registration_qc_passed=True, open_issues=0, issue_codes=None),
        dict(patient_id="P1", arm="A", classified=True, hpv_status=None, t_stage="T3", n_stage="N2",
             smoking="current", months_to_relapse=12.0, uncertainty_mm=6.5, radius_mm=6.5, radius_policy="patient",
             sigma_mm=6.5, centroid_dose_gy=64.0, high_volume_class=2, high_centroid_class=1,
             high_dawson_class="marginal", mohamed_type="B", high_probability_inside=0.61,
             high_centroid_dose_pct_of_prescription=98.5, landmark_distance_mm=6.5, folding_fraction=0.002,
             tre_mean_mm=None, registration_qc_passed=False, open_issues=1,
             issue_codes="SERIES_NONUNIFORM_SPACING"),
        dict(patient_id="P2", arm=None, classified=False, hpv_status=None, t_stage=None, n_stage=None, smoking=None,
             months_to_relapse=None, uncertainty_mm=None, radius_mm=None, radius_policy=None, sigma_mm=None,
             centroid_dose_gy=None, high_volume_class=None, high_centroid_class=None, high_dawson_class=None,
             mohamed_type=None, high_probability_inside=None, high_centroid_dose_pct_of_prescription=None,
             landmark_distance_mm=None, folding_fraction=None, tre_mean_mm=None, registration_qc_passed=None,
             open_issues=2, issue_codes="NOT_IN_MANIFEST, NO_RTDOSE"),
        dict(patient_id="P4", arm="B", classified=True, hpv_status="negative", t_stage="T1", n_stage="N0",
             smoking="former", months_to_relapse=20.0, uncertainty_mm=1.0, radius_mm=2.0, radius_policy="patient",
             sigma_mm=1.0, centroid_dose_gy=60.0, high_volume_class=1, high_centroid_class=1,
             high_dawson_class="in-field", mohamed_type="A", high_probability_inside=0.99,
             high_centroid_dose_pct_of_prescription=100.0, landmark_distance_mm=1.0, folding_fraction=0.0,
             tre_mean_mm=0.5, registration_qc_passed=True, open_issues=0, issue_codes=None),
    ]
    return pl.DataFrame(rows, infer_schema_length=None)


def _by_arm() -> pl.DataFrame:
    return pl.DataFrame([
        dict(arm="A", level="high", scheme="dawson", class_code="marginal", class_label="marginal", class_order=2,
             patients=1, arm_level_patients=1, pct_of_arm_level=100.0),
        dict(arm="C", level="high", scheme="dawson", class_code="outside", class_label="outside", class_order=3,
             patients=1, arm_level_patients=1, pct_of_arm_level=100.0),
        dict(arm="A", level="patient", scheme="mohamed", class_code="B", class_label="B", class_order=2,
             patients=1, arm_level_patients=1, pct_of_arm_level=100.0),
    ])


def test_charts_order_arms_title_axes_and_use_the_radius_and_sigma_used():
    figs = dashboard_figures(_summary(), _by_arm())
    arm = figs["patients_per_arm"]
    assert list(arm.data[0].x) == ["A", "B", "C", "(none)"] and list(arm.data[0].y) == [1, 1, 1, 1]
    assert arm.data[0].text[0] == "1 (25 %)"
    assert arm.layout.xaxis.title.text == "arm" and arm.layout.yaxis.title.text == "patients"
    unc = figs["uncertainty"]
    assert "2–6.5 mm (per patient), patient policy" in unc.layout.title.text
    scatter = [t for t in unc.data if t.type == "scatter"]
    xs = sorted(x for t in scatter for x in t.x)
    assert xs == [1.0, 3.123456789, 6.5]  # σ used for P(inside), not the radius (2 mm for P4)
    daw = figs["class_dawson"]
    assert [t.name for t in daw.data] == ["marginal", "outside"]
    for fid, fig in figs.items():
        if fid not in ("covariates", "uncertainty"):
            assert fig.layout.yaxis.title.text, fid


def test_patient_table_is_sorted_rounded_and_readable(tmp_path):
    html = patient_table_html(_summary(), {"P1": "viewers/P1.html"})
    rows = html.split("<tr>")[2:]
    assert [r.split("<td>")[1].split("</td>")[0] for r in rows] == [
        "<a href='viewers/P1.html'>P1</a>", "P4", "P3", "P2"]  # by arm, unknown arm last
    assert "SERIES_NONUNIFORM_SPACING" in html and "NOT_IN_MANIFEST, NO_RTDOSE" in html
    assert "3.12" in html and "3.1234" not in html and "null" not in html and "None" not in html
    assert "2 peripheral" in html and "0 outside" in html and "<b>failed</b>" in html
    out = build_cohort_dashboard(_summary(), _by_arm(), tmp_path / "d.html", viewer_links={})
    text = out.read_text()
    assert text.count("plotly.js v") == 1 and "<script src=" not in text  # plotly.js inlined once, nothing fetched
    assert "What the codes mean" in text and "rtmap cohort — 4 patients, 3 classified, 2 with open issues" in text
