"""The consume loop's coroutine slots (``worker.Later``) on the embedded broker: their
settlements run on threads of their own, and a drain waits for every one."""

from __future__ import annotations

import asyncio
import threading
import time

from orchestra_cli.aio import SHARED, SYNC_THREADS
from orchestra_cli.backends import Backends
from orchestra_cli.engine import worker
from orchestra_cli.models import MSG_RUN, Envelope
from tests.support import wait_until


def _consume(
    backends: Backends, handler: worker.Handler, stop: threading.Event
) -> threading.Thread:
    loop = worker.ConsumerLoop(
        backends.broker, ["work.code"], handler, concurrency=8, name="later", threads=2
    )
    runner = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    runner.start()
    return runner


def test_later_settlements_go_on_while_the_loops_shared_executor_is_full(
    backends: Backends,
) -> None:
    """Every thread of the loop's default executor blocked (budgeted calls counting
    tokens, say): the outcomes and acks of finished calls still go out."""
    gate = threading.Event()
    blocked = threading.Semaphore(0)

    def hold() -> None:
        blocked.release()
        gate.wait(60)

    async def fill() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(SYNC_THREADS):
            loop.run_in_executor(None, hold)

    SHARED.call(fill)
    for _ in range(SYNC_THREADS):  # every executor thread is in ``hold`` now
        assert blocked.acquire(timeout=30)
    settled: list[str] = []

    def handler(delivery: worker.Delivery) -> worker.Later:
        async def work() -> object:
            await asyncio.sleep(0.01)

            def conclude() -> worker.Action:  # the blocking last step
                settled.append(delivery.envelope.task_id)
                return worker.Ack()

            return conclude

        return worker.Later(work)

    stop = threading.Event()
    try:
        for i in range(20):
            backends.broker.publish("work.code", Envelope(type=MSG_RUN, task_id=f"t{i}"))
        runner = _consume(backends, handler, stop)
        wait_until(lambda: len(settled) == 20, timeout=30, what="20 settled")
        stop.set()
        runner.join(timeout=30)
        assert not runner.is_alive()
        assert backends.broker.depths().get("work.code", 0) == 0  # every one acked
    finally:
        gate.set()
        stop.set()


def test_a_drain_waits_for_the_coroutines_in_flight_and_settles_each_once(
    backends: Backends,
) -> None:
    started = threading.Semaphore(0)
    settled: list[str] = []

    def handler(delivery: worker.Delivery) -> worker.Later:
        async def work() -> worker.Action:
            started.release()
            await asyncio.sleep(0.5)  # still in flight when the stop comes
            settled.append(delivery.envelope.task_id)
            return worker.Ack()

        return worker.Later(work)

    stop = threading.Event()
    for i in range(6):
        backends.broker.publish("work.code", Envelope(type=MSG_RUN, task_id=f"d{i}"))
    runner = _consume(backends, handler, stop)
    for _ in range(6):
        assert started.acquire(timeout=30)
    began = time.monotonic()
    stop.set()
    runner.join(timeout=30)
    assert not runner.is_alive()
    assert time.monotonic() - began < 10
    assert sorted(settled) == [f"d{i}" for i in range(6)]
    assert backends.broker.depths().get("work.code", 0) == 0


def test_work_that_cannot_start_gives_back_what_its_handler_took_and_goes_back(
    backends: Backends, monkeypatch: object
) -> None:
    """No loop to start it on, or a coroutine that fails to be made: ``abandon`` hears of
    the error (the agent gives back its slot, time limit and span) and the message is
    put back, once; the next delivery runs."""
    import pytest

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    abandoned: list[str] = []
    settled: list[str] = []
    tries: dict[str, int] = {}
    real_start = SHARED.start

    def flaky_start(make, done, context=None):  # type: ignore[no-untyped-def]
        raise RuntimeError("the loop is closed")

    def handler(delivery: worker.Delivery) -> worker.Later:
        task_id = delivery.envelope.task_id
        tries[task_id] = tries.get(task_id, 0) + 1
        first = tries[task_id] == 1

        async def work() -> worker.Action:
            settled.append(task_id)
            return worker.Ack()

        def make() -> object:
            if first and task_id == "made":
                raise ValueError("cannot make it")
            return work()

        def abandon(exc: BaseException) -> None:
            abandoned.append(f"{task_id}: {exc}")

        return worker.Later(make, abandon=abandon)  # type: ignore[arg-type]

    calls = {"n": 0}

    def start_once_failing(make, done, context=None):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            return flaky_start(make, done, context)
        return real_start(make, done, context)

    monkeypatch.setattr(SHARED, "start", start_once_failing)
    monkeypatch.setattr(worker, "HANDLER_ERROR_RETRY_SECONDS", 0.05)
    stop = threading.Event()
    backends.broker.publish("work.code", Envelope(type=MSG_RUN, task_id="nostart"))
    runner = _consume(backends, handler, stop)
    try:
        wait_until(lambda: settled == ["nostart"], timeout=30, what="the retry ran")
        assert abandoned == ["nostart: the loop is closed"] and tries["nostart"] == 2
        backends.broker.publish("work.code", Envelope(type=MSG_RUN, task_id="made"))
        wait_until(lambda: "made" in settled, timeout=30, what="the second try ran")
        assert abandoned[1:] == ["made: cannot make it"] and tries["made"] == 2
    finally:
        stop.set()
        runner.join(timeout=30)
    assert not runner.is_alive()
    assert backends.broker.depths().get("work.code", 0) == 0


def test_deadlines_fire_in_order_and_cancelled_ones_do_not_pile_up() -> None:
    """Task time limits: a due one fires, a cancelled one never does, and the heap of
    cancelled ones is compacted (looked at every COMPACT_AFTER schedules)."""
    deadlines = worker.Deadlines("test-deadlines")
    fired: list[str] = []
    deadlines.schedule(0.05, lambda: fired.append("late"))
    deadlines.schedule(0.01, lambda: fired.append("early"))
    deadlines.schedule(0.02, lambda: fired.append("cancelled")).cancel()
    for _ in range(5 * worker.COMPACT_AFTER):  # tasks that finish long before their limit
        deadlines.schedule(600, lambda: fired.append("never")).cancel()
    assert len(deadlines._heap) <= 2 * worker.COMPACT_AFTER + 3
    wait_until(lambda: len(fired) == 2, timeout=5)
    time.sleep(0.05)
    assert fired == ["early", "late"]
