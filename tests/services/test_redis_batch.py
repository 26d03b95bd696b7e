"""Scripts from many threads sharing round trips (state/redis_batch.py), on real Redis:
every caller gets its own reply, concurrent calls ride together, and a connection
lost mid-batch leaves every script applied exactly once."""

from __future__ import annotations

import threading

import pytest

from orchestra_cli.backends import Backends
from orchestra_cli.models import Task
from orchestra_cli.state.redis import RedisStateStore
from orchestra_cli.status import Status

pytestmark = pytest.mark.integration

THREADS, EACH = 8, 40


def _store(b: Backends) -> RedisStateStore:
    assert isinstance(b.state, RedisStateStore)
    return b.state


def _count_round_trips(store: RedisStateStore) -> list[int]:
    """Sizes of the batches the batcher sends, from now on."""
    sizes: list[int] = []
    real = store._batcher._send

    def send(batch: list[object]) -> None:
        sizes.append(len(batch))
        real(batch)  # type: ignore[arg-type]

    store._batcher._send = send  # type: ignore[method-assign]
    return sizes


def _in_threads(work: object) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def run(n: int) -> None:
        start.wait()
        try:
            work(n)  # type: ignore[operator]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return errors


def test_concurrent_scripts_share_round_trips_and_each_caller_gets_its_own_reply(
    svc: Backends,
) -> None:
    store = _store(svc)
    sizes = _count_round_trips(store)
    made: dict[int, list[Task]] = {}

    def work(n: int) -> None:
        mine = made.setdefault(n, [])
        for i in range(EACH):
            task, created = store.create_task(Task(title=f"{n}-{i}", input="x"))
            assert created
            queued = store.transition(task.id, Status.QUEUED, expect_version=task.version)
            claimed, ok = store.claim(queued.id, f"agent-{n}")
            assert ok and claimed.agent == f"agent-{n}" and claimed.title == f"{n}-{i}"
            mine.append(claimed)

    assert _in_threads(work) == []
    assert sum(sizes) == THREADS * EACH * 3  # every script went through the batcher once
    assert max(sizes) > 1  # some rode together
    assert len(sizes) < THREADS * EACH * 3
    stored = store.get_tasks(t.id for ts in made.values() for t in ts)
    assert len(stored) == THREADS * EACH
    for n, tasks in made.items():
        for t in tasks:
            assert stored[t.id].status == Status.RUNNING and stored[t.id].agent == f"agent-{n}"
            assert store.count_events(t.id, "running") == 1


def test_a_connection_lost_mid_batch_applies_every_script_once(svc: Backends) -> None:
    """The batch's socket is cut after its scripts were sent: every caller retries
    with its token, and each transition happened exactly once."""
    store = _store(svc)
    tasks = [store.create_task(Task(title=f"t{i}", input="x"))[0] for i in range(THREADS)]
    batcher = store._batcher
    real = batcher._send
    cut: list[int] = []

    def send(batch: list[object]) -> None:
        if not cut and len(batch) > 1:  # the first shared round trip loses its replies
            cut.append(len(batch))
            conn = batcher._conn
            real_read = conn.read_response

            def read_response(*args: object, **kwargs: object) -> object:
                conn.read_response = real_read
                for _ in batch:  # they all ran on the server…
                    real_read(*args, **kwargs)
                conn.disconnect()
                raise __import__("redis").ConnectionError("connection lost")  # …replies lost

            conn.read_response = read_response
        real(batch)  # type: ignore[arg-type]

    batcher._conn = batcher._conn or store._new_connection()
    batcher._send = send  # type: ignore[method-assign]

    def work(n: int) -> None:
        t = tasks[n]
        store.transition(t.id, Status.QUEUED, expect_version=t.version)
        store.append_event(t.id, t.root_id, "note", {"n": n})

    assert _in_threads(work) == []
    assert cut, "no two scripts ever shared a round trip"
    for t in tasks:
        assert store.get_task(t.id).status == Status.QUEUED
        assert store.count_events(t.id, "queued") == 1
        assert store.count_events(t.id, "note") == 1


def test_a_lone_script_goes_straight_out(svc: Backends) -> None:
    store = _store(svc)
    sizes = _count_round_trips(store)
    task, _ = store.create_task(Task(title="t", input="x"))
    store.transition(task.id, Status.QUEUED, expect_version=task.version)
    assert sizes == [1, 1]


def test_a_bulk_create_whose_replies_were_lost_or_unknown_stores_each_task_once(
    svc: Backends,
) -> None:
    """``create_tasks``: the server forgot the script (NOSCRIPT for every create of the
    pipeline), then a pipeline whose replies are lost after it ran: each create runs
    again on its own and finds its task — none is stored twice, none is missing."""
    from orchestra_cli.state.base import Create

    store = _store(svc)
    store.r.script_flush()
    first = [(Task(title=f"a{i}", input="x"), Create()) for i in range(5)]
    assert all(created for _, created in store.create_tasks(first))
    conn = store._script_conns.get()
    real = conn.read_response
    lost: list[bool] = []

    def read_response(*args: object, **kwargs: object) -> object:
        if not lost:
            lost.append(True)
            for _ in range(5):
                real(*args, **kwargs)  # every create ran…
            raise __import__("redis").ConnectionError("connection lost")  # …its replies lost
        return real(*args, **kwargs)

    conn.read_response = read_response
    second = [(Task(title=f"b{i}", input="x", capability="code"), Create()) for i in range(5)]
    results = store.create_tasks(second)
    assert lost and [created for _, created in results] == [True] * 5
    assert [t.title for t, _ in results] == [f"b{i}" for i in range(5)]
    titles = sorted(t.title for t in store.list_tasks(limit=50))
    assert titles == sorted([f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)])
    for task, _ in results:
        assert store.count_events(task.id, "created") == 1


