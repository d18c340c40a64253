"""bulk_gc: raised threshold and frozen heap while held (refcounted), restored after."""

from __future__ import annotations

import gc
import threading

from videolib.gc_tuning import BULK_THRESHOLD0, bulk_gc


def test_bulk_gc_is_refcounted_and_restores_the_collector():
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    entered, release = threading.Event(), threading.Event()

    def other_holder():
        with bulk_gc():
            entered.set()
            release.wait(10)

    with bulk_gc():
        assert gc.get_threshold()[0] == max(BULK_THRESHOLD0, before[0])
        assert gc.get_freeze_count() > frozen_before
        thread = threading.Thread(target=other_holder)
        thread.start()
        assert entered.wait(10)
    # The other holder still holds it: the settings stay.
    assert gc.get_threshold()[0] == max(BULK_THRESHOLD0, before[0])
    release.set()
    thread.join(10)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen_before


def test_cycles_made_while_held_are_still_collected():
    class Node:
        pass

    with bulk_gc():
        a, b = Node(), Node()
        a.other, b.other = b, a
        probe = [a]
        import weakref

        ref = weakref.ref(a)
        del a, b, probe
        gc.collect()
        assert ref() is None
