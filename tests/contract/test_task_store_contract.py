"""The TaskStore contract (state/base.py): every backend passes the same tests."""

from __future__ import annotations

import threading
import time

import pytest

from orchestra_cli.backends import Backends
from orchestra_cli.errors import NotFoundError, TransitionRejected, UsageError
from orchestra_cli.models import Task, Usage
from orchestra_cli.state.base import Create
from orchestra_cli.status import Status


def _task(**kw: object) -> Task:
    return Task(title=str(kw.pop("title", "t")), input="do it", **kw)  # type: ignore[arg-type]


def test_created_task_reads_back_with_a_created_event(contract_backends: Backends) -> None:
    state = contract_backends.state
    task, created = state.create_task(_task(labels={"team": "a"}, capability="code"))
    assert created
    got = state.get_task(task.id)
    assert got.id == task.id and got.root_id == task.id
    assert got.labels == {"team": "a"} and got.status == Status.PENDING
    events = state.events(root_id=task.id)
    assert [e.type for e in events] == ["created"]


def test_same_idempotency_key_returns_the_first_task(contract_backends: Backends) -> None:
    state = contract_backends.state
    first, created1 = state.create_task(_task(idempotency_key="k-1"))
    second, created2 = state.create_task(_task(idempotency_key="k-1", title="other"))
    assert created1 and not created2
    assert second.id == first.id and second.title == "t"


def test_a_task_routed_at_creation_is_queued_in_the_same_step(
    contract_backends: Backends,
) -> None:
    state = contract_backends.state
    route = {"queue": "work.code", "planner": "submit", "why": "capability given"}
    task, created = state.create_task(
        _task(capability="code", idempotency_key="k-2"), Create(dispatch=route)
    )
    assert created and task.status == Status.QUEUED and task.version == 1 and task.queued_at
    assert state.get_task(task.id) == task
    assert [t.id for t in state.list_tasks(status=["queued"])] == [task.id]
    assert state.status_counts() == {"queued": 1}
    assert state.list_tasks(status=["pending"]) == []
    events = state.events(root_id=task.id)
    assert [e.type for e in events] == ["created", "queued"]
    assert events[1].data["from"] == "pending" and events[1].data["planner"] == "submit"
    assert events[1].data["to"] == "queued" and events[1].data["queue"] == "work.code"
    assert events[1].data["attempt"] == 0 and events[1].data["agent"] is None
    assert events[0].data["title"] == "t" and events[0].data["capability"] == "code"
    again, created = state.create_task(_task(idempotency_key="k-2"), Create(dispatch=route))
    assert not created and again.id == task.id
    assert len(state.events(root_id=task.id)) == 2  # the duplicate changed nothing


def test_meanwhile_runs_once_with_the_create_and_its_error_comes_after_it(
    contract_backends: Backends,
) -> None:
    state = contract_backends.state
    ran: list[str] = []
    task, created = state.create_task(
        _task(capability="code"),
        Create(dispatch={"queue": "work.code"}, meanwhile=lambda: ran.append("x")),
    )
    assert created and ran == ["x"] and state.get_task(task.id).status == Status.QUEUED

    def broken() -> None:
        raise RuntimeError("broker down")

    doomed = _task(capability="code")
    with pytest.raises(RuntimeError, match="broker down"):
        state.create_task(doomed, Create(dispatch={"queue": "work.code"}, meanwhile=broken))
    assert state.get_task(doomed.id).status == Status.QUEUED  # stored all the same


