"""Overlay figure: a PNG of sensible size with the expected orientation."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from matplotlib.image import imread

from rtmap_assets.figures.overlay import OverlayContext, render_overlay
from rtmap_assets.pipeline.dosimetry_patient import run_dosimetry
from test_dosimetry_pipeline import CONFIG, ball, make_volumes


def test_run_dosimetry_writes_the_overlay_png(tmp_path):
    out = tmp_path / "fig" / "overlay.png"
    res = run_dosimetry(make_volumes(rec_centre=(16.0, 0.0, 0.0), rec_radius=4.0), CONFIG, radius_mm=5.0,
                        sigma_mm=1.0, figure_path=out)
    assert res.figure_path == out and out.exists()
    assert 20_000 < out.stat().st_size < 2_000_000
    img = imread(out)
    h, w = img.shape[:2]
    assert (w, h) == (1600, 680)
    assert img[..., :3].std() > 0.05  # not a blank canvas
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left no temporary file


def test_overlay_orientation_anterior_up_superior_up(tmp_path):
    # Soft tissue everywhere (40 HU = mid grey at W400/L40) and a bright marker anterior (small y) and
    # superior (large z) of the grid centre, with the slices through it: the marker must be in the upper
    # half of the axial and of the coronal panel, and in the left (anterior) half of the sagittal one.
    vols = make_volumes()
    ct = np.full(sitk.GetArrayFromImage(vols.image).shape, 40.0, dtype=np.float32)
    ct[sitk.GetArrayFromImage(ball((0.0, -30.0, 30.0), 6.0)) > 0] = 2000.0
    img = sitk.GetImageFromArray(ct)
    img.CopyInformation(vols.image)
    vols.image, vols.dose = img, None
    rec = ball((0.0, 0.0, 0.0), 4.0)
    ctx = OverlayContext(patient_id="P", arm="A", centroid_mm=(0.0, -30.0, 30.0), recurrence=rec, sphere=rec)
    out = render_overlay(vols, ctx, tmp_path / "o.png")
    rgb = imread(out)[..., :3]
    grey = np.all(np.abs(rgb - 0.5) < 0.03, axis=2)
    white = np.all(rgb > 0.97, axis=2)
    third = rgb.shape[1] // 3
    shapes = []
    for panel in range(3):
        cols = slice(panel * third, (panel + 1) * third)
        g = grey[:, cols]  # the grey tissue locates the image area (anti-aliased text is grey too, but sparse)
        r = np.nonzero(g.mean(axis=1) > 0.3)[0]
        c = np.nonzero(g.mean(axis=0) > 0.3)[0]
        box = (slice(r.min(), r.max() + 1), slice(c.min(), c.max() + 1))
        ys, xs = np.nonzero(white[:, cols][box])
        h, w = box[0].stop - box[0].start, box[1].stop - box[1].start
        shapes.append(h / w)
        assert ys.size, panel
        if panel < 2:
            assert ys.mean() < h / 2, panel  # anterior (axial) / superior (coronal) up
        else:
            assert ys.mean() < h / 2 and xs.mean() < w / 2  # superior up, anterior left
    # grid 100 × 100 × 80 mm: axial square, coronal and sagittal 0.8 high/wide (equal aspect in mm)
    assert abs(shapes[0] - 1.0) < 0.03 and abs(shapes[1] - 0.8) < 0.03 and abs(shapes[2] - 0.8) < 0.03
