"""BlockingPool: few threads for quick work, more only while items are stuck or waiting."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from orchestra_cli import blocking
from orchestra_cli.blocking import BlockingPool, available_cores, waiting

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


def _spin(seconds: float) -> None:
    """Python work: it holds the GIL the whole time (a step's CPU)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_items_that_compute_never_run_on_more_than_core_threads() -> None:
    # the process computes all the time (its CPU clock runs with the wall's): a machine
    # busy with other work must not make it look idle here
    pool = BlockingPool("t", core=3, cpu=time.monotonic)
    lock = threading.Lock()
    running = peak = 0

    def item() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        _spin(0.003)
        with lock:
            running -= 1

    async def main() -> None:
        await asyncio.gather(*(pool.run(item) for _ in range(150)))

    _go(main)
    # never a fourth: more would only queue for the GIL (which also runs these one by one)
    assert peak <= 3 and pool.threads <= 3, (peak, pool.threads)


def test_items_that_wait_on_io_get_more_threads_while_the_process_is_idle() -> None:
    pool = BlockingPool("t", core=4)  # patience (0.5 s) alone would never add one

    def step() -> None:  # ten 2 ms round trips to a state store across a network
        for _ in range(10):
            time.sleep(0.002)

    async def main() -> float:
        started = time.monotonic()
        await asyncio.gather(*(pool.run(step) for _ in range(400)))
        return time.monotonic() - started

    took = _go(main)
    assert took < 0.8, (took, pool.threads)  # on 4 threads: 400 x 20 ms / 4 = 2 s
    assert pool.threads > 4


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


def test_no_thread_to_be_had_for_the_watch_loses_no_item(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = BlockingPool("t", core=1, patience=0.05)
    release = threading.Event()
    ran: list[str] = []
    start = threading.Thread.start
    refuse = True

    def refusing(self: threading.Thread) -> None:
        if refuse and self.name.endswith("-watch"):
            raise RuntimeError("can't start new thread")
        start(self)

    monkeypatch.setattr(threading.Thread, "start", refusing)

    async def main() -> None:
        nonlocal refuse
        stuck = asyncio.ensure_future(pool.run(release.wait, 10))
        await asyncio.sleep(0.02)
        behind = asyncio.ensure_future(pool.run(ran.append, "behind"))  # queued, no watch
        await asyncio.sleep(0.1)
        refuse = False
        await asyncio.wait_for(pool.run(ran.append, "next"), 2.0)  # a watch again: a thread
        release.set()
        await asyncio.gather(stuck, behind)

    _go(main)
    assert sorted(ran) == ["behind", "next"]  # each ran once, none raised


def test_a_step_with_no_thread_at_all_fails_at_once_and_never_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = BlockingPool("t")
    ran: list[str] = []

    def refusing(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refusing)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="no thread"):
            await pool.run(ran.append, "never")

    _go(main)
    assert ran == []


def test_an_idle_thread_keeps_nothing_of_its_last_item() -> None:
    pool = BlockingPool("t", core=1)

    class Big:
        pass

    async def main() -> weakref.ref[Big]:
        big = Big()
        ref = weakref.ref(big)
        await pool.run(lambda b: b, big)  # its argument and its result
        del big
        await asyncio.sleep(0.05)
        return ref

    ref = _go(main)
    gc.collect()
    assert ref() is None  # found in review: a thread kept it while it waited for work


def test_threads_a_burst_added_end_when_idle_even_under_a_trickle() -> None:
    # idle threads are woken latest first: a trickle keeps one busy, the rest time out
    pool = BlockingPool("t", core=2, idle=0.3, cpu=time.monotonic)  # never quiet

    def waits_outside() -> None:
        with waiting():
            time.sleep(0.2)

    async def main() -> int:
        await asyncio.gather(*(pool.run(waits_outside) for _ in range(16)))
        burst = pool.threads
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            await pool.run(lambda: None)
            await asyncio.sleep(0.005)
        return burst

    burst = _go(main)
    assert burst >= 8, burst
    assert pool.threads <= 3, (burst, pool.threads)


def test_a_process_held_to_half_a_core_that_computes_gets_no_threads_beyond_core() -> None:
    # its CPU clock runs at half the wall's, as under a quota of half a core: busy for it
    t0 = time.monotonic()
    pool = BlockingPool("t", core=3, cpu=lambda: (time.monotonic() - t0) * 0.5, cores=0.5)

    async def main() -> None:
        await asyncio.gather(*(pool.run(_spin, 0.003) for _ in range(150)))

    _go(main)
    assert pool.threads <= 3, pool.threads


def test_the_cpus_a_process_may_use_are_its_cgroups_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quota, v1_quota, v1_period = tmp_path / "cpu.max", tmp_path / "quota", tmp_path / "period"
    monkeypatch.setattr(blocking, "CPU_MAX", quota)
    monkeypatch.setattr(blocking, "CFS_QUOTA", v1_quota)
    monkeypatch.setattr(blocking, "CFS_PERIOD", v1_period)
    quota.write_text("50000 100000\n")
    assert available_cores() == 0.5
    quota.write_text("max 100000\n")
    assert available_cores() >= 1
    quota.unlink()
    assert available_cores() >= 1  # no cgroup file: the affinity alone
    v1_period.write_text("100000\n")
    v1_quota.write_text("-1\n")  # cgroup v1 without a quota
    assert available_cores() >= 1
    v1_quota.write_text("25000\n")  # cgroup v1 held to a quarter of a core
    assert available_cores() == 0.25