def test_many_creates_at_once_are_each_their_own_create_in_order(
    contract_backends: Backends,
) -> None:
    """``create_tasks`` (a bulk submit's): routed or not, keys old and new (one twice in
    the batch), every meanwhile in order, the first meanwhile error after every outcome."""
    state = contract_backends.state
    old, _ = state.create_task(_task(idempotency_key="old"))
    ran: list[str] = []

    def note(name: str, fail: bool = False) -> object:
        def run() -> None:
            ran.append(name)
            if fail:
                raise RuntimeError(f"{name} failed")

        return run

    items = [
        (_task(title="a", capability="code"), Create(dispatch={"queue": "work.code"})),
        (_task(title="b"), Create(meanwhile=note("b", fail=True))),  # type: ignore[arg-type]
        (_task(title="c", idempotency_key="old"), Create()),
        (_task(title="d", idempotency_key="new"), Create(meanwhile=note("d"))),  # type: ignore[arg-type]
        (_task(title="e", idempotency_key="new"), Create(meanwhile=note("e", fail=True))),  # type: ignore[arg-type]
    ]
    with pytest.raises(RuntimeError, match="b failed"):
        state.create_tasks(items)
    assert ran == ["b", "d", "e"]
    assert state.get_task(items[0][0].id).status == Status.QUEUED
    assert [e.type for e in state.events(root_id=items[0][0].id)] == ["created", "queued"]
    assert state.get_task(items[1][0].id).status == Status.PENDING
    assert {t.id for t in state.list_tasks(limit=50)} == {
        old.id,
        items[0][0].id,
        items[1][0].id,
        items[3][0].id,
    }
    results = state.create_tasks(
        [(_task(title="f"), Create()), (_task(idempotency_key="new"), Create())]
    )
    assert results[0][1] is True and results[0][0].title == "f"
    assert results[1] == (state.get_task(items[3][0].id), False)
    assert state.create_tasks([]) == []


def test_unknown_task_id_raises_not_found(contract_backends: Backends) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        contract_backends.state.get_task("00000000-0000-7000-8000-000000000000")


def test_many_tasks_are_read_at_once_by_id_and_unknown_ids_left_out(
    contract_backends: Backends,
) -> None:
    state = contract_backends.state
    a, _ = state.create_task(_task(title="a"))
    b, _ = state.create_task(_task(title="b"))
    found = state.get_tasks([a.id, "0" * 36, b.id, a.id])
    assert found == {a.id: state.get_task(a.id), b.id: state.get_task(b.id)}
    assert state.get_tasks([]) == {}


def test_task_is_found_by_a_unique_id_prefix(contract_backends: Backends) -> None:
    task, _ = contract_backends.state.create_task(_task())
    assert contract_backends.state.get_task(task.id[:30]).id == task.id


def test_a_task_is_found_by_its_short_id_or_a_prefix_of_it(contract_backends: Backends) -> None:
    state = contract_backends.state
    first, _ = state.create_task(_task(title="first"))
    second, _ = state.create_task(_task(title="second"))
    for task in (first, second):
        assert state.get_task(task.id[-8:]).id == task.id  # the short id tables show
        assert state.get_task(task.id[-12:]).id == task.id  # the id's last group
        assert state.get_task(task.id[-8:-2].upper()).id == task.id  # a prefix of it


def test_an_ambiguous_id_names_every_candidate(contract_backends: Backends) -> None:
    state = contract_backends.state
    same_minute = "0192ab34-5678-7abc-8def-"
    a, _ = state.create_task(_task(title="alpha", id=same_minute + "1234aaaa1111"))
    b, _ = state.create_task(_task(title="beta", id=same_minute + "5678bbbb2222"))
    c, _ = state.create_task(_task(title="gamma", id="0192ab99-5678-7abc-8def-9999aaaa1177"))
    with pytest.raises(UsageError) as prefix:
        state.get_task("0192ab34")
    assert f"{a.id} (alpha)" in str(prefix.value) and f"{b.id} (beta)" in str(prefix.value)
    assert c.id not in str(prefix.value)
    with pytest.raises(UsageError) as tail:
        state.get_task("aaaa11")  # two short ids start so
    assert a.id in str(tail.value) and c.id in str(tail.value) and b.id not in str(tail.value)
    assert "give more characters" in str(tail.value)
    assert state.get_task("aaaa1111").id == a.id
    assert state.get_task("1234aaaa1111").id == a.id
    with pytest.raises(NotFoundError):
        state.get_task("cccc1111")


