"""pipeline.gc_freeze: the first patient step of a process collects, then sets aside every object alive (the
loaded libraries'); what the steps create afterwards is still collected. Run in a fresh interpreter: freezing is
per process, and this test process may have run a patient step already."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import gc, weakref
    from rtmap_assets.pipeline.gc_freeze import after_freezing_long_lived_objects, freeze_long_lived_objects

    class Node:
        other = None

    def cycle():
        a, b = Node(), Node()
        a.other, b.other = b, a
        return weakref.ref(a)

    gc.disable()  # no automatic collection may interfere with what is checked
    assert gc.get_freeze_count() == 0
    before = cycle()  # garbage already when the first step starts
    kept = Node(); kept.other = kept  # alive when the first step starts
    freeze_long_lived_objects()
    frozen = gc.get_freeze_count()
    assert before() is None, "the garbage present before the freeze was collected, not frozen"
    assert frozen > 0
    during = cycle()  # a step's own garbage
    gc.collect()
    assert during() is None, "garbage made after the freeze is collected as usual"

    @after_freezing_long_lived_objects
    def step():
        return gc.get_freeze_count()

    assert step() == frozen  # later steps leave the frozen set alone (once per process)
    print("ok", frozen)
""")


def test_long_lived_objects_frozen_once_and_later_garbage_collected():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok ")
