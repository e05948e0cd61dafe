"""`rtmap synth`: write a synthetic DICOM-RT cohort with ground truth.

    rtmap synth --patients 6                      a new cohort SYN-001..SYN-006
    rtmap synth --add 3                           3 more patients, numbered after the highest id there
    rtmap synth --patients 10 --cases all         every export case once (standard, level_names, per_beam, boost,
                                                  ffs, hfp, ffp, jitter, irregular, gap)
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from rtmap_assets.config import load_trial_config
from rtmap_synth.cohort import EXPORT_CASES, SIZES, GeneratorSettings, generate_cohort, next_patient_number

log = logging.getLogger(__name__)


def _triple(kind):
    def parse(text: str):
        parts = text.replace("x", ",").split(",")
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(f"expected three values like 128,128,48, got {text!r}")
        return tuple(kind(p) for p in parts)
    return parse


def _cases(text: str) -> tuple[str, ...]:
    if text.strip() == "all":
        return EXPORT_CASES
    cases = tuple(c.strip() for c in text.split(",") if c.strip())
    bad = [c for c in cases if c not in EXPORT_CASES]
    if not cases or bad:
        raise argparse.ArgumentTypeError(f"export cases must be among {','.join(EXPORT_CASES)}; got {text!r}")
    return cases


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="rtmap synth", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("data/raw"), help="raw root; files go to <out>/<trial>/<patient>/")
    p.add_argument("--truth", type=Path, default=Path("data/truth"), help="truth root; <truth>/<trial>/<patient>.json")
    p.add_argument("--covariates", type=Path, default=None, help="covariates CSV (default data/covariates/<trial>.csv)")
    p.add_argument("--config", type=Path, default=None, help="trial YAML (default: the bundled synthetic trial)")
    p.add_argument("--patients", type=int, default=6, help="size of a new cohort (SYN-001..)")
    p.add_argument("--add", type=int, default=None, metavar="N",
                   help="add N patients to the cohort already in --out/--truth, numbered after its highest id "
                        "(existing patients and covariate rows are kept)")
    p.add_argument("--cases", type=_cases, default=("standard",),
                   help="export cases cycled over the patients (or 'all'): " + ",".join(EXPORT_CASES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=sorted(SIZES), default="small", help="small 128x128x48 @2x2x3 mm; clinical 512x512x150 @0.98x0.98x2 mm")
    p.add_argument("--shape", type=_triple(int), default=None, help="x,y,z voxels (overrides --size)")
    p.add_argument("--spacing", type=_triple(float), default=None, help="x,y,z mm (overrides --size)")
    p.add_argument("--layout", choices=("flat", "nested", "mixed"), default="mixed")
    p.add_argument("--mean-displacement", type=float, default=13.0, help="mean relapse->planning displacement (mm)")
    p.add_argument("--mr-every", type=int, default=0, help="every n-th patient gets an MR relapse image (0: none)")
    return p


def main_synth(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = load_trial_config(args.config)
    geometry = dict(SIZES[args.size])
    if args.shape:
        geometry["ct_shape"] = args.shape
    if args.spacing:
        geometry["ct_spacing"] = args.spacing
    settings = GeneratorSettings(**geometry, layout=args.layout, mean_displacement_mm=args.mean_displacement,
                                 mr_every=args.mr_every)
    covariates = args.covariates or Path("data/covariates") / f"{config.trial}.csv"
    first, n = 1, args.patients
    if args.add is not None:
        first, n = next_patient_number(args.out / config.trial, args.truth / config.trial), args.add
    t0 = time.perf_counter()
    truths = generate_cohort(args.out, args.truth, covariates, n_patients=n, seed=args.seed,
                             settings=settings, config=config, first_number=first, export_cases=args.cases)
    log.info("wrote %d synthetic patients of trial %s (%s) in %.1f s", len(truths), config.trial,
             ", ".join(t["patient_id"] for t in truths), time.perf_counter() - t0)
    return 0