def test_allowed_transition_bumps_version_and_appends_event(contract_backends: Backends) -> None:
    state = contract_backends.state
    task, _ = state.create_task(_task(capability="code"))
    queued = state.transition(task.id, Status.QUEUED, expect_version=task.version)
    assert queued.status == Status.QUEUED and queued.version == task.version + 1
    running = state.transition(queued.id, Status.RUNNING, agent="a1", attempts=1)
    assert running.agent == "a1" and running.attempts == 1 and running.started_at
    events = state.events(root_id=task.id)
    assert [e.type for e in events] == ["created", "queued", "running"]
    assert events[-1].data["from"] == "queued" and events[-1].data["agent"] == "a1"
    assert events[1].seq < events[2].seq


def test_a_transition_built_from_the_known_task_equals_the_stored_one(
    contract_backends: Backends,
) -> None:
    state = contract_backends.state
    task, _ = state.create_task(_task(capability="code"), Create(dispatch={"queue": "work.code"}))
    running, claimed = state.claim(task.id, "a1")
    assert claimed
    # charged after ``running`` was read (usage does not move the version)
    state.add_usage(task.id, Usage(calls=1, input_tokens=3, cost_usd=0.1))
    done = state.transition(
        task.id,
        Status.SUCCEEDED,
        expect_version=running.version,
        known=running,
        add_usage=Usage(calls=1, output_tokens=5, cost_usd=0.2),  # 0.1 + 0.2: as stored
        result="ok",
        event_data={"model": "m"},
    )
    assert done == state.get_task(task.id)
    assert done.status == Status.SUCCEEDED and done.result == "ok" and done.usage.calls == 2
    assert done.version == running.version + 1 and done.finished_at
    stale = running.model_copy(update={"version": running.version - 1})
    with pytest.raises(TransitionRejected):  # a stale ``known`` is read back, and refused
        state.transition(task.id, Status.FAILED, expect_version=stale.version, known=stale)
    assert [e.type for e in state.events(root_id=task.id)][-1] == "succeeded"


def test_transition_outside_the_table_is_rejected_without_an_event(
    contract_backends: Backends,
) -> None:
    state = contract_backends.state
    task, _ = state.create_task(_task())
    with pytest.raises(TransitionRejected, match="cannot go from pending to succeeded"):
        state.transition(task.id, Status.SUCCEEDED)
    assert state.get_task(task.id).status == Status.PENDING
    assert len(state.events(root_id=task.id)) == 1


def test_stale_version_is_rejected_and_reports_the_current_task(
    contract_backends: Backends,
) -> None:
    state = contract_backends.state
    task, _ = state.create_task(_task())
    state.transition(task.id, Status.QUEUED)
    with pytest.raises(TransitionRejected) as info:
        state.transition(task.id, Status.CANCELLED, expect_version=task.version)
    assert isinstance(info.value.current, Task)
    assert info.value.current.status == Status.QUEUED


def test_concurrent_claims_let_exactly_one_win(contract_backends: Backends) -> None:
    state = contract_backends.state
    task, _ = state.create_task(_task())
    queued = state.transition(task.id, Status.QUEUED)
    wins: list[str] = []
    barrier = threading.Barrier(8)

    def claim(i: int) -> None:
        barrier.wait()
        try:
            state.transition(
                queued.id, Status.RUNNING, expect_version=queued.version, agent=f"a{i}"
            )
            wins.append(f"a{i}")
        except TransitionRejected:
            pass

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert state.get_task(task.id).agent == wins[0]
    assert state.count_events(task.id, "running") == 1


def test_subtasks_are_created_with_the_parent_moving_to_waiting(
    contract_backends: Backends,
) -> None:
    state = contract_backends.state
    parent, _ = state.create_task(_task(title="parent"))
    a = _task(title="a", parent_id=parent.id, root_id=parent.id)
    b = _task(title="b", parent_id=parent.id, root_id=parent.id, depends_on=[a.id])
    waiting = state.create_subtasks(parent.id, [a, b], "two steps")
    assert waiting.status == Status.WAITING
    assert [c.title for c in state.children(parent.id)] == ["a", "b"]
    assert [t.title for t in state.tree(parent.id)] == ["parent", "a", "b"]
    assert state.get_task(b.id).depends_on == [a.id]
    with pytest.raises(TransitionRejected):
        state.create_subtasks(parent.id, [_task(parent_id=parent.id, root_id=parent.id)], "x")


