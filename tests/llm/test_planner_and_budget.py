"""The LLM planner, re-asks, budgets and an end-to-end run against the fake API."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from orchestra_cli.backends import Backends
from orchestra_cli.engine.budget import Meter
from orchestra_cli.engine.llm_planner import LLMPlanner
from orchestra_cli.engine.planner import RuleBasedPlanner
from orchestra_cli.engine.roles import load_roles
from orchestra_cli.engine.runtime import Runtime
from orchestra_cli.engine.service import SubmitRequest, TaskService
from orchestra_cli.llm.anthropic import AnthropicProvider
from orchestra_cli.llm.prompts import PromptLibrary
from orchestra_cli.models import Task
from orchestra_cli.state.base import Create
from orchestra_cli.status import TERMINAL, Status
from tests.llm.fake_anthropic import FakeAnthropic, Reply, default_reply, text
from tests.support import Proc, clean_env, processes, run_orchestra, wait_until

CAPS = {"architecture", "code", "review"}
VALID_PLAN = {
    "decompose": True,
    "reason": "two kinds of work",
    "subtasks": [
        {"title": "Design", "capability": "architecture", "input": "design the API"},
        {"title": "Build", "capability": "code", "input": "build it", "depends_on": ["Design"]},
    ],
}


def planner(fake: FakeAnthropic, backends: Backends) -> LLMPlanner:
    llm = AnthropicProvider(fake.api_key, base_url=fake.url, backoff_seconds=0.01)
    meter = Meter(backends.state, backends.journals, backends.settings.llm)
    return LLMPlanner(
        llm, PromptLibrary(), RuleBasedPlanner(), meter, model="claude-sonnet-5-5", max_reasks=2
    )


def root(backends: Backends, text_: str = "design and build an API") -> Task:
    task, _ = backends.state.create_task(Task(title=text_, input=text_))
    return task


def test_planner_asks_for_json_output_with_the_live_capabilities_as_an_enum(
    fake: FakeAnthropic, backends: Backends
) -> None:
    fake.script(text(json.dumps(VALID_PLAN)))
    task = root(backends)
    plan = planner(fake, backends).plan(task, CAPS)
    assert plan.planner == "llm"
    assert [(s.title, s.capability, s.depends_on) for s in plan.subtasks] == [
        ("Design", "architecture", []),
        ("Build", "code", [0]),
    ]
    body = fake.requests[0]["body"]
    assert "tool_choice" not in body and "tools" not in body  # never forced tool use
    schema = body["output_config"]["format"]["schema"]
    assert body["output_config"]["format"]["type"] == "json_schema"
    step = schema["$defs"]["PlanStep"]["properties"]["capability"]
    assert step["enum"] == sorted(CAPS)  # constrained decoding: only routable plans
    assert schema["additionalProperties"] is False
    assert backends.state.get_task(task.id).usage.calls == 1  # the plan call is charged


def test_malformed_plan_is_reasked_with_the_validation_error_then_accepted(
    fake: FakeAnthropic, backends: Backends
) -> None:
    bad = {**VALID_PLAN, "subtasks": [{**VALID_PLAN["subtasks"][0], "capability": "magic"}]}
    fake.script(text(json.dumps(bad)), text(json.dumps(VALID_PLAN)))
    plan = planner(fake, backends).plan(root(backends), CAPS)
    assert plan.planner == "llm" and len(plan.subtasks) == 2
    assert "attempt 2" in plan.reason
    reask = fake.requests[1]["body"]["messages"]
    assert [m["role"] for m in reask] == ["user", "assistant", "user"]
    assert reask[1]["content"] == [{"type": "text", "text": json.dumps(bad)}]
    assert "unknown capability 'magic'" in reask[2]["content"][0]["text"]


def test_plan_still_invalid_after_the_reasks_falls_back_to_rules_and_says_why(
    fake: FakeAnthropic, backends: Backends
) -> None:
    fake.script(*[text("I would rather chat")] * 3)
    plan = planner(fake, backends).plan(root(backends), CAPS)
    assert plan.planner == "rules"
    assert plan.reason.startswith("LLM plan unusable (the model's structured output was invalid")
    assert "not valid JSON" in plan.reason
    assert len(fake.requests) == 3  # bounded: 1 + max_reasks


def _run_tree(backends: Backends, labels: dict[str, str], text_: str) -> Task:
    runtime = Runtime(backends, load_roles())
    runtime.add_orchestrator()
    for role in ("architect", "coder", "infra", "reviewer"):
        runtime.add_agent(role)
    stop = threading.Event()
    threads = runtime.start(stop)
    try:
        service = TaskService(backends, runtime.roles)
        task, _ = service.submit(SubmitRequest(text=text_, labels=labels))
        wait_until(
            lambda: backends.state.get_task(task.id).status in TERMINAL,
            timeout=60,
            what="the tree to finish",
        )
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    return backends.state.get_task(task.id)


def long_answers(size: int) -> Any:
    """Plans as usual; every other answer ``size`` bytes long."""

    def reply(body: dict[str, Any]) -> Reply:
        return default_reply(body) if "output_config" in body else text("x" * size)

    return reply


def _billed_tokens(fake: FakeAnthropic) -> int:
    return sum(
        u["input_tokens"]
        + u["output_tokens"]
        + u["cache_read_input_tokens"]
        + u["cache_creation_input_tokens"]
        for u in fake.billed
    )


def test_a_token_budget_is_never_exceeded_at_the_endpoint_by_parallel_agents(
    fake: FakeAnthropic, backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Build and deploy run in parallel after the design; every call reserves its worst
    case (input counted by the API, plus max_tokens lowered to what is left) first."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", fake.api_key)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
    fake.default = long_answers(1600)  # 400 tokens an answer, cut to what is left
    budget = 1500
    done = _run_tree(
        backends, {"budget_tokens": str(budget)}, "design, build and deploy an API to k8s"
    )
    billed = _billed_tokens(fake)
    assert 0 < billed <= budget, f"the endpoint billed {billed} tokens for a {budget} budget"
    assert done.status == Status.FAILED
    tree = backends.state.tree(done.id)
    refused = [t for t in tree if t.parent_id and t.error and "budget exceeded" in t.error]
    assert refused, [(t.title, t.status, t.attempts, t.error) for t in tree]
    assert all(t.attempts == 1 for t in refused)  # not retried: a retry would fail the same way
    # every request the API answered was granted: max_tokens never exceeded what was left
    assert all(r["body"]["max_tokens"] <= budget for r in fake.requests)
    assert len(fake.count_requests) >= len(fake.requests)  # each call was counted first


def test_budget_exceeded_mid_tree_fails_remaining_work_without_calling_the_api(
    fake: FakeAnthropic, backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", fake.api_key)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
    fake.default = long_answers(4000)  # 1,000 tokens: it fills any grant
    done = _run_tree(backends, {"budget_tokens": "3000"}, "design and build an API")
    assert done.status == Status.FAILED
    assert _billed_tokens(fake) <= 3000
    build = next(t for t in backends.state.tree(done.id) if t.title == "Build it")
    assert build.status == Status.FAILED
    assert build.error and "budget exceeded" in build.error and "of 3,000 budgeted" in build.error
    assert build.attempts == 1  # not retried: a retry would fail the same way


def test_end_to_end_run_records_tokens_and_cost_in_state_and_metrics(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    home = tmp_path / "e2e-home"
    env = clean_env(
        {
            "ORCHESTRA_HOME": str(home),
            "ANTHROPIC_API_KEY": fake.api_key,
            "ANTHROPIC_BASE_URL": fake.url,
            "ORCHESTRA_AGENTS__HEARTBEAT_SECONDS": "0.5",
        }
    )
    cwd = tmp_path / "e2e-cwd"
    cwd.mkdir()
    with processes() as procs:
        procs.append(Proc(["run", "--agents", "all"], env, cwd, tmp_path / "run.log"))
        submitted = run_orchestra(["task", "submit", "-q", "design and build an API"], env, cwd)
        assert submitted.code == 0, submitted
        task_id = submitted.out.strip()

        def finished() -> dict[str, object] | None:
            got = run_orchestra(["--json", "task", "get", task_id], env, cwd)
            data: dict[str, object] = json.loads(got.out) if got.code == 0 else {}
            status = data.get("status") or (data.get("task") or {}).get("status")  # type: ignore[union-attr]
            return data if status in ("succeeded", "failed") else None

        data = wait_until(finished, timeout=90, interval=0.5, what=f"task {task_id}\n")

        def agent_calls() -> int | None:
            agents = json.loads(run_orchestra(["--json", "agent", "list"], env, cwd).out)
            calls = sum(a["usage"]["calls"] for a in agents)
            return calls if calls == 2 else None

        # per-agent totals reach the registry with the next heartbeat: design + build
        wait_until(agent_calls, timeout=10, interval=0.3, what="per-agent usage")
    task = data.get("task", data)
    assert task["status"] == "succeeded", data
    tree = data["tree_usage"]
    # plan + design, build and the parent's aggregation: what the endpoint billed, exactly
    assert tree["calls"] == 4 == len(fake.billed)
    assert tree["input_tokens"] == sum(u["input_tokens"] for u in fake.billed)
    assert tree["output_tokens"] == sum(u["output_tokens"] for u in fake.billed)
    assert tree["cache_read_tokens"] == sum(u["cache_read_input_tokens"] for u in fake.billed)
    assert tree["cache_write_tokens"] == sum(u["cache_creation_input_tokens"] for u in fake.billed)
    assert tree["cost_usd"] > 0
    assert task["result"] == "fake model answer"  # the model combined the subtask results
    lines = [json.loads(ln) for ln in (home / "metrics.jsonl").read_text().splitlines()]
    calls = [ln for ln in lines if ln.get("kind") == "llm_call"]
    assert len(calls) == 4
    assert {c["purpose"] for c in calls} == {"plan", "execute", "aggregate"}
    assert all(c["root_id"] == task_id and c["cost_usd"] > 0 for c in calls)
    assert sum(c["cost_usd"] for c in calls) == pytest.approx(tree["cost_usd"])
    decisions = [json.loads(ln) for ln in (home / "decisions.jsonl").read_text().splitlines()]
    plans = [d for d in decisions if d.get("task_id") == task_id]
    assert plans and all("rule-based" not in json.dumps(d) for d in plans), plans
    assert any(d.get("planner") == "llm" or "llm" in json.dumps(d) for d in plans), plans


def _claimed_by_a_coder(backends: Backends, llm: Any, name: str) -> tuple[Any, Task]:
    """A coder agent on ``llm`` and a task it has claimed (running), to ``_execute``."""
    from orchestra_cli.engine.agent import Agent

    agent = Agent(backends, load_roles()["coder"], llm, PromptLibrary(), name=name)
    task, _ = backends.state.create_task(
        Task(title="t", input="x", capability="code"), Create(dispatch={"queue": "work.code"})
    )
    running, claimed = backends.state.claim(task.id, agent.name)
    assert claimed
    return agent, running


def test_a_call_whose_result_is_discarded_is_still_charged_and_in_metrics(
    backends: Backends,
) -> None:
    """The agent defers the last call's charge and line to its success; a refused
    success (the task was cancelled meanwhile) still charges and writes them."""
    from orchestra_cli.llm.base import LLMRequest, LLMResponse
    from orchestra_cli.llm.offline import OfflineProvider
    from orchestra_cli.models import Usage

    class CancelledMeanwhile(OfflineProvider):
        def complete(self, request: LLMRequest) -> LLMResponse:
            backends.state.transition(task.id, Status.CANCELLED, error="by operator")
            response = super().complete(request)
            response.usage = Usage(calls=1, input_tokens=7, output_tokens=3)
            return response

    agent, task = _claimed_by_a_coder(backends, CancelledMeanwhile(), "a-test")
    agent._execute(task)
    after = backends.state.get_task(task.id)
    assert after.status == Status.CANCELLED
    assert after.usage.calls == 1 and after.usage.input_tokens == 7  # charged all the same
    lines = [
        json.loads(ln) for ln in (backends.settings.home / "metrics.jsonl").read_text().splitlines()
    ]
    calls = [ln for ln in lines if ln.get("kind") == "llm_call" and ln["task_id"] == task.id]
    assert len(calls) == 1 and calls[0]["input_tokens"] == 7
    assert not [ln for ln in lines if ln.get("kind") == "task" and ln["task_id"] == task.id]


def test_a_message_for_a_task_not_yet_stored_is_looked_at_again_then_dead_lettered(
    backends: Backends,
) -> None:
    """Submit publishes while the create is on its way (and may be retried)."""
    from types import SimpleNamespace

    from orchestra_cli.engine.agent import UNKNOWN_TASK_MARGIN_SECONDS, Agent
    from orchestra_cli.engine.worker import DeadLetter, Defer
    from orchestra_cli.llm.offline import OfflineProvider
    from orchestra_cli.models import MSG_RUN, Envelope
    from orchestra_cli.util import now

    agent = Agent(backends, load_roles()["coder"], OfflineProvider(), PromptLibrary(), name="a")

    def handle(age: float) -> object:
        env = Envelope(
            type=MSG_RUN, task_id="01a214fa-0000-7000-8000-000000000000", time=now() - age
        )
        delivery = SimpleNamespace(envelope=env, delivery_count=3, queue="work.code")
        return agent.handle(delivery)  # type: ignore[arg-type]

    fresh, later = handle(0.1), handle(5)  # within the margin for clocks, at least
    assert isinstance(fresh, Defer) and fresh.delay < 1  # soon, and not counted as poison
    assert isinstance(later, Defer) and later.delay >= 1
    old = handle(backends.state.create_window + UNKNOWN_TASK_MARGIN_SECONDS + 1)
    assert isinstance(old, DeadLetter) and "does not exist" in old.reason


def test_a_run_message_for_a_task_reopened_since_is_dropped_not_dead_lettered(
    backends: Backends,
) -> None:
    """`task retry` reopens a task to pending; the orchestrator routes it with a new
    message, so an older one still on the queue is stale, not poison."""
    from types import SimpleNamespace

    from orchestra_cli.engine.agent import Agent
    from orchestra_cli.engine.worker import Ack
    from orchestra_cli.llm.offline import OfflineProvider
    from orchestra_cli.models import MSG_RUN, Envelope

    agent = Agent(backends, load_roles()["coder"], OfflineProvider(), PromptLibrary(), name="a")
    task, _ = backends.state.create_task(Task(title="t", input="x", capability="code"))
    assert backends.state.get_task(task.id).status == Status.PENDING
    delivery = SimpleNamespace(
        envelope=Envelope(type=MSG_RUN, task_id=task.id), delivery_count=1, queue="work.code"
    )
    assert isinstance(agent.handle(delivery), Ack)  # type: ignore[arg-type]
    assert backends.state.get_task(task.id).status == Status.PENDING  # left to the orchestrator


def test_a_metrics_line_that_cannot_be_written_does_not_lose_the_calls_charge(
    backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestra_cli.llm.offline import OfflineProvider
    from orchestra_cli.logs import JsonlWriter

    write = JsonlWriter.write

    def disk_full(self: JsonlWriter, record: dict[str, object]) -> None:
        if record.get("kind") == "llm_call":  # the line written with the deferred charge
            raise OSError(28, "No space left on device")
        write(self, record)

    agent, task = _claimed_by_a_coder(backends, OfflineProvider(), "a-full")
    monkeypatch.setattr(JsonlWriter, "write", disk_full)
    agent._execute(task)
    after = backends.state.get_task(task.id)
    assert after.status == Status.SUCCEEDED and after.usage.calls == 1  # charged with it


def test_a_bad_budget_label_fails_the_task_with_its_reason_and_frees_the_slot(
    backends: Backends,
) -> None:
    """The meter's set-up must not raise on a label that is not a number: the call's
    reservation does, and the task fails with it (a set-up that raised left the task
    in the agent's running set, deferred at every redelivery)."""
    from orchestra_cli.engine.agent import Agent
    from orchestra_cli.llm.offline import OfflineProvider

    agent = Agent(backends, load_roles()["coder"], OfflineProvider(), PromptLibrary(), name="a-l")
    task, _ = backends.state.create_task(
        Task(title="t", input="x", capability="code", labels={"budget_usd": "abc"}),
        Create(dispatch={"queue": "work.code"}),
    )
    running, claimed = backends.state.claim(task.id, agent.name)
    assert claimed
    agent._execute(running)
    after = backends.state.get_task(task.id)
    assert "budget label is not a number" in (after.error or ""), after
    assert task.id not in agent._running


def test_a_call_that_never_started_gives_its_slot_and_time_limit_back(
    backends: Backends, fake: FakeAnthropic
) -> None:
    """A single call goes to the loop as ``Later``; when it cannot start (no loop), its
    ``abandon`` drops the task from the running set (before, every redelivery of it
    was deferred as "mine, still running") and cancels its time limit."""
    from orchestra_cli.engine.agent import Agent
    from orchestra_cli.engine.worker import Later

    llm = AnthropicProvider(fake.api_key, base_url=fake.url, backoff_seconds=0.01)
    talker = load_roles()["coder"].model_copy(update={"tools": [], "mcp_servers": []})
    agent = Agent(backends, talker, llm, PromptLibrary(), name="a-nostart")
    task, _ = backends.state.create_task(
        Task(title="t", input="x", capability="code"), Create(dispatch={"queue": "work.code"})
    )
    task, claimed = backends.state.claim(task.id, agent.name)
    assert claimed
    later = agent._execute(task)
    assert isinstance(later, Later) and later.abandon is not None
    assert task.id in agent._running
    assert [d.cancelled for _, _, d in agent._deadlines._heap] == [False]  # its time limit
    later.abandon(RuntimeError("the loop is closed"))
    assert task.id not in agent._running
    assert [d.cancelled for _, _, d in agent._deadlines._heap] == [True]
    assert fake.requests == []  # no call was made
