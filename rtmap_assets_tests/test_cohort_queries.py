"""The marts, the five README queries (run exactly as the README prints them), the dashboard and the viewers, over a real lake.

The lake is made by the pipeline's own functions on 2 small synthetic patients (arms A and B, so
arm B's absent low level is there) plus a patient that only has a manifest issue; the DuckDB is
made by a real `dbt build`. The registration-QC limit is passed as a dbt var between the two
patients' landmark distances, so exactly one of them fails QC.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import duckdb
import polars as pl
import pytest
import yaml

from cohort_lake import build_lake, dbt_build, load_viewer_inputs
from rtmap_assets.lake.contract import TABLES
from rtmap_assets.pipeline.issues import record_issues

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
MARTS = ("patient_summary", "classification_long", "classification_by_arm", "registration_quality")


def queries() -> list[tuple[str, str]]:
    readme = (ROOT / "README.md").read_text()
    text = readme[readme.index("## Five questions a trial statistician asks"):]
    text = text[:text.index("\n## ", 10)]
    titles = re.findall(r"^### (\d\..*)$", text, re.M)
    blocks = re.findall(r"```sql\n(.*?)```", text, re.S)
    assert len(titles) == len(blocks) == 5
    return list(zip(titles, blocks))


@pytest.fixture(scope="module")
def warehouse(small_cohort_2, tmp_path_factory):
    data = tmp_path_factory.mktemp("warehouse") / "data"
    shutil.copytree(small_cohort_2, data)
    lake = build_lake(data)
    record_issues(lake, "SYN-404", "manifest", [{"code": "NO_RTDOSE", "message": "no RTDOSE among 3 series",
                                                 "file": None}])
    qc = lake.read(TABLES["registration_qc"]).sort("landmark_distance_mm")
    limit = round(float(qc["landmark_distance_mm"].mean()), 4)
    db = dbt_build(data, extra=["--vars", f"{{qc_max_landmark_distance_mm: {limit}}}"])
    return data, lake, db, qc, limit


def test_marts_are_described_and_absent_levels_are_null(warehouse):
    data, lake, db, qc, _ = warehouse
    described = {m["name"]: [c["name"] for c in m["columns"]]
                 for m in yaml.safe_load((ROOT / "dbt_models/models/marts/schema.yml").read_text())["models"]}
    with duckdb.connect(str(db), read_only=True) as con:
        for mart in MARTS:
            cols = [r[0] for r in con.sql(f"describe {mart}").fetchall()]
            assert cols == described[mart], mart  # every column described, in order, nothing extra
        summary = {r["patient_id"]: r for r in con.sql("select * from patient_summary").pl().iter_rows(named=True)}
        long = con.sql("select * from classification_long").pl()
        by_arm = con.sql("select * from classification_by_arm").pl()
    cls = lake.read(TABLES["recurrence_classification"])
    arms = dict(cls.select("patient_id", "arm").unique().iter_rows())
    assert sorted(arms.values()) == ["A", "B"]
    b = next(p for p, a in arms.items() if a == "B")
    # arm B prescribes no low level: NULL, not 0.0
    assert summary[b]["low_prescription_gy"] is None and summary[b]["low_volume_class"] is None
    assert summary[b]["low_probability_inside"] is None and summary[b]["high_prescription_gy"] == 60.0
    assert summary["SYN-404"]["classified"] is False and summary["SYN-404"]["issue_codes"] == "NO_RTDOSE"
    high = cls.filter((pl.col("patient_id") == b) & (pl.col("level") == "high")).row(0, named=True)
    assert summary[b]["high_volume_class"] == high["volume_class"]
    assert summary[b]["centroid_dose_gy"] == pytest.approx(high["centroid_dose_gy"], abs=1e-3)
    assert summary[b]["high_centroid_dose_pct_of_prescription"] == pytest.approx(
        100 * high["centroid_dose_gy"] / 60.0, abs=0.05)
    # long: 2 patients × (3 levels × 3 schemes + mohamed); absent low level kept with NULL class
    assert long.height == 2 * (3 * 3 + 1)
    absent = long.filter((pl.col("patient_id") == b) & (pl.col("level") == "low"))
    assert absent.height == 3 and absent["class_code"].null_count() == 3 and not absent["level_present"].any()
    # percentages add up to 100 per arm × level × scheme
    sums = by_arm.group_by("arm", "level", "scheme").agg(pl.col("pct_of_arm_level").sum())
    assert sums["pct_of_arm_level"].to_list() == pytest.approx([100.0] * sums.height, abs=0.11)


def test_the_five_queries_run_as_written_and_answer(warehouse):
    data, lake, db, qc, limit = warehouse
    cls = lake.read(TABLES["recurrence_classification"])
    high = cls.filter(pl.col("level") == "high")
    cov = lake.read(TABLES["trial_covariates"])
    (q1, s1), (q2, s2), (q3, s3), (q4, s4), (q5, s5) = queries()
    with duckdb.connect(str(db), read_only=True) as con:
        r1, r2, r3, r4, r5 = (con.sql(s).pl() for s in (s1, s2, s3, s4, s5))
    # 1. Dawson at the high level per arm: one row per arm and class, counts as in the lake
    expect1 = high.group_by("arm", "dawson_class").len().sort("arm", "dawson_class")
    assert sorted(zip(r1["arm"], r1["dawson_class"], r1["patients"])) == sorted(expect1.iter_rows())
    # 2. centroid dose % by HPV status
    joined = high.join(cov, on="patient_id").with_columns(pl.col("hpv_status").fill_null("unknown"))
    assert r2["patients"].sum() == 2 and sorted(r2["hpv_status"]) == sorted(joined["hpv_status"].unique())
    for row in r2.iter_rows(named=True):
        part = joined.filter(pl.col("hpv_status") == row["hpv_status"])
        pct = (100 * part["centroid_dose_gy"] / part["prescription_gy"]).round(1)
        assert row["max_centroid_dose_pct"] == pytest.approx(pct.max(), abs=0.11)
    # 3. exactly the patient over the QC limit
    assert r3["patient_id"].to_list() == qc.filter(pl.col("landmark_distance_mm") > limit)["patient_id"].to_list()
    assert len(r3) == 1
    # 4. one row per classified patient: the class with the fixed 5 mm sphere (= the class in use under the
    # fixed policy) and with the patient's own distance as the radius (no floor: sub-voxel sampling)
    assert sorted(r4["patient_id"]) == sorted(high["patient_id"])
    assert set(r4["radius_policy"]) == {"fixed"} and set(r4["fixed_radius_mm"]) == {5.0}
    for row in r4.iter_rows(named=True):
        mine = high.filter(pl.col("patient_id") == row["patient_id"]).row(0, named=True)
        d = qc.filter(pl.col("patient_id") == row["patient_id"])["landmark_distance_mm"][0]
        assert row["patient_radius_mm"] == pytest.approx(d, abs=1e-3)
        assert row["high_fixed_radius_volume_class"] == mine["volume_class"]
        assert row["high_patient_radius_volume_class"] == mine["patient_radius_volume_class"]
        assert row["class_changes"] == (mine["volume_class"] != mine["patient_radius_volume_class"])
    # 5. Mohamed types per arm
    assert sorted(zip(r5["arm"], r5["mohamed_type"])) == sorted(high.select("arm", "mohamed_type").iter_rows())
    assert set(r5["pct_of_arm"]) == {100.0}


@pytest.mark.browser
def test_dashboard_and_a_viewer_in_chromium(warehouse, tmp_path):
    from chromium_probe import CHROMIUM, console_errors, probe
    from rtmap_assets.figures.dashboard import build_cohort_dashboard
    from rtmap_assets.figures.viewer import build_patient_viewer

    assert CHROMIUM, "Debian chromium is needed (scripts/setup.sh with RTMAP_SYSTEM_PACKAGES=1)"
    data, lake, db, qc, _ = warehouse
    with duckdb.connect(str(db), read_only=True) as con:
        summary = con.sql("select * from patient_summary").pl()
        by_arm = con.sql("select * from classification_by_arm").pl()
    out = tmp_path / "dash"
    pid = "SYN-001"
    vols, cls, relapse, modality = load_viewer_inputs(lake, pid)
    viewer = build_patient_viewer(vols, cls, registered_relapse=relapse, relapse_contour_mask=None,
                                  dose_floor_fraction=0.3, out=out / "viewers" / f"{pid}.html",
                                  relapse_is_ct=modality == "CT")
    dash = build_cohort_dashboard(summary, by_arm, out / "cohort_dashboard.html")

    res, stderr = probe(dash, """
      var out = {};
      plots().forEach(function (g) { out[g.id] = g.data.map(function (t) { return t.type + ':' + (t.name || ''); }); });
      var links = Array.prototype.map.call(document.querySelectorAll('table.patients a'), function (a) {
        return a.getAttribute('href'); });
      var cells = Array.prototype.map.call(document.querySelectorAll('table.patients tbody tr'), function (r) {
        return r.innerText; });
      return {traces: out, links: links, rows: cells,
              titles: plots().map(function (g) { return g._fullLayout.title.text; })};""", tmp_path / "probe")
    assert res["errors"] == [] and console_errors(stderr) == []
    r = res["result"]
    assert set(r["traces"]) >= {"patients_per_arm", "class_seed_volume", "class_dawson", "class_mohamed",
                                "centroid_dose", "covariates", "months", "uncertainty", "registration_qc"}
    assert r["traces"]["patients_per_arm"] == ["bar:patients"]
    assert any(t.startswith("histogram") for t in r["traces"]["uncertainty"])
    assert any("radius used: 5 mm, fixed policy" in t for t in r["titles"])
    assert r["links"] == [f"viewers/{pid}.html"]
    assert len(r["rows"]) == 3 and "NO_RTDOSE" in r["rows"][-1] and "SYN-404" in r["rows"][-1]

    res, stderr = probe(viewer, """
      var gd = document.getElementById('viewer');
      var sig = function () { return gd.data.map(function (t) { return t.z ? JSON.stringify(t.z) : ''; }); };
      var before = sig();
      var rail = gd.querySelectorAll('.slider-group')[0].querySelector('.slider-rail-touch-rect');
      var box = rail.getBoundingClientRect(), x = box.left + 0.9 * box.width, y = box.top + box.height / 2;
      rail.dispatchEvent(new MouseEvent('mousedown', {bubbles: true, clientX: x, clientY: y, view: window}));
      gd.dispatchEvent(new MouseEvent('mouseup', {bubbles: true, clientX: x, clientY: y, view: window}));
      await wait(500);
      var after = sig();
      return {kinds: gd.data.map(function (t) { return (t.meta || {}).orient + ':' + (t.meta || {}).kind; }),
              legend: gd.data.filter(function (t) { return t.showlegend !== false; }).map(function (t) { return t.name; }),
              changed: gd.data.map(function (t, i) { return before[i] !== after[i] ? (t.meta || {}).orient : null; })
                         .filter(Boolean),
              active: gd.layout.sliders.map(function (s) { return s.active; }), slices: window.rtmapViewerSlices,
              steps: gd.layout.sliders[0].steps.length};""",
                        tmp_path / "probe")
    assert res["errors"] == [] and console_errors(stderr) == []
    r = res["result"]
    for orient in ("axial", "coronal", "sagittal"):
        assert f"{orient}:ct" in r["kinds"] and f"{orient}:rel" in r["kinds"] and f"{orient}:wash" in r["kinds"]
    assert any(n.startswith("sphere r = 5.0 mm") for n in r["legend"])
    assert any(n.startswith("95% isodose of 65 Gy") for n in r["legend"])
    # the axial slider moved to near its end: only axial traces were re-sliced
    n_axial = len([k for k in r["kinds"] if k.startswith("axial:") and not k.endswith("centroid")])
    assert set(r["changed"]) == {"axial"} and len(r["changed"]) == n_axial
    assert r["slices"]["axial"] == r["active"][0] and r["active"][0] >= 0.8 * (r["steps"] - 1)


def test_the_probe_sees_a_console_error(tmp_path):
    from chromium_probe import CHROMIUM, probe

    if CHROMIUM is None:
        pytest.skip("Debian chromium not installed")
    page = tmp_path / "bad.html"
    page.write_text("<html><head></head><body>"
                    "<script>console.error('boom'); undefinedFunction();</script></body></html>")
    res, _ = probe(page, "return 1;", tmp_path / "probe", budget_ms=3000)
    assert "console.error: boom" in res["errors"] and any("undefinedFunction" in e for e in res["errors"])