def test_list_filters_by_status_agent_roots_and_limit(contract_backends: Backends) -> None:
    state = contract_backends.state
    ids = [state.create_task(_task(title=f"t{i}"))[0].id for i in range(5)]
    state.transition(ids[0], Status.QUEUED)
    state.transition(ids[0], Status.RUNNING, agent="agent-x")
    assert [t.id for t in state.list_tasks(limit=2)] == [ids[4], ids[3]]
    assert [t.id for t in state.list_tasks(status=["running"])] == [ids[0]]
    assert [t.id for t in state.list_tasks(agent="agent-x")] == [ids[0]]
    assert len(state.list_tasks(roots_only=True, limit=50)) == 5
    assert state.list_tasks(since=state.get_task(ids[4]).created_at + 10) == []


def test_list_filters_by_capability_and_every_label(contract_backends: Backends) -> None:
    state = contract_backends.state
    a, _ = state.create_task(_task(capability="code", labels={"team": "core", "env": "ci"}))
    state.create_task(_task(capability="review", labels={"team": "core"}))
    c, _ = state.create_task(_task(capability="code", labels={"team": "web", "a.b": "x"}))
    assert [t.id for t in state.list_tasks(capability="code")] == [c.id, a.id]
    assert [t.id for t in state.list_tasks(capability="code", labels={"team": "core"})] == [a.id]
    assert [t.id for t in state.list_tasks(labels={"a.b": "x"})] == [c.id]  # a key with a dot
    assert state.list_tasks(labels={"team": "core", "env": "prod"}) == []


def test_usage_accumulates_on_the_task(contract_backends: Backends) -> None:
    state = contract_backends.state
    task, _ = state.create_task(_task())
    state.add_usage(task.id, Usage(calls=1, input_tokens=10, output_tokens=5, cost_usd=0.01))
    state.add_usage(task.id, Usage(calls=1, input_tokens=1, output_tokens=1, cost_usd=0.02))
    usage = state.get_task(task.id).usage
    assert (usage.calls, usage.input_tokens, usage.output_tokens) == (2, 11, 6)
    assert usage.cost_usd == pytest.approx(0.03)
    # a transition can add usage in the same atomic step (the agent's last call)
    queued = state.transition(task.id, Status.QUEUED, add_usage=Usage(calls=1, cost_usd=0.5))
    assert queued.usage.calls == 3 and queued.usage.cost_usd == pytest.approx(0.53)
    assert queued.usage.input_tokens == 11 and state.get_task(task.id) == queued
    with pytest.raises(TransitionRejected):  # refused: nothing is added
        state.transition(task.id, Status.SUCCEEDED, add_usage=Usage(calls=1))
    assert state.get_task(task.id).usage.calls == 3


def test_rollback_to_a_snapshot_restores_exactly_that_state(contract_backends: Backends) -> None:
    from orchestra_cli import snapshots

    state = contract_backends.state
    kept, _ = state.create_task(_task(title="kept"))
    state.transition(kept.id, Status.QUEUED)
    snap = snapshots.create(contract_backends, "contract")
    later, _ = state.create_task(_task(title="later"))
    state.transition(kept.id, Status.CANCELLED)
    result = snapshots.rollback(contract_backends, snap)
    assert {t.title for t in state.list_tasks()} == {"kept"}
    assert state.get_task(kept.id).status == Status.QUEUED
    assert [e.type for e in state.events(root_id=kept.id)] == ["created", "queued"]
    with pytest.raises(NotFoundError):
        state.get_task(later.id)
    if snap.mode == "services":  # RabbitMQ kept its own messages: open work is re-published
        assert result["republished"] == 1
    assert result["safety_snapshot"].endswith(("-pre-rollback.db", "-pre-rollback.redis.jsonl"))


