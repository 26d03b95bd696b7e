"""The embedded broker's consumer: how often it looks for work and how much it claims.

Real SQLite files; the statements a consumer runs are counted with SQLite's own
trace callback on the connection of the thread that polls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestra_cli.broker import sqlite as sqlite_broker
from orchestra_cli.broker.sqlite import (
    AHEAD,
    COLD_POLL_SECONDS,
    FAST_SECONDS,
    READY_SECONDS,
    SQLiteBroker,
)
from orchestra_cli.models import MSG_RUN, Envelope
from orchestra_cli.sqlitedb import SQLiteDB

Q = "work.code"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[SQLiteBroker]:
    b = SQLiteBroker(SQLiteDB(tmp_path / "orchestra.db"), lease_seconds=30, max_deliveries=5)
    yield b
    b.close()


def _publish(broker: SQLiteBroker, *names: str, priority: int = 0) -> None:
    for name in names:
        broker.publish(Q, Envelope(type=MSG_RUN, task_id=name), priority=priority)


def _statements(broker: SQLiteBroker) -> list[str]:
    """Every statement run from now on by this thread's connection (reads) and by the
    one that every thread writes through."""
    seen: list[str] = []
    broker.db.conn().set_trace_callback(seen.append)
    with broker.db.write() as writer:
        writer.set_trace_callback(seen.append)
    return seen


def _claims(seen: list[str]) -> int:
    return sum(s.startswith("UPDATE messages SET lease_until") and "RETURNING" in s for s in seen)


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Work counts as fast even if a loaded machine stalls a test for a while."""
    monkeypatch.setattr(sqlite_broker, "FAST_SECONDS", 5.0)


def test_fast_work_is_claimed_ahead_in_one_transaction_and_handed_out_in_order(
    broker: SQLiteBroker, fast: None
) -> None:
    names = [f"t{i:02}" for i in range(20)]
    _publish(broker, *names)
    consumer = broker.consumer([Q], prefetch=2, name="c")
    seen = _statements(broker)
    try:
        got = []
        first, second = consumer.get(timeout=5), consumer.get(timeout=5)
        assert first is not None and second is not None
        assert _claims(seen) == 1  # no settle time known yet: as much as there is room for
        for d in (first, second):
            got.append(d.envelope.task_id)
            d.ack()  # at once: work that settles in well under FAST_SECONDS
        for _ in range(2 + AHEAD):  # room for 2, and AHEAD more, in the next claim
            d = consumer.get(timeout=5)
            assert d is not None
            got.append(d.envelope.task_id)
            d.ack()
        assert _claims(seen) == 2
        assert got == names[: 4 + AHEAD]  # oldest first, none twice
        held = consumer.get(timeout=5)  # claims the other 8: one handed out, 7 ahead
        assert held is not None and _claims(seen) == 3
    finally:
        consumer.close()  # what it holds goes back at once, not when its lease runs out
    other = broker.consumer([Q], prefetch=20, name="other")
    try:
        rest = [other.get(timeout=2) for _ in range(20 - 4 - AHEAD)]
        assert [d.envelope.task_id for d in rest if d] == names[4 + AHEAD :]
        # the one handed out was delivered twice; those only claimed ahead, once
        assert [d.delivery_count for d in rest if d] == [2] + [1] * (20 - 5 - AHEAD)
    finally:
        other.close()


def test_what_waits_claimed_ahead_goes_back_when_the_work_turns_slow(
    broker: SQLiteBroker, fast: None
) -> None:
    _publish(broker, *(f"t{i}" for i in range(5)))
    busy = broker.consumer([Q], prefetch=1, name="busy")
    other = broker.consumer([Q], prefetch=5, name="other")
    try:
        first = busy.get(timeout=5)  # no settle time known yet: claims one
        assert first is not None
        first.ack()  # fast
        slow = busy.get(timeout=5)  # claims the other four: one handed out, three ahead;
        # then it works on it a long while (an LLM call after a run of quick ones)
        assert slow is not None and slow.envelope.task_id == "t1"
        started = time.monotonic()
        rest = [other.get(timeout=5) for _ in range(3)]
        assert [d.envelope.task_id for d in rest if d] == ["t2", "t3", "t4"]
        assert all(d.delivery_count == 1 for d in rest if d)  # never handed out: uncounted
        assert time.monotonic() - started < READY_SECONDS + 2
        slow.ack()
    finally:
        busy.close()
        other.close()


def test_slow_work_is_claimed_only_as_room_frees_so_an_idle_consumer_gets_the_next(
    broker: SQLiteBroker,
) -> None:
    _publish(broker, "a", "b", "c")
    busy = broker.consumer([Q], prefetch=1, name="busy")
    idle = broker.consumer([Q], prefetch=1, name="idle")
    try:
        first = busy.get(timeout=5)
        assert first is not None and first.envelope.task_id == "a"
        time.sleep(max(FAST_SECONDS * 3, 0.1))  # slow work: an LLM call, say
        first.ack()
        second = busy.get(timeout=5)
        assert second is not None and second.envelope.task_id == "b"  # and nothing ahead
        third = idle.get(timeout=5)
        assert third is not None and third.envelope.task_id == "c"
        second.ack()
        third.ack()
    finally:
        busy.close()
        idle.close()
    assert broker.depths().get(Q, 0) == 0


def test_one_claim_hands_out_the_highest_priority_first(broker: SQLiteBroker) -> None:
    _publish(broker, "low", priority=1)
    _publish(broker, "high", priority=9)
    _publish(broker, "mid", priority=5)
    consumer = broker.consumer([Q], prefetch=3, name="c")
    seen = _statements(broker)
    try:
        got = [consumer.get(timeout=5) for _ in range(3)]
        assert [d.envelope.task_id for d in got if d] == ["high", "mid", "low"]
        assert _claims(seen) == 1
    finally:
        consumer.close()


def test_a_quiet_consumer_looks_for_work_rarely_while_other_queues_are_busy(
    broker: SQLiteBroker,
) -> None:
    """Every commit moves data_version; a consumer with nothing to do used to run its
    claim query after each one (the orchestrator's, while agents work: ~40% of a core)."""
    stop = threading.Event()

    def busy_elsewhere() -> None:  # another process's traffic, on another queue
        while not stop.is_set():
            broker.publish("work.other", Envelope(type=MSG_RUN, task_id="x"))
            time.sleep(0.001)

    consumer = broker.consumer([Q], prefetch=1, name="quiet")
    seen = _statements(broker)
    worker = threading.Thread(target=busy_elsewhere)
    worker.start()
    try:
        assert consumer.get(timeout=1.0) is None
        looks = sum(s.startswith("SELECT id FROM messages") for s in seen)
        assert looks <= 1.0 / COLD_POLL_SECONDS + 15, looks  # was one per commit: ~500+
        threading.Timer(0.2, _publish, (broker, "wanted")).start()
        d = consumer.get(timeout=5)  # still seen (within COLD_POLL_SECONDS, unloaded)
        assert d is not None and d.envelope.task_id == "wanted"
        d.ack()
    finally:
        stop.set()
        worker.join()
        consumer.close()
