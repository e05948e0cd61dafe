"""Python's cyclic garbage collector in a process that runs patient steps: the long-lived objects set aside once.

A per-patient step runs in a process that has loaded numpy, SciPy, SimpleITK, polars, numba, matplotlib,
pydicom and Dagster: ~160,000 tracked objects that live as long as the process. Every full collection walks
all of them (~0.1 s here) and reading a patient's DICOM allocates enough objects to trigger several, so a
clinical patient spent ~0.3 s in collections that could not free anything, and the interpreter's exit
another ~0.3 s walking them once more (gc callbacks; benchmarks/SPEED.md round 5).

`freeze_long_lived_objects`, called when the first patient step of a process starts, runs one full
collection (so no garbage is kept) and moves every object alive then to the permanent generation
(`gc.freeze`, as long-running Python services do after start-up). Later collections walk only what the steps
create, so each step's garbage is still collected as it goes and a process running many patients does not
grow. Objects alive at that moment that become garbage later are never collected: bounded, once per process.
(Freezing per step and unfreezing after was tried first: garbage from the previous step got frozen each time
and a 50-patient in-process run grew to 3.1 GB.)
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def freeze_long_lived_objects() -> None:
    """Once per process (a no-op when something is frozen already): full collection, then `gc.freeze()`."""
    if gc.get_freeze_count():
        return
    gc.collect()
    gc.freeze()


def after_freezing_long_lived_objects(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn` runs after `freeze_long_lived_objects()`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        freeze_long_lived_objects()
        return fn(*args, **kwargs)

    return wrapper