def test_a_wait_for_the_end_wakes_at_the_end_and_not_before(
    contract_backends: Backends,
) -> None:
    state = contract_backends.state
    task, _ = state.create_task(_task(capability="code"), Create(watch=True))
    steps = [
        (0.1, lambda: state.transition(task.id, Status.QUEUED)),
        (0.2, lambda: state.claim(task.id, "a1")),
        (0.5, lambda: state.transition(task.id, Status.SUCCEEDED, result="done")),
    ]
    timers = [threading.Timer(delay, step) for delay, step in steps]
    for timer in timers:
        timer.start()
    started = time.monotonic()
    ended = state.wait_ended(task.id, 3.0, counted=True)
    elapsed = time.monotonic() - started
    assert ended is not None and ended.status == Status.SUCCEEDED and ended.result == "done"
    assert 0.45 <= elapsed < 2.0  # woken by the end (not the queued and running transitions)
    assert ended == state.get_task(task.id)
    for timer in timers:
        timer.join()
    # an ended task answers at once; so does a second waiter, with its own wake-up
    started = time.monotonic()
    again = state.wait_ended(task.id, 3.0)
    assert again is not None and again.status == Status.SUCCEEDED
    assert time.monotonic() - started < 0.5
    with pytest.raises(NotFoundError):
        state.wait_ended("0" * 36, 0.1)


def test_every_waiter_wakes_and_a_wait_times_out_with_none(contract_backends: Backends) -> None:
    state = contract_backends.state
    task, _ = state.create_task(_task(capability="code"))
    started = time.monotonic()
    assert state.wait_ended(task.id, 0.3) is None
    assert 0.25 <= time.monotonic() - started < 2
    woken: list[Status] = []

    def waiter() -> None:
        ended = state.wait_ended(task.id, 5.0)
        woken.append(ended.status if ended is not None else Status.PENDING)

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    state.transition(task.id, Status.CANCELLED, error="stopped")
    cancelled_at = time.monotonic()
    for t in threads:
        t.join(timeout=10)
    assert woken == [Status.CANCELLED] * 3
    assert time.monotonic() - cancelled_at < 1.5  # each woken by the end, not a time-out


def test_a_sub_millisecond_wait_returns_at_once(contract_backends: Backends) -> None:
    state = contract_backends.state
    task, _ = state.create_task(_task(capability="code"))
    started = time.monotonic()
    assert state.wait_ended(task.id, 0.0004) is None  # not a BLPOP with timeout 0 (forever)
    assert time.monotonic() - started < 0.5


def test_a_task_reopened_after_its_end_is_waited_for_again(contract_backends: Backends) -> None:
    state = contract_backends.state
    task, _ = state.create_task(_task(capability="code"), Create(watch=True))
    state.transition(task.id, Status.FAILED, error="boom")
    ended = state.wait_ended(task.id, 1.0, counted=True)
    assert ended is not None and ended.status == Status.FAILED
    state.create_task(_task(capability="code"))  # unrelated traffic
    state.transition(task.id, Status.PENDING)  # an operator's retry
    # what its first end left for waiters is gone: this one waits for the next end
    assert state.wait_ended(task.id, 0.3) is None
    state.transition(task.id, Status.QUEUED)
    timer = threading.Timer(0.2, lambda: state.transition(task.id, Status.CANCELLED))
    timer.start()
    ended = state.wait_ended(task.id, 3.0)
    assert ended is not None and ended.status == Status.CANCELLED
    timer.join()


def test_statuses_of_many_tasks_in_one_read(contract_backends: Backends) -> None:
    state = contract_backends.state
    queued, _ = state.create_task(_task(capability="code"), Create(dispatch={"queue": "q"}))
    pending, _ = state.create_task(_task())
    _, claimed = state.claim(queued.id, "agent-1")
    assert claimed
    assert state.get_statuses([queued.id, pending.id, "no-such-task", queued.id]) == {
        queued.id: Status.RUNNING,
        pending.id: Status.PENDING,
    }
    assert state.get_statuses([]) == {}
    state.transition(pending.id, Status.CANCELLED)
    assert state.get_statuses([pending.id]) == {pending.id: Status.CANCELLED}