def test_a_bulk_create_that_cannot_be_sent_goes_one_by_one_each_message_after_its_script(
    svc: Backends,
) -> None:
    """The pipeline's write fails: no message goes out for a create that was never sent;
    each create then goes as a single one does, its ``meanwhile`` once its script is."""
    import redis

    from orchestra_cli.state.base import Create

    store = _store(svc)
    conn = store._script_conns.get()
    real = conn.send_packed_command
    order: list[str] = []

    def send_packed_command(*args: object, **kwargs: object) -> object:
        conn.send_packed_command = real  # once
        order.append("pipeline failed")
        raise redis.ConnectionError("connection reset")

    conn.send_packed_command = send_packed_command
    real_single = conn.send_command

    def send_command(*args: object, **kwargs: object) -> object:
        if str(args[0]).startswith("EVAL"):  # (a reconnect says HELLO first)
            order.append(f"sent {args[0]}")
        return real_single(*args, **kwargs)

    conn.send_command = send_command
    items = [
        (
            Task(title=f"t{i}", input="x", capability="code"),
            Create(dispatch={"queue": "work.code"}, meanwhile=lambda i=i: order.append(f"m{i}")),
        )
        for i in range(3)
    ]
    results = store.create_tasks(items)
    assert order == [
        "pipeline failed",
        "sent EVALSHA",
        "m0",
        "sent EVALSHA",
        "m1",
        "sent EVALSHA",
        "m2",
    ]
    assert [t.status for t, _ in results] == [Status.QUEUED] * 3
    assert all(store.count_events(t.id, "created") == 1 for t, _ in results)


def test_a_script_error_in_a_bulk_create_names_the_tasks_that_were_stored(
    svc: Backends,
) -> None:
    """One create of the pipeline answers with an error (OOM, say): the others are read
    and kept, and ``PartlyStored`` lists them."""
    import redis

    from orchestra_cli.errors import PartlyStored
    from orchestra_cli.state.base import Create

    store = _store(svc)
    conn = store._script_conns.get()
    conn.connect()  # its handshake's replies first
    real = conn.read_response
    seen: list[int] = []

    def read_response(*args: object, **kwargs: object) -> object:
        reply = real(*args, **kwargs)
        seen.append(1)
        if len(seen) == 2:
            raise redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'")
        return reply

    conn.read_response = read_response
    items = [(Task(title=f"t{i}", input="x"), Create()) for i in range(4)]
    with pytest.raises(PartlyStored, match="3 of 4 tasks stored") as info:
        store.create_tasks(items)
    conn.read_response = real
    assert [t.title for t, _ in info.value.stored] == ["t0", "t2", "t3"]
    assert "OOM" in info.value.cause.message


def test_an_error_reading_one_reply_of_a_shared_round_trip_makes_the_others_retry(
    svc: Backends,
) -> None:
    """A reply that cannot be parsed fails its own caller; the others of the batch get
    a lost connection of their own and retry with their tokens: each applied once."""
    import time

    import redis

    store = _store(svc)
    tasks = [store.create_task(Task(title=f"t{i}", input="x"))[0] for i in range(THREADS)]
    batcher = store._batcher
    real = batcher._send
    sizes: list[int] = []

    def send(batch: list[object]) -> None:
        sizes.append(len(batch))
        if len(sizes) == 1:  # the first lead holds on until the others wait behind it
            deadline = time.monotonic() + 30
            while len(batcher._pending) + len(batch) < THREADS and time.monotonic() < deadline:
                time.sleep(0.001)
        elif len(sizes) == 2:  # …so the second batch holds them all: garble its first reply
            conn = batcher._conn
            real_read = conn.read_response

            def read_response(*args: object, **kwargs: object) -> object:
                conn.read_response = real_read
                real_read(*args, **kwargs)
                raise redis.InvalidResponse("garbled")

            conn.read_response = read_response
        real(batch)  # type: ignore[arg-type]

    batcher._conn = batcher._conn or store._new_connection()
    batcher._send = send  # type: ignore[method-assign]
    failures: list[BaseException] = []

    def work(n: int) -> None:
        t = tasks[n]
        try:
            store.append_event(t.id, t.root_id, "note", {"n": n})
        except Exception as exc:  # the one whose reply was garbled
            failures.append(exc)

    assert _in_threads(work) == []
    assert sizes[0] + sizes[1] == THREADS and sizes[1] >= 2, sizes  # every other one rode along
    assert len(failures) == 1 and "garbled" in str(failures[0])
    assert all(store.count_events(t.id, "note") == 1 for t in tasks)
