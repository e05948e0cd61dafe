"""Asset checks, evaluated in the same step as the per-patient assets they guard.

Severities: registration quality and dose-statistics sanity WARN (a physicist should look, the cohort
goes on); a patient without its full set of classification rows is an ERROR that blocks.
"""

import polars as pl

import dagster as dg
from rtmap_assets.config import LEVELS, TrialConfig

REGISTRATION_CHECKS = [
    dg.AssetCheckSpec("landmark_distance_within_limit", asset="registration_qc",
                      description="Landmark centroid distance after registration ≤ qc.max_landmark_distance_mm."),
    dg.AssetCheckSpec("no_folding", asset="registration_qc",
                      description="Fraction of body voxels with Jacobian determinant ≤ 0 ≤ qc.max_folding_fraction."),
    dg.AssetCheckSpec("matches_known_warp", asset="registration_qc",
                      description="Evaluation, synthetic patients only (a ground-truth file exists): TRE against the "
                      "generator's known warp (mean ≤ 1 mm, max ≤ 3 mm) and recurrence Dice ≥ 0.85."),
]
CLASSIFICATION_CHECKS = [
    dg.AssetCheckSpec("classification_complete", asset="recurrence_classification", blocking=True,
                      description="One row per prescription level, every present level classified by every scheme."),
    dg.AssetCheckSpec("matches_ground_truth", asset="recurrence_classification",
                      description="Synthetic patients only: every class equals the generator's ground truth."),
    dg.AssetCheckSpec("dose_statistics_sane", asset="dose_statistics",
                      description="min ≤ D98 ≤ D95 ≤ D50 ≤ D2 ≤ max, mean within [min, max], V95 within 0–100 %."),
]
_WARN = dg.AssetCheckSeverity.WARN


def registration_checks(qc: dict, config: TrialConfig) -> list[dg.AssetCheckResult]:
    d, fold = qc.get("landmark_distance_mm"), qc.get("folding_fraction")
    return [
        dg.AssetCheckResult(check_name="landmark_distance_within_limit", asset_key="registration_qc", severity=_WARN,
                            passed=d is not None and d <= config.qc.max_landmark_distance_mm,
                            metadata={"landmark_distance_mm": d, "limit_mm": config.qc.max_landmark_distance_mm}),
        dg.AssetCheckResult(check_name="no_folding", asset_key="registration_qc", severity=_WARN,
                            passed=fold is not None and fold <= config.qc.max_folding_fraction,
                            metadata={"folding_fraction": fold, "jacobian_min": qc.get("jacobian_min"),
                                      "limit": config.qc.max_folding_fraction}),
    ]


CLASS_COLUMNS = ("centroid_class", "volume_class", "dawson_class", "mohamed_type")


def classification_complete(classification: pl.DataFrame) -> dg.AssetCheckResult:
    levels = set(classification["level"].to_list()) if classification.height else set()
    present = classification.filter(pl.col("level_present")) if classification.height else classification
    missing = {c: present[c].null_count() for c in CLASS_COLUMNS if c in present.columns and present[c].null_count()}
    ok = levels == set(LEVELS) and classification.height == len(LEVELS) and not missing
    return dg.AssetCheckResult(check_name="classification_complete", asset_key="recurrence_classification",
                               passed=ok, metadata={"levels": ", ".join(sorted(levels)),
                                                    "null_classes": str(missing) if missing else "none"})


def ground_truth_check(classification: pl.DataFrame, truth: dict | None) -> dg.AssetCheckResult:
    """Evaluation: runs only where the synthetic generator left a ground truth (real patients pass as 'no truth')."""
    if truth is None:
        return dg.AssetCheckResult(check_name="matches_ground_truth", asset_key="recurrence_classification",
                                   passed=True, severity=_WARN, metadata={"truth": "none (not a synthetic patient)"})
    from rtmap_synth.evaluation import truth_mismatches  # only where truth exists: production never needs it

    bad = truth_mismatches(classification, truth)
    return dg.AssetCheckResult(check_name="matches_ground_truth", asset_key="recurrence_classification",
                               passed=not bad, severity=_WARN,
                               metadata={"case": truth.get("case"), "mismatches": "; ".join(bad) or "none"})


# Bars of the registration evaluation on synthetic patients (issue 3's goals).
TRUTH_TRE_MEAN_MM, TRUTH_TRE_MAX_MM, TRUTH_DICE_MIN = 1.0, 3.0, 0.85


def known_warp_check(qc: dict, has_truth: bool) -> dg.AssetCheckResult:
    """Evaluation of the registration against the generator's known warp (columns filled only when truth exists)."""
    if not has_truth:
        return dg.AssetCheckResult(check_name="matches_known_warp", asset_key="registration_qc", passed=True,
                                   severity=_WARN, metadata={"truth": "none (not a synthetic patient)"})
    tre_mean, tre_max, dice = qc.get("tre_mean_mm"), qc.get("tre_max_mm"), qc.get("recurrence_dice_truth")
    ok = (tre_mean is not None and tre_mean <= TRUTH_TRE_MEAN_MM and tre_max is not None
          and tre_max <= TRUTH_TRE_MAX_MM and dice is not None and dice >= TRUTH_DICE_MIN)
    return dg.AssetCheckResult(check_name="matches_known_warp", asset_key="registration_qc", passed=ok,
                               severity=_WARN, metadata={"tre_mean_mm": tre_mean, "tre_max_mm": tre_max,
                                                         "recurrence_dice_truth": dice})


def dose_statistics_sane(stats: pl.DataFrame) -> dg.AssetCheckResult:
    problems = []
    for r in stats.iter_rows(named=True):
        seq = [r.get(k) for k in ("min_gy", "d98_gy", "d95_gy", "d50_gy", "d2_gy", "max_gy")]
        if None in seq:
            continue
        if any(a > b + 1e-6 for a, b in zip(seq, seq[1:])):
            problems.append(f"{r['structure']}: order {seq}")
        if r.get("mean_gy") is not None and not (seq[0] - 1e-6 <= r["mean_gy"] <= seq[-1] + 1e-6):
            problems.append(f"{r['structure']}: mean outside [min, max]")
        for k in ("v95_low_pct", "v95_intermediate_pct", "v95_high_pct"):
            v = r.get(k)
            if v is not None and not 0 <= v <= 100:
                problems.append(f"{r['structure']}: {k}={v}")
    return dg.AssetCheckResult(check_name="dose_statistics_sane", asset_key="dose_statistics", severity=_WARN,
                               passed=not problems and stats.height > 0,
                               metadata={"rows": stats.height, "problems": "; ".join(problems[:10]) or "none"})
