"""The step log contract: a task's durable steps, on every state backend."""

from __future__ import annotations

from orchestra_cli.backends import Backends
from orchestra_cli.models import Task


def test_steps_read_back_in_order_with_a_step_event_each(contract_backends: Backends) -> None:
    state = contract_backends.state
    task, _ = state.create_task(Task(title="t", input="i"))
    assert state.steps(task.id) == []
    blocks = [{"type": "text", "text": "héllo"}, {"type": "tool_use", "input": {"a": [1, {}]}}]
    assert state.record_step(task.id, task.root_id, 0, {"kind": "prompt"}, {"kind": "prompt"})
    assert state.record_step(task.id, task.root_id, 1, {"kind": "model", "blocks": blocks}, {})
    steps = state.steps(task.id)
    assert [s["n"] for s in steps] == [0, 1]
    assert steps[1]["blocks"] == blocks  # JSON kept as written ([] and {} stay apart)
    assert all(s["time"] > 0 for s in steps)
    events = [e for e in state.events(root_id=task.id) if e.type == "step"]
    assert [e.data["n"] for e in events] == [0, 1]
    assert events[0].data["kind"] == "prompt"


def test_a_step_number_is_written_once(contract_backends: Backends) -> None:
    """An agent that lost its task (another took it over) cannot overwrite a step."""
    state = contract_backends.state
    task, _ = state.create_task(Task(title="t", input="i"))
    assert state.record_step(task.id, task.root_id, 0, {"kind": "model", "by": "a"}, {})
    assert not state.record_step(task.id, task.root_id, 0, {"kind": "model", "by": "b"}, {})
    assert state.steps(task.id)[0]["by"] == "a"
    assert len([e for e in state.events(root_id=task.id) if e.type == "step"]) == 1


def test_artifacts_are_content_addressed_and_a_deletion_is_recorded(
    contract_backends: Backends,
) -> None:
    state = contract_backends.state
    binary = bytes(range(256)) * 4
    state.save_artifacts("t-1", {"src/app.py": b"print('hi')\n", "data.bin": binary})
    state.save_artifacts("t-2", {"copy.bin": binary})  # the same content: one blob
    state.save_artifacts("t-1", {"src/app.py": None})
    files = state.artifacts("t-1")
    assert files["src/app.py"] == (None, 0)
    sha, size = files["data.bin"]
    assert size == 1024 and sha is not None
    assert state.blob(sha) == binary
    assert state.artifacts("t-2")["copy.bin"][0] == sha
    assert state.artifacts("nothing") == {}
