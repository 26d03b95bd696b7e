"""Redis-only behaviour: Lua transitions, retry deduplication, streams, locks, indexes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestra_cli.backends import Backends, open_backends
from orchestra_cli.errors import StateUnavailable
from orchestra_cli.models import Task
from orchestra_cli.settings import Settings
from orchestra_cli.state.redis import RedisStateStore
from orchestra_cli.status import Status
from orchestra_cli.util import dumps
from tests.contract.conftest import cleanup_services, services_settings

pytestmark = pytest.mark.integration


def _store(b: Backends) -> RedisStateStore:
    assert isinstance(b.state, RedisStateStore)
    return b.state


def test_transition_script_refuses_moves_missing_from_the_status_table(svc: Backends) -> None:
    store = _store(svc)
    task, _ = store.create_task(Task(title="t", input="x"))
    for to in (Status.RUNNING, Status.SUCCEEDED):
        with pytest.raises(Exception, match="cannot go from pending"):
            store.transition(task.id, to)
    assert store.get_task(task.id).version == 0
    assert store.count_events(task.id, "running") == 0


def test_a_retried_script_call_with_the_same_token_applies_once(svc: Backends) -> None:
    store = _store(svc)
    task, _ = store.create_task(Task(title="t", input="x"))
    payload = {"p": store.prefix, "max": "100", "tok": "fixed-token", "id": task.id, "ttl": 90}
    body = dumps({**payload, "root": task.id, "type": "note", "time": 1.0, "data": "{}"})
    script = store._scripts["event"]
    assert script(args=[body]) > 0
    assert script(args=[body]) == 0  # the lost-reply retry is recognised
    assert store.count_events(task.id, "note") == 1
    # the token outlives the call's own retries, and not much more
    assert 0 < store.r.ttl(store.key("op", "fixed-token")) <= 90
    assert 60 <= store._op_ttl <= 300  # default socket timeout: 2 x 8 x (5 + 2) + 10 s


def test_event_streams_are_trimmed_to_about_maxlen(home: Path) -> None:
    b = open_backends(_small(home))
    try:
        store = _store(b)
        task, _ = store.create_task(Task(title="t", input="x"))
        for i in range(600):
            store.append_event(task.id, task.root_id, "tick", {"i": i})
        length = store.r.xlen(store.key("events", task.root_id))
        assert 50 <= length < 400
        seqs = [e.seq for e in store.events(root_id=task.id, limit=10000)]
        assert seqs == sorted(seqs) and seqs[-1] - seqs[0] == len(seqs) - 1
        assert store.count_events(task.id, "tick") == 600  # counts survive trimming
    finally:
        cleanup_services(b)


def _small(home: Path) -> Settings:
    settings = services_settings(home)
    settings.redis.stream_maxlen = 50
    return settings


def test_listing_uses_indexes_and_stays_fast_with_many_tasks(svc: Backends) -> None:
    store = _store(svc)
    pipe_tasks = [Task(title=f"t{i}", input="x") for i in range(3000)]
    for t in pipe_tasks:
        store.create_task(t)
    store.transition(pipe_tasks[10].id, Status.QUEUED)
    started = time.perf_counter()
    newest = store.list_tasks(limit=50)
    queued = store.list_tasks(status=["queued"], limit=50)
    elapsed = time.perf_counter() - started
    assert [t.id for t in newest[:2]] == [pipe_tasks[-1].id, pipe_tasks[-2].id]
    assert [t.id for t in queued] == [pipe_tasks[10].id]
    assert elapsed < 0.5


def test_lock_is_exclusive_released_only_by_its_holder_and_expires(svc: Backends) -> None:
    store = _store(svc)
    first, second = store.lock("sweep", ttl=0.5), store.lock("sweep", ttl=0.5)
    assert first.acquire()
    assert not second.acquire()
    assert not second.release()  # a stranger's token cannot delete the lock
    assert first.owned()
    time.sleep(0.7)
    assert second.acquire()  # the first holder's lock expired
    assert not first.renew() and first.lost.is_set()
    assert second.release()


def test_lock_renewal_keeps_a_long_holder(svc: Backends) -> None:
    store = _store(svc)
    holder = store.lock("aggregate:p1", ttl=0.3)
    assert holder.acquire()
    holder.auto_renew()
    time.sleep(0.9)
    assert not store.lock("aggregate:p1", ttl=0.3).acquire()
    assert holder.release()
    assert store.lock("aggregate:p1", ttl=0.3).acquire()


def test_registry_keeps_a_per_capability_index(svc: Backends) -> None:
    from orchestra_cli.models import AgentRecord

    store = _store(svc)
    store.save_agent(AgentRecord(name="a1", role="coder", capabilities=["code", "review"]))
    store.save_agent(AgentRecord(name="a2", role="infra", capabilities=["infra"]))
    assert store.agents_with("code") == ["a1"]
    store.save_agent(AgentRecord(name="a1", role="coder", capabilities=["code"]))
    assert store.agents_with("review") == []
    store.delete_agent("a1")
    assert store.agents_with("code") == []


def test_unreachable_redis_raises_state_unavailable_with_the_password_masked(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import orchestra_cli.state.redis as mod

    monkeypatch.setattr(mod, "MAX_REDIS_ATTEMPTS", 2)
    store = RedisStateStore("redis://:s3cret@127.0.0.1:1/0")
    with pytest.raises(StateUnavailable) as info:
        store.get_task("01234567")
    assert "s3cret" not in str(info.value) and "***" in str(info.value)
    assert "orchestra up" in str(info.value)


def test_scripts_are_loaded_again_when_the_server_has_forgotten_them(svc: Backends) -> None:
    store = _store(svc)
    task, _ = store.create_task(Task(title="t", input="x", capability="code"))
    store.r.script_flush()  # as after a restart: EVALSHA answers NOSCRIPT
    queued = store.transition(task.id, Status.QUEUED, expect_version=task.version)
    assert queued.status == Status.QUEUED and store.get_task(task.id) == queued
    assert store.r.script_exists(store._scripts["transition"].sha) == [True]


def _create_in_child(store: RedisStateStore, conn: object) -> None:
    task, _ = store.create_task(Task(title="child", input="x"))  # a connection of its own
    conn.send(task.id)  # type: ignore[attr-defined]


def test_script_connections_are_per_thread_per_process_and_closed_with_the_store(
    home: Path,
) -> None:
    import multiprocessing
    import threading

    b = open_backends(services_settings(home))
    try:
        store = _store(b)
        mine, _ = store.create_task(Task(title="parent", input="x"))
        ctx = multiprocessing.get_context("fork")
        here, there = ctx.Pipe()
        child = ctx.Process(target=_create_in_child, args=(store, there))
        child.start()
        child_task = here.recv()
        child.join(timeout=30)
        assert child.exitcode == 0
        # the parent's socket was not shared with the child: its replies are its own
        assert store.get_task(child_task).title == "child"
        queued = store.transition(mine.id, Status.QUEUED, expect_version=0)
        assert queued.status == Status.QUEUED
        other = threading.Thread(target=lambda: store.create_task(Task(title="t", input="x")))
        other.start()
        other.join()
        assert len(store._owned) >= 1  # the main thread's (the other thread's may be gone)
        conns = list(store._owned)
    finally:
        cleanup_services(b)
    assert all(c._sock is None for c in conns)  # closed with the backends
