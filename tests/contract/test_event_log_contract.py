"""The EventLog contract (state/base.py): every backend passes the same tests."""

from __future__ import annotations

import threading
import time

import pytest

from orchestra_cli.backends import Backends
from orchestra_cli.errors import NotFoundError
from orchestra_cli.models import Task
from orchestra_cli.status import Status


def _task(**kw: object) -> Task:
    return Task(title=str(kw.pop("title", "t")), input="do it", **kw)  # type: ignore[arg-type]


def test_events_are_read_after_a_sequence_number(contract_backends: Backends) -> None:
    state = contract_backends.state
    task, _ = state.create_task(_task())
    first = state.events(root_id=task.id)
    state.append_event(task.id, task.root_id, "no_agent", {"capability": "code"})
    later = state.events(root_id=task.id, after=first[-1].seq)
    assert [(e.type, e.data) for e in later] == [("no_agent", {"capability": "code"})]
    assert any(e.task_id == task.id for e in state.events(after=0, limit=100000))


def test_an_event_read_can_wait_for_the_next_event(contract_backends: Backends) -> None:
    state = contract_backends.state
    task, _ = state.create_task(_task(capability="code"))
    seq = state.events(root_id=task.id)[-1].seq
    started = time.monotonic()
    assert state.events(root_id=task.id, after=seq, wait=0.3) == []  # nothing: waited
    assert 0.25 <= time.monotonic() - started < 2
    timer = threading.Timer(0.2, lambda: state.transition(task.id, Status.QUEUED))
    timer.start()
    started = time.monotonic()
    got = state.events(root_id=task.id, after=seq, wait=2.0)
    assert [e.type for e in got] == ["queued"] and time.monotonic() - started < 1.5
    assert state.events(after=seq - 1, wait=5.0)[0].seq == seq  # there already: no wait
    timer.join()


def test_events_are_counted_per_task_and_type(contract_backends: Backends) -> None:
    state = contract_backends.state
    task, _ = state.create_task(_task())
    other, _ = state.create_task(_task(parent_id=task.id, root_id=task.id))
    for _ in range(3):
        state.append_event(task.id, task.root_id, "no_agent", {})
    state.append_event(other.id, task.root_id, "no_agent", {})
    assert state.count_events(task.id, "no_agent") == 3
    assert state.count_events(other.id, "no_agent") == 1
    assert state.count_events(task.id, "created") == 1
    assert state.count_events(task.id, "nothing") == 0
    with pytest.raises(NotFoundError):
        state.count_events("0" * 36, "created")


def test_a_tree_log_holds_only_its_tree_and_the_global_log_everything(
    contract_backends: Backends,
) -> None:
    state = contract_backends.state
    one, _ = state.create_task(_task(title="one"))
    two, _ = state.create_task(_task(title="two"))
    state.append_event(one.id, one.root_id, "planned", {"n": 1})
    assert {e.task_id for e in state.events(root_id=one.id)} == {one.id}
    everything = state.events(after=0, limit=100000)
    assert {one.id, two.id} <= {e.task_id for e in everything}
    seqs = [e.seq for e in everything]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert [e.seq for e in state.events(after=0, limit=2)] == seqs[:2]
