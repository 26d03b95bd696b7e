"""The durable agent loop (engine/loop.py) through the real SDK, a real toolbox and sandbox."""

from __future__ import annotations

import time
from typing import Any

import pytest

from orchestra_cli.backends import Backends
from orchestra_cli.engine.budget import Meter
from orchestra_cli.engine.loop import AgentLoop
from orchestra_cli.engine.workspace import Workspace, export, tree_files
from orchestra_cli.errors import LLMError, StateUnavailable
from orchestra_cli.llm.anthropic import AnthropicProvider
from orchestra_cli.llm.base import LLMRequest
from orchestra_cli.models import Task
from orchestra_cli.tools.toolbox import Toolbox
from tests.llm.fake_anthropic import FakeAnthropic, Reply, text, tool_use
from tests.tools.conftest import require_bwrap

APP = "def add(a, b):\n    return a + b\n"
TEST = "from app import add\nassert add(2, 3) == 5\nprint('ok: 5')\n"


def calls(*pairs: tuple[str, dict[str, Any]]) -> Reply:
    """One model turn that calls several tools at once."""
    blocks = [
        {"type": "tool_use", "id": f"toolu_{name}_{i}", "name": name, "input": data}
        for i, (name, data) in enumerate(pairs)
    ]
    return Reply(content=blocks, stop_reason="tool_use")


class Harness:
    def __init__(self, fake: FakeAnthropic, backends: Backends, tools: list[str]) -> None:
        self.fake = fake
        self.backends = backends
        self.toolbox = Toolbox(tools)
        self.llm = AnthropicProvider(fake.api_key, base_url=fake.url, backoff_seconds=0)
        self.task, _ = backends.state.create_task(Task(title="t", input="write and test it"))

    def loop(
        self,
        max_turns: int = 10,
        *,
        defer_last: bool = False,
        after_tools: Any = None,
        state: Any = None,
    ) -> AgentLoop:
        meter = Meter(self.backends.state, self.backends.journals, self.backends.settings.llm)
        workspace = Workspace(self.backends.state, self.backends.settings.home, self.task)
        request = LLMRequest(system="you code", prompt="write app.py", model="claude-sonnet-5-5")
        return AgentLoop(
            state or self.backends.state,
            meter.wrap(self.llm, self.task, agent="test", defer_last=defer_last),
            self.toolbox,
            self.task,
            request,
            workspace=workspace.prepare(),
            max_turns=max_turns,
            max_continuations=1,
            after_tools=after_tools or workspace.save,
        )

    def kinds(self) -> list[str]:
        return [s["kind"] for s in self.backends.state.steps(self.task.id)]


@pytest.fixture
def harness(fake: FakeAnthropic, backends: Backends) -> Any:
    made: list[Harness] = []

    def make(tools: list[str]) -> Harness:
        made.append(Harness(fake, backends, tools))
        return made[-1]

    yield make
    for h in made:
        h.toolbox.close()


def test_a_coder_writes_a_module_and_its_test_and_runs_it_in_the_sandbox(
    fake: FakeAnthropic, harness: Any, backends: Backends
) -> None:
    require_bwrap()
    h = harness(["Write", "Bash"])
    fake.script(
        calls(
            ("Write", {"file_path": "app.py", "content": APP}),
            ("Write", {"file_path": "test_app.py", "content": TEST}),
        ),
        tool_use("Bash", {"command": "python3 test_app.py"}),
        text("done: add() works"),
    )
    answer = h.loop().run()
    assert answer.text == "done: add() works"
    third = fake.requests[2]["body"]["messages"]
    result = third[-1]["content"][0]
    assert result["type"] == "tool_result" and "ok: 5" in result["content"]
    assert "tools" in fake.requests[0]["body"]
    assert [t["name"] for t in fake.requests[0]["body"]["tools"]] == ["Write", "Bash"]
    assert h.kinds() == [
        "prompt",
        "model",
        "tool_start",
        "tool_start",
        "tool_result",
        "tool_result",
        "model",
        "tool_start",
        "tool_result",
        "model",
    ]
    files = tree_files(backends.state, h.task.id)  # saved as the task's artifacts
    assert set(files) == {"app.py", "test_app.py"}
    out = export(backends.state, h.task.id, backends.settings.home / "out")
    assert len(out) == 2
    assert (backends.settings.home / "out" / "app.py").read_text() == APP


