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
    assert (w, h) == (1600, 760)
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


def test_overlay_colour_bar_relapse_panel_and_visible_sphere_swatch(tmp_path):
    vols = make_volumes(rec_centre=(16.0, 0.0, 0.0), rec_radius=4.0)
    relapse = sitk.Cast(vols.image + 5.0, sitk.sitkFloat32)
    out = tmp_path / "overlay.png"
    run_dosimetry(vols, CONFIG, radius_mm=5.0, sigma_mm=1.0, figure_path=out, registered_relapse=relapse)
    rgb = imread(out)[..., :3]
    h, w = rgb.shape[:2]
    assert (w, h) == (2100, 760)  # four panels: axial, coronal, sagittal, registered relapse
    magenta = (rgb[..., 0] > 0.9) & (rgb[..., 1] < 0.2) & (rgb[..., 2] > 0.9)
    cols = np.nonzero(magenta[: int(0.7 * h)].any(axis=0))[0]  # above the legend (which has a magenta swatch)
    assert cols.size and cols.min() > 0.7 * w  # the relapse contour is drawn in the fourth panel only
    # colour bar: a narrow vertical strip right of the panels whose colour changes from bottom to top
    strip = rgb[int(0.3 * h):int(0.7 * h), int(0.945 * w)]
    assert np.abs(np.diff(strip, axis=0)).sum() > 0.5
    # the legend box is dark (#3a3a3a), so the white sphere swatch shows (it was black on white)
    dark = np.all(np.abs(rgb - 0x3a / 255) < 0.01, axis=2)
    assert dark[int(0.75 * h):].sum() > 20_000


def test_overlay_legend_swatches_match_the_panels():
    from matplotlib.colors import to_hex

    from rtmap_assets.figures.overlay import LEGEND_FACE, SPHERE_COLOUR, legend_handles

    ctx = OverlayContext(patient_id="P", arm="A", centroid_mm=(0.0, 0.0, 0.0), recurrence=None, sphere=None)
    handles = {h.get_label(): h for h in legend_handles(ctx, {"high": 65.0}, {"high"}, True)}
    sphere = handles["uncertainty sphere"]
    assert to_hex(sphere.get_color()) == to_hex(SPHERE_COLOUR) == "#ffffff" and sphere.get_linestyle() == ":"
    assert to_hex(LEGEND_FACE) != "#ffffff"
    assert set(handles) == {"mapped recurrence", "uncertainty sphere", "relapse contour (registered)", "CTV high",
                            "95% of 65 Gy (high)"}
