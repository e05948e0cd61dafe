"""Per-patient viewer: an offline plotly page with the expected traces, clipped wash and classes."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import SimpleITK as sitk

from rtmap_assets.figures.viewer import build_patient_viewer, viewer_figure
from rtmap_assets.pipeline.dosimetry_patient import run_dosimetry
from test_dosimetry_pipeline import CONFIG, make_volumes


def _patient():
    vols = make_volumes(rec_centre=(16.0, 0.0, 0.0), rec_radius=4.0)
    cls = run_dosimetry(vols, CONFIG, radius_mm=5.0, sigma_mm=1.0).classification
    relapse = sitk.Cast(vols.image + 7.0, sitk.sitkFloat32)  # a stand-in registered relapse (CT, 7 HU brighter)
    return vols, cls, relapse


def test_viewer_page_is_offline_small_and_explains_the_codes(tmp_path):
    vols, cls, relapse = _patient()
    out = build_patient_viewer(vols, cls, registered_relapse=relapse, relapse_contour_mask=None,
                               dose_floor_fraction=0.3, out=tmp_path / "v" / "P001.html")
    text = out.read_text()
    assert not re.search(r"<script[^>]+src=", text)  # plotly.js inlined, nothing fetched
    assert 4_800_000 < out.stat().st_size < 6_500_000  # plotly.js ~4.8 MB + the cropped volumes
    # the classes of every scheme, with the codes explained
    assert "2 peripheral" in text and "0 outside" in text and "Mohamed type <b>C</b>" in text
    assert "centroid inside an elective (lower-dose) CTV" in text
    # embedded CT equals the crop of the planning image around the centroid
    data = json.loads(re.search(r'<script id="rtmap-volume" type="application/json">(.*?)</script>', text, re.S)[1])
    nz, ny, nx = data["shape"]
    ct = np.frombuffer(base64.b64decode(data["ct"]), dtype="<i2").reshape(nz, ny, nx)
    full = sitk.GetArrayFromImage(vols.image)
    assert (nz, ny, nx) == (40, 42, 38)  # ±40 mm at 2 mm, clipped by the 50×50×40 grid
    assert np.array_equal(ct, np.rint(full[:, 4:46, 12:50]).astype(np.int16))
    assert not list(out.parent.glob(".*.tmp"))


def test_viewer_traces_wash_clipping_and_legend_groups():
    vols, cls, relapse = _patient()
    fig, data, note = viewer_figure(vols, cls, registered_relapse=relapse, relapse_contour_mask=None,
                                    dose_floor_fraction=0.9)
    kinds = [(t.meta["kind"], t.meta["orient"]) for t in fig.data]
    for orient in ("axial", "coronal", "sagittal"):
        assert kinds.count(("ct", orient)) == 1 and kinds.count(("rel", orient)) == 1
        assert kinds.count(("iso", orient)) == 3  # 95 % of 54, 60, 65 Gy
    legend = {t.name for t in fig.data if t.showlegend}
    assert {"CTV high: CTV_65", "95% isodose of 65 Gy (high)", "mapped recurrence: Rec_CT",
            "sphere r = 5.0 mm (fixed policy)", "recurrence centroid (projected)",
            "relapse contour (through the registration)"} <= legend
    # one legend entry per group: toggling it hides the structure in all panels
    assert sum(t.showlegend for t in fig.data if t.legendgroup == "CTV high: CTV_65") == 1
    assert sum(1 for t in fig.data if t.legendgroup == "CTV high: CTV_65") == 6
    # wash clipped below 0.9 × 65 = 58.5 Gy: the 55 Gy shell is transparent (NaN), 61 and 66 Gy are shown
    wash = next(t for t in fig.data if t.meta["kind"] == "wash" and t.meta["orient"] == "axial")
    z = np.asarray(wash.z, dtype=float)
    shown = z[np.isfinite(z)]
    assert shown.min() >= 58.5 and set(np.round(np.unique(shown))) == {61.0, 66.0}
    assert np.isnan(z).sum() > 0
    assert fig.layout.coloraxis.cmin == 58.5 and fig.layout.coloraxis.colorbar.title.text == "dose (Gy)"
    assert [s.name for s in fig.layout.sliders] == ["axial", "coronal", "sagittal"]
    assert "58.5 Gy" in note and data["floor_gy"] == 58.5


def test_viewer_without_relapse_image_has_one_row():
    vols, cls, _ = _patient()
    fig, data, _ = viewer_figure(vols, cls, registered_relapse=None, relapse_contour_mask=None,
                                 dose_floor_fraction=0.3)
    assert data["rel"] is None
    assert not [t for t in fig.data if t.meta["kind"] == "rel"]
    assert len(fig.layout.annotations) == 3


def test_viewer_of_an_unresolved_arm_says_so():
    from rtmap_assets.figures.viewer import classes_table_html

    vols = make_volumes(arm_ctvs=False)  # no CTVs: the arm cannot be resolved, classes stay empty
    cls = run_dosimetry(vols, CONFIG, radius_mm=5.0, sigma_mm=1.0).classification
    fig, data, note = viewer_figure(vols, cls, registered_relapse=None, relapse_contour_mask=None,
                                    dose_floor_fraction=0.3)
    assert not [t for t in fig.data if t.meta["kind"] == "iso"]  # no prescription, no isodose
    assert "the maximum dose (arm unresolved) 66 Gy = 19.8 Gy" in note
    assert classes_table_html(cls).count("no prescription known, no class") == 3


def test_viewers_can_share_one_plotly_bundle(tmp_path):
    vols, cls, relapse = _patient()
    pages = [build_patient_viewer(vols, cls, registered_relapse=relapse, relapse_contour_mask=None,
                                  dose_floor_fraction=0.3, out=tmp_path / f"P{i}.html", shared_plotlyjs=True)
             for i in range(2)]
    assert (tmp_path / "plotly.min.js").stat().st_size > 3_000_000
    for page in pages:
        assert page.stat().st_size < 1_000_000
        assert '<script charset="utf-8" src="plotly.min.js"></script>' in page.read_text()