def test_a_path_outside_the_workspace_is_an_error_result_the_model_sees(
    fake: FakeAnthropic, harness: Any
) -> None:
    h = harness(["Read", "Write"])
    fake.script(
        tool_use("Read", {"file_path": "/etc/passwd"}),
        tool_use("Write", {"file_path": "../escape.txt", "content": "x"}),
        text("could not"),
    )
    h.loop().run()
    first = fake.requests[1]["body"]["messages"][-1]["content"][0]
    second = fake.requests[2]["body"]["messages"][-1]["content"][0]
    assert first["is_error"] is True and "outside" in first["content"]
    assert second["is_error"] is True
    assert not (h.backends.settings.home / "workspaces" / "escape.txt").exists()


def test_parallel_tool_calls_of_one_turn_run_concurrently(
    fake: FakeAnthropic, harness: Any
) -> None:
    require_bwrap()
    h = harness(["Bash"])
    fake.script(
        calls(*[("Bash", {"command": "sleep 1; echo slept"})] * 3),
        text("all slept"),
    )
    started = time.monotonic()
    h.loop().run()
    took = time.monotonic() - started
    assert took < 2.5, f"three 1 s commands took {took:.1f}s"
    results = fake.requests[1]["body"]["messages"][-1]["content"]
    assert [r["content"].strip() for r in results] == ["slept"] * 3


def test_a_resumed_loop_asks_no_recorded_turn_again_and_runs_no_recorded_call_again(
    fake: FakeAnthropic, harness: Any
) -> None:
    h = harness(["Write", "Bash"])
    fake.script(
        tool_use("Write", {"file_path": "a.txt", "content": "one"}),
        text("first run ends"),
    )
    h.loop().run()
    assert len(fake.requests) == 2
    # the same task's loop again (a redelivery): everything is on record, nothing is asked
    again = h.loop().run()
    assert again.text == "first run ends"
    assert len(fake.requests) == 2


def test_a_call_that_started_but_recorded_nothing_is_unknown_unless_idempotent(
    fake: FakeAnthropic, harness: Any, backends: Backends
) -> None:
    """As an agent killed mid-tool leaves it: a tool_start without its tool_result."""
    h = harness(["Read", "Bash"])
    state, task = backends.state, h.task
    blocks = [
        {"type": "tool_use", "id": "toolu_r", "name": "Read", "input": {"file_path": "x.txt"}},
        {"type": "tool_use", "id": "toolu_b", "name": "Bash", "input": {"command": "rm x"}},
    ]
    prompt = {"kind": "prompt", "system": "s", "prefix": "", "prompt": "p"}
    state.record_step(task.id, task.root_id, 0, prompt, {})
    model = {"kind": "model", "blocks": blocks, "stop_reason": "tool_use", "usage": {}}
    state.record_step(task.id, task.root_id, 1, model, {})
    for n, call in enumerate(blocks, start=2):
        start = {"kind": "tool_start", "call_id": call["id"], "name": call["name"]}
        state.record_step(task.id, task.root_id, n, start, {})
    fake.script(text("carried on"))
    assert h.loop().run().text == "carried on"
    assert len(fake.requests) == 1  # the recorded turn was not asked again
    results = fake.requests[0]["body"]["messages"][-1]["content"]
    read, bash = results
    assert read["tool_use_id"] == "toolu_r" and "unknown" not in read["content"]  # re-run
    assert bash["tool_use_id"] == "toolu_b" and bash["is_error"] is True
    assert "outcome of this call is unknown" in bash["content"]


def test_max_turns_ends_the_loop_with_a_reason(fake: FakeAnthropic, harness: Any) -> None:
    h = harness(["Read"])
    fake.script(*[tool_use("Read", {"file_path": "nothing.txt"})] * 5)
    with pytest.raises(LLMError, match=r"max_turns \(2\)") as caught:
        h.loop(max_turns=2).run()
    assert caught.value.retryable is False
    assert len(fake.requests) == 2


