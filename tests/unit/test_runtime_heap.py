"""The heap of a long-running process (engine/runtime.py)."""

from __future__ import annotations


def test_a_long_running_process_moves_its_start_up_heap_out_of_the_collectors_way() -> None:
    """`orchestra run` and `agent start` freeze what they built to start (gc.freeze): a
    full collection no longer walks it (in an agent at 256 calls in flight, ~250,000
    objects, ~200 ms with the GIL held; ~70,000 and ~60 ms frozen)."""
    import gc

    from orchestra_cli.engine.runtime import settle_heap

    gc.unfreeze()  # (an earlier test may have run a process's loop in this one)
    try:
        settle_heap()
        assert gc.get_freeze_count() > 1000  # this test process's modules, at least
    finally:
        gc.unfreeze()
