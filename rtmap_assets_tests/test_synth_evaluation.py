"""rtmap_synth.evaluation on hand-made imaging outputs with a known answer (no registration run)."""

from __future__ import annotations

import polars as pl
import pytest
import SimpleITK as sitk

from rtmap_assets.imaging.qc import ellipsoid_mask
from rtmap_assets.pipeline.imaging_patient import REGISTRATION_QC_SCHEMA
from rtmap_assets.pipeline.volumes import PatientVolumes, StructureMask
from rtmap_synth.evaluation import METRIC_KEYS, evaluate_imaging_dir, truth_mismatches, with_truth_metrics
from rtmap_synth.warp import RelapseWarp

CENTRE, RADII = (4.0, -2.0, 3.0), (7.0, 6.0, 8.0)


def _grid() -> sitk.Image:
    ref = sitk.Image([40, 36, 30], sitk.sitkFloat32)
    ref.SetSpacing([2.0, 2.0, 2.0])
    ref.SetOrigin([-40.0, -36.0, -30.0])
    return ref


def _outputs(folder, transform_offset_mm, relapse_shift_mm: float = 3.0) -> dict:
    """Stored imaging outputs: a 30 x 26 x 40 mm body, the mapped recurrence exactly at the truth, a
    translation transform; truth warp: planning = relapse + (relapse_shift, 0, 0)."""
    ref = _grid()
    body = ellipsoid_mask((0, 0, 0), (30, 26, 40), ref)
    image = sitk.Cast(body, sitk.sitkFloat32) * 1040.0 - 1000.0
    rec = ellipsoid_mask(CENTRE, RADII, ref)
    PatientVolumes("P", image, None, [StructureMask("BODY", "body", "planning", body),
                                      StructureMask("Rec_CT", "recurrence", "mapped", rec)]).save(folder)
    sitk.WriteTransform(sitk.TranslationTransform(3, list(transform_offset_mm)), str(folder / "transform.h5"))
    sitk.WriteImage(image, str(folder / "relapse_registered.nii.gz"))
    warp = RelapseWarp((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (relapse_shift_mm, 0.0, 0.0))
    return {"warp": warp.to_dict(), "recurrence": {"centroid_planning_mm": list(CENTRE), "radii_mm": list(RADII)},
            "arm": "A", "classes": {"high": {"centroid_class": 1, "volume_class": 1, "dawson_class": "in-field"}},
            "mohamed": "A"}


def test_tre_and_recurrence_metrics_from_stored_outputs(tmp_path):
    # T(p) = p - 1 mm x; the true relapse point is p - 3 mm x: TRE is 2 mm at every point
    truth = _outputs(tmp_path, (-1.0, 0.0, 0.0))
    m = evaluate_imaging_dir(tmp_path, truth, "CT", n_points=50)
    assert m["tre_points"] == 50
    assert m["tre_mean_mm"] == pytest.approx(2.0, abs=1e-6) and m["tre_max_mm"] == pytest.approx(2.0, abs=1e-6)
    assert m["recurrence_dice_truth"] == pytest.approx(1.0)
    assert m["recurrence_centroid_error_mm"] < 0.3


def test_with_truth_metrics_fills_the_registration_qc_columns(tmp_path):
    truth = _outputs(tmp_path, (-3.0, 0.0, 0.0))  # exact registration
    qc = pl.DataFrame([{"patient_id": "P", "relapse_modality": "CT"}], schema=REGISTRATION_QC_SCHEMA)
    assert with_truth_metrics(qc, tmp_path, None).equals(qc)  # not a synthetic patient: unchanged
    row = with_truth_metrics(qc, tmp_path, truth).row(0, named=True)
    assert row["tre_mean_mm"] == pytest.approx(0.0, abs=1e-6) and row["tre_points"] == 200
    assert row["recurrence_dice_truth"] == pytest.approx(1.0)
    assert with_truth_metrics(qc, tmp_path, truth).schema == qc.schema
    assert set(METRIC_KEYS) <= set(REGISTRATION_QC_SCHEMA)


def test_truth_mismatches_name_each_difference():
    truth = {"arm": "A", "classes": {"high": {"centroid_class": 1, "volume_class": 1, "dawson_class": "in-field"},
                                     "low": None}, "mohamed": "A"}
    good = pl.DataFrame({"level": ["high", "low"], "arm": ["A", "A"], "level_present": [True, False],
                         "centroid_class": [1, None], "volume_class": [1, None], "dawson_class": ["in-field", None],
                         "mohamed_type": ["A", "A"]})
    assert truth_mismatches(good, truth) == []
    bad = good.with_columns(pl.when(pl.col("level") == "high").then(2).otherwise(None).alias("volume_class"),
                            pl.lit("B").alias("arm"))
    assert truth_mismatches(bad, truth) == ["high.volume_class: 2 != truth 1", "arm: B != truth A"]
