"""The step log contract: a task's durable steps, on every state backend."""

from __future__ import annotations

from typing import Any

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


def test_steps_after_a_number_are_the_newer_ones_with_the_count(
    contract_backends: Backends,
) -> None:
    state = contract_backends.state
    task, _ = state.create_task(Task(title="t", input="i"))
    assert state.steps_after(task.id, -1) == (0, [])
    for n in range(12):  # 10 and 11 sort before 2 as text: the order is by number
        state.record_step(task.id, task.root_id, n, {"kind": "model", "i": n, "x": [{}]}, {})
    count, steps = state.steps_after(task.id, -1)
    assert count == 12 and [s["n"] for s in steps] == list(range(12))
    assert steps == state.steps(task.id)
    count, newer = state.steps_after(task.id, 9)
    assert count == 12 and [(s["n"], s["i"], s["x"]) for s in newer] == [
        (10, 10, [{}]),
        (11, 11, [{}]),
    ]
    assert newer[0]["time"] > 0
    assert state.steps_after(task.id, 11) == (12, [])
    assert state.steps_after("no-such-task", -1) == (0, [])


def _count_reads(state: Any) -> list[int]:
    """How many steps each of ``state.steps_after``'s reads from now on returns."""
    reads: list[int] = []
    real = state.steps_after

    def counted(task_id: str, after: int) -> tuple[int, list[dict[str, object]]]:
        count, new = real(task_id, after)
        reads.append(len(new))
        return count, new

    state.steps_after = counted
    return reads


def test_a_pause_watch_reads_each_step_once_and_sees_marks_written_by_others(
    contract_backends: Backends,
) -> None:
    from orchestra_cli.engine.approvals import PauseWatch
    from orchestra_cli.engine.steps import append_step

    state = contract_backends.state
    root, _ = state.create_task(Task(title="t", input="i"))
    watch = PauseWatch(state, root.id)
    assert not watch()
    state.record_step(root.id, root.id, 0, {"kind": "prompt"}, {})
    assert not watch()
    append_step(state, root.id, root.id, {"kind": "pause"}, {"kind": "pause"})  # a person
    assert watch()
    assert watch()  # nothing new: still paused
    reads = _count_reads(state)
    append_step(state, root.id, root.id, {"kind": "resume"}, {"kind": "resume"})
    state.record_step(root.id, root.id, 3, {"kind": "model"}, {})
    assert not watch() and reads == [2]  # only the two new steps were read
    assert not watch() and reads == [2, 0]


def test_a_step_write_says_whether_anyone_else_wrote_on_the_root(
    contract_backends: Backends,
) -> None:
    from orchestra_cli.engine.steps import append_step

    state = contract_backends.state
    root, _ = state.create_task(Task(title="t", input="i"))
    child, _ = state.create_task(Task(title="c", input="i", root_id=root.id, parent_id=root.id))
    # the root's own loop: its own steps count, nobody else's are there
    assert state.record_step(root.id, root.id, 0, {"kind": "prompt"}, {}, root_seen=0) == 1
    assert state.record_step(root.id, root.id, 1, {"kind": "model"}, {}, root_seen=1) == 1
    append_step(state, root.id, root.id, {"kind": "pause"}, {"kind": "pause"})  # a person
    assert state.record_step(root.id, root.id, 3, {"kind": "model"}, {}, root_seen=2) == 2
    assert state.record_step(root.id, root.id, 4, {"kind": "model"}, {}, root_seen=4) == 1
    # a subtask's loop: the root's steps are others' (4 of its own, 1 mark)
    assert state.record_step(child.id, root.id, 0, {"kind": "prompt"}, {}, root_seen=5) == 1
    assert state.record_step(child.id, root.id, 1, {"kind": "model"}, {}, root_seen=4) == 2
    # taken: 0 whatever the root holds; no root_seen: 1
    assert state.record_step(child.id, root.id, 1, {"kind": "other"}, {}, root_seen=5) == 0
    assert state.record_step(child.id, root.id, 2, {"kind": "model"}, {}) == 1


def test_a_pause_watch_trusts_a_write_that_saw_nothing_new_and_reads_after_one_that_did(
    contract_backends: Backends,
) -> None:
    from orchestra_cli.engine.approvals import PauseWatch
    from orchestra_cli.engine.steps import append_step

    state = contract_backends.state
    root, _ = state.create_task(Task(title="t", input="i"))
    watch = PauseWatch(state, root.id)
    reads = _count_reads(state)
    for n in range(3):  # the loop's own steps, each write answering for the root
        watch.wrote(state.record_step(root.id, root.id, n, {}, {}, root_seen=watch.seen), n)
        assert not watch()
    assert reads == []  # no read at all
    append_step(state, root.id, root.id, {"kind": "pause"}, {"kind": "pause"})
    watch.wrote(state.record_step(root.id, root.id, 4, {}, {}, root_seen=watch.seen), 4)
    assert watch() and reads == [2]  # the write saw the mark: one read, of the new steps
    assert watch() and reads == [2, 0]  # no write since: it reads again


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


