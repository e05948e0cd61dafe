"""Python's cyclic garbage collector during a patient's step: the objects that existed before it are set aside.

A per-patient step runs in a process that has loaded numpy, SciPy, SimpleITK, polars, numba, matplotlib,
pydicom and Dagster: ~160,000 tracked objects that live as long as the process. Each full collection walks
all of them (~0.1 s here), and reading a patient's DICOM allocates enough objects to trigger several, so a
clinical patient spent ~0.3 s in collections that could not free anything (gc callbacks, benchmarks/SPEED.md
round 5). `frozen_gc` moves the existing objects to the permanent generation for the step's duration
(`gc.freeze`) and hands them back after (`gc.unfreeze`), so a long-lived process (an in-process executor, a
code server) collects them normally afterwards; the step's own garbage is collected as usual throughout.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def frozen_gc() -> Iterator[None]:
    """Collections inside skip the objects that existed on entry (nested use: the outermost scope decides)."""
    if gc.get_freeze_count():  # an enclosing scope (or the process) froze already: leave its state alone
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def with_frozen_gc(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn` runs inside `frozen_gc()`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with frozen_gc():
            return fn(*args, **kwargs)

    return wrapper
