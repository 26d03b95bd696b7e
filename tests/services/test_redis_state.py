"""Redis-only behaviour: Lua transitions, retry deduplication, streams, locks, indexes."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from orchestra_cli.backends import Backends, open_backends
from orchestra_cli.errors import StateUnavailable
from orchestra_cli.models import Task
from orchestra_cli.settings import Settings
from orchestra_cli.state.base import Create
from orchestra_cli.state.redis import RedisStateStore
from orchestra_cli.status import Status
from orchestra_cli.util import dumps
from tests.contract.conftest import REDIS_URL, cleanup_services, services_settings

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
        kept = store.events(root_id=task.id, limit=10000)
        seqs = [e.seq for e in kept]
        assert seqs == sorted(seqs) and seqs[-1] - seqs[0] == len(seqs) - 1
        # an audit count reads what the tree's stream keeps
        assert store.count_events(task.id, "tick") == sum(e.type == "tick" for e in kept)
    finally:
        cleanup_services(b)


def test_a_small_trees_events_are_lines_until_it_grows_or_is_followed(svc: Backends) -> None:
    """A one-task tree keeps its events as lines (~0.7 KB, not a ~4.8 KB stream); more
    events than fit, or a follower, move them into a stream in one step, in order."""
    store = _store(svc)
    log_key = lambda t: store.key("evlog", t.root_id)  # noqa: E731
    stream_key = lambda t: store.key("events", t.root_id)  # noqa: E731
    task, _ = store.create_task(Task(title="t", input="x"), Create(dispatch={"capability": "c"}))
    claimed, _ = store.claim(task.id, "a1")
    store.transition(task.id, Status.SUCCEEDED, expect_version=claimed.version, result="ok")
    assert store.r.exists(log_key(task)) and not store.r.exists(stream_key(task))
    assert store.r.memory_usage(log_key(task)) < 1500
    lines = store.events(root_id=task.id)
    assert [e.type for e in lines] == ["created", "queued", "running", "succeeded"]
    assert lines[2].data["agent"] == "a1" and lines[0].data["title"] == "t"
    assert store.events(root_id=task.id, after=lines[1].seq, limit=1) == [lines[2]]
    assert store.count_events(task.id, "running") == 1
    # the same events, field for field, as the global stream has them
    everything = {e.seq: e for e in store.events(after=lines[0].seq - 1, limit=100)}
    assert all(everything[e.seq] == e for e in lines)

    # growing: past ~2 KB of lines the tree gets its stream, every event in order
    grown, _ = store.create_task(Task(title="g", input="x"))
    for i in range(12):
        store.append_event(grown.id, grown.root_id, "tick", {"i": i, "pad": "p" * 100})
    assert not store.r.exists(log_key(grown)) and store.r.exists(stream_key(grown))
    ticks = store.events(root_id=grown.id)
    assert [e.type for e in ticks] == ["created"] + ["tick"] * 12
    assert [e.data.get("i") for e in ticks[1:]] == list(range(12))
    assert store.count_events(grown.id, "tick") == 12

    # followed: the lines move at once, and the next event wakes the follower
    followed, _ = store.create_task(Task(title="f", input="x"))
    before = store.events(root_id=followed.id)
    assert store.events(root_id=followed.id, after=before[-1].seq, wait=0.2) == []
    assert store.r.exists(stream_key(followed)) and not store.r.exists(log_key(followed))
    assert store.events(root_id=followed.id) == before
    store.append_event(followed.id, followed.root_id, "note", {})
    got = store.events(root_id=followed.id, after=before[-1].seq, wait=2.0)
    assert [e.type for e in got] == ["note"]


def test_lines_keep_text_that_other_line_breaks_would_split(svc: Backends) -> None:
    store = _store(svc)
    title = "x\u2028y\u2029z\x85w\tv\nu"  # JSON leaves the first three raw
    task, _ = store.create_task(Task(title=title, input="x"))
    store.append_event(task.id, task.root_id, "note", {"text": title})
    assert [e.data.get("title") or e.data["text"] for e in store.events(root_id=task.id)] == [
        title,
        title,
    ]
    assert store.count_events(task.id, "note") == 1


def test_lines_and_a_stream_both_present_after_a_torn_snapshot_lose_nothing(
    svc: Backends,
) -> None:
    """A snapshot DUMPs key by key: it may keep a tree's lines from before their move and
    its stream from after. Restored, readers merge both, and the next move adds only the
    lines the stream lacks."""
    store = _store(svc)
    task, _ = store.create_task(Task(title="t", input="x"))
    store.append_event(task.id, task.root_id, "note", {"n": 1})
    log_key = store.key("evlog", task.root_id)
    import redis

    raw = redis.Redis.from_url(REDIS_URL)  # DUMP payloads are bytes
    lines = raw.dump(log_key)
    seq = store.events(root_id=task.id)[-1].seq
    assert store.events(root_id=task.id, after=seq, wait=0.1) == []  # followed: lines move
    store.append_event(task.id, task.root_id, "note", {"n": 2})
    raw.restore(log_key, 0, lines)  # the restored snapshot's older copy
    raw.close()
    expected = ["created", "note", "note"]
    assert [e.type for e in store.events(root_id=task.id)] == expected
    assert store.count_events(task.id, "note") == 2
    assert store.events(root_id=task.id, after=1, wait=0.1)  # FOLLOW moves what is missing
    assert not store.r.exists(log_key)
    assert [e.type for e in store.events(root_id=task.id)] == expected


def test_a_follower_of_a_tree_not_created_yet_is_woken_by_its_first_event(
    svc: Backends,
) -> None:
    store = _store(svc)
    task = Task(title="later", input="x")
    assert store.events(root_id=task.id, wait=0.1) == []  # marks the tree as followed
    timer = threading.Timer(0.3, lambda: store.create_task(task))
    timer.start()
    started = time.monotonic()
    got = store.events(root_id=task.id, wait=3.0)
    timer.join()
    assert [e.type for e in got] == ["created"] and time.monotonic() - started < 2.5
    assert not store.r.exists(store.key("evlog", task.id))


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


def test_an_agent_waits_for_a_task_as_long_as_the_store_may_retry_its_create(
    svc: Backends, tmp_path: Path
) -> None:
    """The grace for a message whose task is not stored yet follows the store's own
    create window: with a 10 s socket timeout, a create is retried for over 200 s."""
    from types import SimpleNamespace

    from orchestra_cli.engine.agent import Agent
    from orchestra_cli.engine.roles import load_roles
    from orchestra_cli.engine.worker import DeadLetter, Defer
    from orchestra_cli.llm.offline import OfflineProvider
    from orchestra_cli.llm.prompts import PromptLibrary
    from orchestra_cli.models import MSG_RUN, Envelope
    from orchestra_cli.settings import RedisSettings
    from orchestra_cli.state.redis import RedisStateStore
    from orchestra_cli.util import now

    slow = RedisStateStore(
        REDIS_URL, RedisSettings(key_prefix=_store(svc).prefix, socket_timeout=10)
    )
    try:
        assert slow.create_window > 200 > _store(svc).create_window
        b = Backends(svc.settings, slow, svc.broker, svc.journals)
        agent = Agent(b, load_roles()["coder"], OfflineProvider(), PromptLibrary(), name="a")
        env = Envelope(type=MSG_RUN, task_id="01a214fa-0000-7000-8000-000000000000")

        def handle(age: float) -> object:
            env.time = now() - age
            delivery = SimpleNamespace(envelope=env, delivery_count=3, queue="work.code")
            return agent.handle(delivery)  # type: ignore[arg-type]

        assert isinstance(handle(180), Defer)  # a 130 s constant dead-lettered it
        assert isinstance(handle(slow.create_window + 60), DeadLetter)
    finally:
        slow.close()


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
    import orchestra_cli.state.redis_conn as mod

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
        # a script with ``meanwhile`` (the submitter's early publish) runs on the
        # thread's own connection, the others through the batcher's
        store.create_task(
            Task(title="m", input="x", capability="code"),
            Create(dispatch={"queue": "work.code"}, meanwhile=lambda: None),
        )
        held = store._script_conns._held
        assert len(held) >= 1  # the main thread's (the other thread's may be gone)
        assert store._batcher._conn is not None
        conns = [h.resource for h in held] + [store._batcher._conn]
    finally:
        cleanup_services(b)
    assert all(c._sock is None for c in conns)  # closed with the backends


def test_the_light_read_client_answers_as_redis_py_does(svc: Backends) -> None:
    from orchestra_cli.state.resp import LiteRedis, RespError

    store = _store(svc)
    for i in range(5):
        store.create_task(Task(title=f"t{i}", input="x", capability="code"))
    lite = LiteRedis(REDIS_URL, socket_timeout=5, connect_timeout=2, client_name="t")
    try:
        created, ids = store.key("by", "created"), store.key("ids")
        first = store.r.zrange(ids, 0, 0)[0]
        assert lite.zrange(ids, 0, -1) == store.r.zrange(ids, 0, -1)
        assert lite.zrangebylex(ids, f"[{first[:8]}", f"({first[:8]}\xff", 0, 2) == (
            store.r.zrangebylex(ids, f"[{first[:8]}", f"({first[:8]}\xff", start=0, num=2)
        )
        assert lite.zrevrangebyscore(created, "+inf", "-inf", 1, 3, withscores=True) == (
            store.r.zrevrangebyscore(created, "+inf", "-inf", start=1, num=3, withscores=True)
        )
        pipe = lite.pipeline()
        pipe.hgetall(store.key("t", first)).zcard(created).hgetall(store.key("t", "none"))
        assert pipe.execute() == [store.r.hgetall(store.key("t", first)), 5, {}]
        store.r.set(store.key("plain"), "v")
        with pytest.raises(RespError, match="WRONGTYPE"):
            lite.hgetall(store.key("plain"))
        assert lite.zrange(ids, 0, 0) == [first]  # the connection survives an error reply
    finally:
        lite.close()


def test_the_light_read_client_selects_the_database_and_reports_auth_errors(
    home: Path,
) -> None:
    import redis

    from orchestra_cli.errors import StateError
    from orchestra_cli.state.resp import LiteRedis

    other = redis.Redis.from_url("redis://127.0.0.1:6379/3", decode_responses=True)
    key = f"orchestra-test:lite:{time.time_ns()}"
    try:
        other.zadd(key, {"a": 1})
        lite = LiteRedis(
            "redis://127.0.0.1:6379/3", socket_timeout=5, connect_timeout=2, client_name="t"
        )
        assert lite.zrange(key, 0, -1) == ["a"]
        lite.close()
    finally:
        other.delete(key)
        other.close()
    settings = services_settings(home)
    settings.state_url = "redis://:wrong@127.0.0.1:6379/0"  # this server has no password
    b = open_backends(settings)
    try:
        with pytest.raises(StateError, match="AUTH"):
            b.state.get_task("00000000-0000-7000-8000-000000000000")
    finally:
        b.close()


def test_task_reads_in_a_fresh_process_never_import_redis_py(svc: Backends, home: Path) -> None:
    import json
    import subprocess
    import sys

    store = _store(svc)
    task, _ = store.create_task(Task(title="t", input="x", capability="code"))
    code = (
        "import sys, json\n"
        "from orchestra_cli.backends import open_backends\n"
        "from orchestra_cli.settings import load_settings\n"
        "b = open_backends(load_settings().settings)\n"
        f"t = b.state.get_task({task.id[:8]!r})\n"
        "n = len(b.state.list_tasks(limit=5)) + len(b.state.tree(t.root_id))\n"
        "kinds = [e.type for e in b.state.events(root_id=t.root_id)]\n"
        "from orchestra_cli.cli.main import run_cli\n"  # task get reads its tree's events
        f"codes = [run_cli(['task', 'get', {task.id!r}]), run_cli(['task', 'list'])]\n"
        "print(json.dumps([t.id, n, kinds, codes, 'redis' in sys.modules]))\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "ORCHESTRA_HOME": str(home),
        "ORCHESTRA_STATE_URL": REDIS_URL,
        "ORCHESTRA_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672/%2F",
        "ORCHESTRA_REDIS__KEY_PREFIX": store.prefix,
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == [task.id, 2, ["created"], [0, 0], False]


def _lose_the_next_script_reply(store: RedisStateStore, error: Exception) -> list[bool]:
    """The next script of this thread runs, but its reply is lost: ``error`` instead —
    on the thread's own connection (a script with ``meanwhile``) or the batcher's.
    The returned list holds True once that happened."""
    batcher = store._batcher
    batcher._conn = batcher._conn or store._new_connection()
    lost: list[bool] = []
    for conn in (store._script_conns.get(), batcher._conn):
        real = conn.read_response

        def read_response(*args: object, real: Any = real, **kwargs: object) -> object:
            if not lost:
                lost.append(True)
                real(*args, **kwargs)
                raise error
            return real(*args, **kwargs)

        conn.read_response = read_response
    return lost


def test_a_failed_meanwhile_is_reported_even_when_the_scripts_reply_was_lost(
    svc: Backends,
) -> None:
    import redis

    store = _store(svc)
    lost = _lose_the_next_script_reply(store, redis.ConnectionError("reply lost"))

    def broken() -> None:
        raise RuntimeError("broker down")

    task = Task(title="t", input="x", capability="code")
    with pytest.raises(RuntimeError, match="broker down"):  # not swallowed by the retry
        store.create_task(task, Create(dispatch={"queue": "work.code"}, meanwhile=broken))
    assert lost and store.get_task(task.id).status == Status.QUEUED


def test_short_lived_threads_use_neither_pool_slots_nor_sockets_for_good(home: Path) -> None:
    import gc
    import threading

    settings = services_settings(home)
    settings.redis.max_connections = 4
    b = open_backends(settings)
    try:
        store = _store(b)
        task, _ = store.create_task(Task(title="t", input="x"))
        errors: list[BaseException] = []

        def work() -> None:  # a script (own connection) and reads (light client)
            try:
                store.append_event(task.id, task.root_id, "note")
                store.get_task(task.id)
            except BaseException as exc:
                errors.append(exc)

        for _ in range(12):  # more threads, one after another, than the pool allows
            t = threading.Thread(target=work)
            t.start()
            t.join()
        assert errors == []
        gc.collect()
        assert store._lite is not None and len(store._lite._socks._held) <= 1  # with threads
        assert len(store._script_conns._held) <= 1
        assert store.count_events(task.id, "note") == 12
    finally:
        cleanup_services(b)


def test_a_create_whose_reply_was_lost_is_retried_and_reports_the_task_created_once(
    svc: Backends,
) -> None:
    import redis

    store = _store(svc)
    lost = _lose_the_next_script_reply(store, redis.TimeoutError("reply lost"))
    task = Task(title="t", input="x", capability="code", idempotency_key="once")
    stored, created = store.create_task(task, Create(dispatch={"queue": "work.code"}))
    assert lost and created and stored.id == task.id and stored.status == Status.QUEUED
    assert [e.type for e in store.events(root_id=task.id)] == ["created", "queued"]
    again, created = store.create_task(Task(title="t2", input="y", idempotency_key="once"))
    assert not created and again.id == task.id  # another create with the key: the first task


def test_lost_replies_of_a_claim_and_a_versioned_success_are_recognised_in_the_hash(
    svc: Backends,
) -> None:
    import redis

    store = _store(svc)
    task, _ = store.create_task(Task(title="t", input="x", capability="code"), Create(dispatch={}))
    lost = _lose_the_next_script_reply(store, redis.TimeoutError("reply lost"))
    claimed, ok = store.claim(task.id, "a1")
    assert lost and ok and claimed.status == Status.RUNNING and claimed.attempts == 1
    lost = _lose_the_next_script_reply(store, redis.TimeoutError("reply lost"))
    done = store.transition(
        task.id, Status.SUCCEEDED, expect_version=claimed.version, known=claimed, result="r"
    )
    assert lost and done.status == Status.SUCCEEDED and done.result == "r"
    assert store.get_task(task.id).version == claimed.version + 1  # applied once
    assert [e.type for e in store.events(root_id=task.id)] == [
        "created",
        "queued",
        "running",
        "succeeded",
    ]
    # the hot path leaves no key per operation or per task beyond the task's own
    assert not list(store.r.scan_iter(store.key("op", "*")))
    assert not list(store.r.scan_iter(store.key("evc", "*")))


def test_an_unversioned_transition_whose_reply_was_lost_applies_once(svc: Backends) -> None:
    import redis

    store = _store(svc)
    task, _ = store.create_task(Task(title="t", input="x", capability="code"))
    lost = _lose_the_next_script_reply(store, redis.TimeoutError("reply lost"))
    cancelled = store.transition(task.id, Status.CANCELLED, error="stop")
    assert lost and cancelled.status == Status.CANCELLED
    assert store.count_events(task.id, "cancelled") == 1
    assert list(store.r.scan_iter(store.key("op", "*")))  # its token: a key that expires


def test_waiting_leaves_no_list_behind(svc: Backends) -> None:
    store = _store(svc)
    task, _ = store.create_task(Task(title="t", input="x", capability="code"), Create(watch=True))
    store.transition(task.id, Status.CANCELLED)
    assert store.wait_ended(task.id, 1.0, counted=True) is not None  # popped its item
    assert store.wait_ended(task.id, 1.0) is not None  # ended already: nothing pushed
    ended, waiting = store.key("ended", task.id), store.key("waiting", task.id)
    assert store.r.exists(ended) == 0 and store.r.exists(waiting) == 0