def test_a_pause_watch_reads_everything_again_when_the_root_has_fewer_steps() -> None:
    """A rollback can restore a state with fewer steps: what was seen no longer holds."""

    from orchestra_cli.engine.approvals import PauseWatch

    class Steps:
        def __init__(self) -> None:
            self.steps: list[dict[str, Any]] = []

        def steps_after(self, task_id: str, after: int) -> tuple[int, list[dict[str, Any]]]:
            return len(self.steps), [s for s in self.steps if s["n"] > after]

    log = Steps()
    watch = PauseWatch(log, "root")  # type: ignore[arg-type]
    log.steps = [{"n": 0, "kind": "prompt"}, {"n": 1, "kind": "x"}, {"n": 2, "kind": "y"}]
    assert not watch()
    log.steps = [{"n": 0, "kind": "pause"}]  # restored: a pause at a number already seen
    assert watch()
    # steps 0-9 seen; restored to 0-4 while the loop went on writing at 10 (a gap); then
    # a mark lands in the gap (an older append_step wrote at the count)
    log.steps = [{"n": i, "kind": "x"} for i in range(10)]
    watch = PauseWatch(log, "root")  # type: ignore[arg-type]
    assert not watch()
    log.steps = [{"n": i, "kind": "x"} for i in range(5)] + [{"n": 10, "kind": "model"}]
    assert not watch()
    log.steps.insert(5, {"n": 6, "kind": "pause"})
    assert watch()


def test_a_mark_goes_above_the_highest_step_not_at_the_count(
    contract_backends: Backends,
) -> None:
    from orchestra_cli.engine.steps import append_step

    state = contract_backends.state
    task, _ = state.create_task(Task(title="t", input="i"))
    for n in (0, 1, 5):  # a gap, as a rollback under a running loop leaves one
        state.record_step(task.id, task.root_id, n, {"kind": "model"}, {})
    append_step(state, task.id, task.root_id, {"kind": "pause"}, {"kind": "pause"})
    assert [(s["n"], s["kind"]) for s in state.steps(task.id)][-1] == (6, "pause")


def test_a_fenced_artifact_save_is_refused_once_another_agent_took_the_task(
    contract_backends: Backends,
) -> None:
    """An agent that lost its task (it stalled, the task was requeued and claimed again)
    must not overwrite the new owner's files: the save checks agent and attempt in the
    same atomic step."""
    import pytest

    from orchestra_cli.errors import TaskCancelled
    from orchestra_cli.state.base import Create
    from orchestra_cli.status import Status

    state = contract_backends.state
    task, _ = state.create_task(
        Task(title="t", input="i", capability="code"), Create(dispatch={"queue": "q"})
    )
    first, claimed = state.claim(task.id, "agent-1")
    assert claimed and first.attempts == 1
    state.save_artifacts(task.id, {"app.py": b"v1"}, ("agent-1", 1))
    requeued = state.transition(task.id, Status.QUEUED, expect_version=first.version)
    second, claimed = state.claim(requeued.id, "agent-2")
    assert claimed and second.attempts == 2
    with pytest.raises(TaskCancelled, match=r"taken over.*agent-2.*attempt 2"):
        state.save_artifacts(task.id, {"app.py": b"stale", "new.py": b"x"}, ("agent-1", 1))
    assert set(state.artifacts(task.id)) == {"app.py"}
    assert state.blob(state.artifacts(task.id)["app.py"][0] or "") == b"v1"
    state.save_artifacts(task.id, {"app.py": b"v2"}, ("agent-2", 2))
    assert state.blob(state.artifacts(task.id)["app.py"][0] or "") == b"v2"
    with pytest.raises(TaskCancelled, match="gone"):
        state.save_artifacts("no-such-task", {"a": b"a"}, ("agent-1", 1))
    state.save_artifacts("no-such-task", {"a": b"a"})  # unfenced (a tree's base files)


def test_a_step_can_carry_its_model_calls_charge(contract_backends: Backends) -> None:
    """The charge is added with the step, once; a step number already taken adds nothing."""
    from orchestra_cli.models import Usage

    state = contract_backends.state
    task, _ = state.create_task(Task(title="t", input="i"))
    turn = Usage(calls=1, input_tokens=100, output_tokens=20, cost_usd=0.5)
    assert state.record_step(task.id, task.root_id, 0, {"kind": "model"}, {}, add_usage=turn)
    assert not state.record_step(task.id, task.root_id, 0, {"kind": "model"}, {}, add_usage=turn)
    assert state.record_step(task.id, task.root_id, 1, {"kind": "model"}, {}, add_usage=turn)
    assert state.record_step(task.id, task.root_id, 2, {"kind": "tool_result"}, {})
    usage = state.get_task(task.id).usage
    assert (usage.calls, usage.input_tokens, usage.output_tokens) == (2, 200, 40)
    assert usage.cost_usd == 1.0


def test_a_charge_for_a_task_that_is_not_there_is_an_error_and_writes_nothing(
    contract_backends: Backends,
) -> None:
    import pytest

    from orchestra_cli.errors import NotFoundError
    from orchestra_cli.models import Usage

    state = contract_backends.state
    with pytest.raises(NotFoundError):
        state.record_step("no-such-task", "no-such-task", 0, {}, {}, add_usage=Usage(calls=1))
    assert state.steps("no-such-task") == []
