"""BlockingPool: few threads for quick work, more only while items are stuck or waiting."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from orchestra_cli.blocking import BlockingPool, waiting

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")
T = TypeVar("T")


def _go(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(main())


def test_a_result_an_error_and_the_callers_context_come_back() -> None:
    pool = BlockingPool("t", core=2)

    async def main() -> tuple[int, str, str]:
        WHO.set("the caller")
        value = await pool.run(lambda a, b: a + b, 2, 3)
        seen = await pool.run(WHO.get)
        with pytest.raises(KeyError, match="gone"):
            await pool.run(_raise, KeyError("gone"))
        name = await pool.run(lambda: threading.current_thread().name)
        return value, seen, name

    value, seen, name = _go(main)
    assert (value, seen) == (5, "the caller")
    assert name.startswith("t-")  # on the pool's thread, not the loop's


def _raise(exc: BaseException) -> None:
    raise exc


def test_quick_items_never_run_on_more_than_core_threads() -> None:
    pool = BlockingPool("t", core=3)
    lock = threading.Lock()
    running = peak = 0

    def item() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.005)
        with lock:
            running -= 1

    async def main() -> None:
        await asyncio.gather(*(pool.run(item) for _ in range(200)))

    _go(main)
    assert peak == 3  # every thread busy, never a fourth
    assert pool.threads == 3


def test_items_stuck_past_patience_stop_counting_and_the_queue_goes_on() -> None:
    pool = BlockingPool("t", core=2, patience=0.05)
    release = threading.Event()

    async def main() -> float:
        stuck = [asyncio.ensure_future(pool.run(release.wait, 10)) for _ in range(2)]
        await asyncio.sleep(0.01)  # both core threads taken
        started = time.monotonic()
        await pool.run(lambda: None)  # behind them: a third thread takes it
        took = time.monotonic() - started
        release.set()
        await asyncio.gather(*stuck)
        return took

    took = _go(main)
    assert took < 1.0  # not the 10 s the stuck ones could take
    assert pool.threads == 3


def test_an_item_that_says_it_waits_frees_its_thread_at_once() -> None:
    pool = BlockingPool("t", core=1, patience=30.0)  # patience alone would never do it
    release = threading.Event()

    def waits() -> None:
        with waiting():
            release.wait(10)

    async def main() -> float:
        held = asyncio.ensure_future(pool.run(waits))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await pool.run(lambda: None)
        took = time.monotonic() - started
        release.set()
        await held
        return took

    assert _go(main) < 1.0


def test_waiting_outside_a_pool_does_nothing() -> None:
    with waiting():
        pass


def test_threads_above_core_end_when_idle() -> None:
    pool = BlockingPool("t", core=1, patience=0.02, idle=0.1)
    release = threading.Event()

    async def main() -> None:
        # three stuck items: two threads beyond the core
        stuck = [asyncio.ensure_future(pool.run(release.wait, 10)) for _ in range(3)]
        await asyncio.sleep(0.3)
        assert pool.threads == 3
        release.set()
        await asyncio.gather(*stuck)

    _go(main)
    deadline = time.monotonic() + 5
    while pool.threads > 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pool.threads == 1  # the core stays


def test_an_item_whose_caller_was_cancelled_finishes_without_an_error() -> None:
    pool = BlockingPool("t", core=1)
    done = threading.Event()

    def slow() -> str:
        time.sleep(0.05)
        done.set()
        return "late"

    async def main() -> None:
        task = asyncio.ensure_future(pool.run(slow))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.1)  # its result lands on a cancelled future: ignored

    _go(main)
    assert done.is_set()
