"""The ``"skrt"`` engine: the seed's own code path, scikit-rt's `Registration` driving the elastix
command-line program with the same parameter maps as the ``"elastix"`` engine.

Only the registration is taken from scikit-rt (its structure transform needs a nearest-neighbour
resampler that Debian's elastix 5.0.1 lacks: it silently returns an empty structure set). The transform
is read from elastix's TransformParameters files, following each file's initial-transform link, and
converted exactly like the in-process engine's (`transform_from_elastix`): correct outside the planning
working grid too.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from rtmap_assets.imaging.registration.elastix_engine import (
    UnsupportedElastixTransform,
    elastix_parameter_maps,
    shifted,
    transform_from_elastix,
    write_parameter_file,
)

_ENTRY = re.compile(r"^\s*\((\w+)\s+(.*?)\)\s*(?://.*)?$")
_TOKEN = re.compile(r'"([^"]*)"|(\S+)')


def read_parameter_file(path: Path) -> dict[str, list[str]]:
    """An elastix parameter / TransformParameters file as {key: [values]} (quotes removed, // comments skipped)."""
    out: dict[str, list[str]] = {}
    for line in Path(path).read_text().splitlines():
        m = _ENTRY.match(line)
        if m:
            out[m.group(1)] = [q or u for q, u in _TOKEN.findall(m.group(2))]
    return out


def transform_chain(last_file: Path, max_depth: int = 16) -> list[dict[str, list[str]]]:
    """The parameter maps from elastix's last TransformParameters file back through its
    InitialTransformParameter(s)FileName links, returned innermost first."""
    chain: list[dict[str, list[str]]] = []
    path: Path | None = Path(last_file)
    while path is not None:
        if len(chain) >= max_depth:
            raise UnsupportedElastixTransform(f"elastix transform chain longer than {max_depth} from {last_file}")
        params = read_parameter_file(path)
        chain.append(params)
        link = (params.get("InitialTransformParameterFileName") or params.get("InitialTransformParametersFileName")
                or ["NoInitialTransform"])[0]
        if link == "NoInitialTransform":
            path = None
        else:
            nxt = Path(link)
            path = nxt if nxt.is_absolute() else Path(last_file).parent / nxt
    return chain[::-1]


def register_skrt(fixed: sitk.Image, moving: sitk.Image, t0: np.ndarray,
                  bspline_grid_mm: float) -> tuple[sitk.Transform, dict[str, float], float | None]:
    """scikit-rt Registration with the elastix CLI; transform = elastix's chain + t0."""
    from skrt import Image as SkrtImage
    from skrt.registration import Registration

    if shutil.which("elastix") is None:
        raise RuntimeError("engine 'skrt' needs the elastix command-line program")
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="rtmap_skrt_") as tmp:
        tmpdir = Path(tmp)
        t = time.perf_counter()
        fpath, mpath = tmpdir / "fixed.nii.gz", tmpdir / "moving.nii.gz"
        sitk.WriteImage(fixed, str(fpath))
        sitk.WriteImage(shifted(moving, t0), str(mpath))
        pfiles = {}
        for name, params in zip(("translation", "rigid", "bspline"), elastix_parameter_maps(bspline_grid_mm)):
            p = tmpdir / f"{name}.txt"
            # scikit-rt reads each step's result image back (result.0.nii), as in the seed
            write_parameter_file({**params, "WriteResultImage": ["true"]}, p)
            pfiles[name] = str(p)
        reg = Registration(str(tmpdir / "reg"), fixed=SkrtImage(str(fpath)), moving=SkrtImage(str(mpath)),
                           pfiles=pfiles, overwrite=True, capture_output=True, log_level="WARNING")
        reg.register()
        timings["skrt_register_s"] = time.perf_counter() - t
        # The last step's TransformParameters file chains to the earlier steps (elastix's -t0 links), in the
        # physical (LPS) coordinates of the images skrt handed to elastix.
        transform = transform_from_elastix(transform_chain(Path(reg.tfiles[reg.steps[-1]])), t0)
    return transform, timings, None
