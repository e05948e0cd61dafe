"""pipeline.gc_freeze: during a patient's step, collections skip the objects that existed before it; after it,
those objects are collected normally again (no leak in a long-lived process)."""

from __future__ import annotations

import gc
import weakref

from rtmap_assets.pipeline.gc_freeze import frozen_gc, with_frozen_gc


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def _cycle() -> tuple[weakref.ref, weakref.ref]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a), weakref.ref(b)


def test_existing_objects_are_set_aside_during_the_step_and_collected_after():
    gc.collect()
    assert gc.get_freeze_count() == 0
    before = _cycle()  # unreachable already, but tracked: in the permanent generation once frozen
    with frozen_gc():
        assert gc.get_freeze_count() > 0
        gc.collect()
        assert before[0]() is not None  # set aside: not collected during the step
        during = _cycle()
        gc.collect()
        assert during[0]() is None and during[1]() is None  # the step's own garbage is collected as usual
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert before[0]() is None and before[1]() is None  # handed back: collected after the step


def test_nested_scopes_leave_the_outer_scope_frozen():
    @with_frozen_gc
    def step() -> int:
        return gc.get_freeze_count()

    gc.collect()
    with frozen_gc():
        frozen = gc.get_freeze_count()
        assert step() == frozen  # the inner scope neither froze more nor unfroze
        assert gc.get_freeze_count() == frozen
    assert gc.get_freeze_count() == 0
    assert step() > 0 and gc.get_freeze_count() == 0