def test_a_workspace_starts_from_its_dependencies_files_and_reports_a_conflict(
    backends: Backends,
) -> None:
    state = backends.state
    a, _ = state.create_task(Task(title="a", input="a"))
    b, _ = state.create_task(Task(title="b", input="b"))
    state.save_artifacts(a.id, {"shared.txt": b"from a", "a.txt": b"a"})
    state.save_artifacts(b.id, {"shared.txt": b"from b"})
    c, _ = state.create_task(Task(title="c", input="c", depends_on=[a.id, b.id]))
    ws = Workspace(state, backends.settings.home, c)
    path = ws.prepare()
    assert (path / "shared.txt").read_bytes() == b"from b"  # the plan's order wins
    assert (path / "a.txt").read_bytes() == b"a"
    conflicts = [e for e in state.events(root_id=c.root_id) if e.type == "artifact_conflict"]
    assert conflicts and conflicts[0].data["path"] == "shared.txt"
    from orchestra_cli.engine.roles import load_roles
    from orchestra_cli.engine.service import TaskService

    shown = TaskService(backends, load_roles()).conflicts(c)  # what `task get` prints
    assert shown == [f"shared.txt: {a.id} and {b.id} (kept {b.id})"]
    (path / "a.txt").unlink()
    (path / "new.txt").write_text("n")
    assert ws.save() == 2
    assert state.artifacts(c.id) == {
        "a.txt": (None, 0),
        "new.txt": (state.artifacts(c.id)["new.txt"][0], 1),
    }


def test_each_model_turn_is_charged_with_its_step(
    fake: FakeAnthropic, harness: Any, backends: Backends
) -> None:
    """An agent's deferred charges (defer_last) ride on the turns' own steps: every turn
    on record is charged, once, with one metrics line each."""
    h = harness(["Glob"])
    fake.script(tool_use("Glob", {"pattern": "*"}), tool_use("Glob", {"pattern": "*"}), text("ok"))
    loop = h.loop(defer_last=True)
    assert loop.run().text == "ok"
    usage = backends.state.get_task(h.task.id).usage
    assert usage.calls == 3 == len(fake.billed)
    assert usage.input_tokens == sum(b["input_tokens"] for b in fake.billed)
    assert loop.llm.uncharged is None  # type: ignore[attr-defined]  # nothing left for succeed
    lines = backends.journals.metrics.path.read_text().splitlines()
    assert sum('"llm_call"' in line for line in lines) == 3


class _Died(BaseException):
    """The agent's process ending mid-loop (kill -9 leaves no frame to unwind)."""


def test_a_turn_on_record_is_charged_even_if_the_agent_dies_before_its_next_call(
    fake: FakeAnthropic, harness: Any, backends: Backends
) -> None:
    """The turn is recorded, its tool runs, then the agent dies: a resumed loop replays
    that turn and never asks it again, so its charge must already be on the task."""
    h = harness(["Glob"])
    fake.script(tool_use("Glob", {"pattern": "*"}), text("ok"))

    def die() -> None:
        raise _Died

    with pytest.raises(_Died):
        h.loop(defer_last=True, after_tools=die).run()
    assert h.kinds() == ["prompt", "model", "tool_start"]
    assert backends.state.get_task(h.task.id).usage.calls == 1 == len(fake.billed)


class _LostReply:
    """The state store, but the first charged step's write lands and its reply is lost."""

    def __init__(self, real: Any) -> None:
        self.real, self.lost = real, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def record_step(self, *args: Any, **kw: Any) -> bool:
        ok = bool(self.real.record_step(*args, **kw))
        if kw.get("add_usage") is not None and not self.lost:
            self.lost = True
            raise StateUnavailable("cannot reach Redis (timed out)", "see the log")
        return ok


def test_a_charged_step_whose_outcome_is_unknown_is_not_charged_again(
    fake: FakeAnthropic, harness: Any, backends: Backends
) -> None:
    """The write landed but the store did not answer: the task's end must not add the
    charge a second time (it takes the charge as given)."""
    h = harness(["Glob"])
    fake.script(tool_use("Glob", {"pattern": "*"}), text("ok"))
    loop = h.loop(defer_last=True, state=_LostReply(backends.state))
    with pytest.raises(StateUnavailable):
        loop.run()
    assert loop.llm.uncharged is None  # type: ignore[attr-defined]  # nothing for the end
    assert backends.state.get_task(h.task.id).usage.calls == 1 == len(fake.billed)
