"""Review: a Redis script retried after its reply was lost (resp timeout) must not turn
a step this agent wrote into 'written by another agent'."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestra_cli.backends import Backends
from orchestra_cli.models import Task
from orchestra_cli.state import resp
from tests.contract.conftest import services


@pytest.fixture
def redis_backends(home: Path) -> Iterator[Backends]:
    yield from services(home)


def _lose_first_reply(store: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The first script runs on the server and its reply is lost (a resp timeout)."""
    original = store._evalsha
    lost = {"n": 0}

    def evalsha(*args: Any, **kw: Any) -> Any:
        reply = original(*args, **kw)  # the script ran on the server…
        if lost["n"] == 0:
            lost["n"] += 1
            raise resp.RespConnectionError("timed out reading the reply")  # …its reply lost
        return reply

    monkeypatch.setattr(store, "_evalsha", evalsha)
    return lost


def test_a_step_whose_reply_was_lost_is_not_reported_as_taken(
    redis_backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    store: Any = redis_backends.state
    task, _ = store.create_task(Task(title="t", input="t"))
    _lose_first_reply(store, monkeypatch)
    ok = store.record_step(task.id, task.root_id, 0, {"kind": "prompt"}, {"kind": "prompt"})
    assert ok, "the agent's own step, retried, reads as another agent's: the loop stops"


def test_a_step_retried_after_its_lost_reply_charges_its_call_once(
    redis_backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestra_cli.models import Usage

    store: Any = redis_backends.state
    task, _ = store.create_task(Task(title="t", input="t"))
    lost = _lose_first_reply(store, monkeypatch)
    turn = Usage(calls=1, input_tokens=10, output_tokens=5)
    assert store.record_step(task.id, task.root_id, 0, {"kind": "model"}, {}, add_usage=turn)
    assert lost["n"] == 1  # the script ran twice
    assert store.get_task(task.id).usage.calls == 1
