"""SimpleITK's global default thread count, set for a block and restored afterwards.

SimpleITK filters and ITK's registration metric read one process-wide default; code that sets it and
leaves it changed makes every later filter in the process (another patient, a test) run differently.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import SimpleITK as sitk

P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def sitk_threads(threads: int | None) -> Iterator[int]:
    """Run the block with SimpleITK's global default thread count = `threads` (unchanged if None/0),
    and restore the previous value on exit, also on error. Yields the count in force."""
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    if threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    try:
        yield sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def restores_sitk_threads(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator: run `fn` inside `sitk_threads(threads)`, `threads` being its keyword argument of that name."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with sitk_threads(kwargs.get("threads")):  # type: ignore[arg-type]
            return fn(*args, **kwargs)

    return wrapper
