"""OpenTelemetry traces of a task tree across the CLI, the orchestrator and an agent
process, exported over OTLP/HTTP to a real receiver the test runs."""

from __future__ import annotations

import pytest

from orchestra_cli.status import Status
from tests.e2e.conftest import Deployment
from tests.e2e.otlp_receiver import Span, otlp_receiver
from tests.support import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TREE = "Design, implement and deploy a todo API, then review it"


def _by_id(spans: list[Span]) -> dict[str, Span]:
    return {s.span_id: s for s in spans}


def test_one_task_tree_is_one_trace_joined_across_processes(deployment: Deployment) -> None:
    d = deployment
    with otlp_receiver() as receiver:
        d.env.update(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within 0.1 s, not 5 s
            }
        )
        d.start("run", "--agents", "architect,infra,reviewer")
        d.start("agent", "start", "coder", "--name", "coder-1")
        root = d.submit(TREE)
        assert d.wait_status(root, Status.SUCCEEDED, Status.FAILED).status == Status.SUCCEEDED
        subtasks = [t for t in d.backends.state.tree(root) if t.id != root]
        wait_until(
            lambda: (
                len(receiver.named("invoke_agent")) >= len(subtasks)
                and receiver.named("orchestra.aggregate")
            ),
            timeout=30,
            what="every subtask's span and the aggregation",
        )
        spans = list(receiver.spans)

    submit = next(s for s in spans if s.name == "orchestra.submit")
    trace = [s for s in spans if s.trace_id == submit.trace_id]
    by_id = _by_id(trace)
    assert submit.parent_id == "" and submit.process == "cli"
    assert submit.attrs["orchestra.task.id"] == root

    (plan,) = [s for s in trace if s.name == "orchestra.plan"]
    assert plan.parent_id == submit.span_id and plan.process == "orchestrator"
    (aggregate,) = [s for s in trace if s.name == "orchestra.aggregate"]
    assert aggregate.parent_id == plan.span_id and aggregate.attrs["orchestra.subtasks"] == len(
        subtasks
    )

    agents = [s for s in trace if s.name.startswith("invoke_agent ")]
    assert {s.attrs["orchestra.task.id"] for s in agents} == {t.id for t in subtasks}
    assert all(s.parent_id == plan.span_id for s in agents), "subtasks are siblings under the plan"
    coder = next(s for s in agents if s.name == "invoke_agent coder")
    assert coder.process == "agent-coder-1" and coder.attrs["gen_ai.agent.name"] == "coder"

    chats = [s for s in trace if s.name.startswith("chat ")]
    assert chats and all(by_id[c.parent_id].name.startswith("invoke_agent ") for c in chats)
    coder_chats = [c for c in chats if c.parent_id == coder.span_id]
    task = d.task(coder.attrs["orchestra.task.id"])
    assert len(coder_chats) == task.usage.calls >= 2
    chat = coder_chats[0]
    assert chat.attrs["gen_ai.operation.name"] == "chat"
    assert chat.attrs["gen_ai.request.model"] == chat.name.removeprefix("chat ")
    assert chat.attrs["gen_ai.usage.input_tokens"] > 0
    assert chat.attrs["gen_ai.usage.output_tokens"] > 0
    assert chat.attrs["gen_ai.response.finish_reasons"] in (["tool_use"], ["end_turn"])
    assert sum(c.attrs["gen_ai.usage.input_tokens"] for c in coder_chats) == task.usage.input_tokens

    tools = [s for s in trace if s.parent_id == coder.span_id and s.name.startswith("execute_tool")]
    assert {"execute_tool Write", "execute_tool Bash"} <= {s.name for s in tools}
    assert all(s.attrs["gen_ai.tool.name"] == s.name.split()[1] for s in tools)
    assert all(s.process == "agent-coder-1" for s in tools)
    assert {s.trace_id for s in spans} == {submit.trace_id}, "one tree, one trace"


def test_a_batch_chunk_is_one_span_its_tasks_runs_join(deployment: Deployment) -> None:
    """`task submit --batch`: one `orchestra.submit_many` span a chunk; each task's agent
    span is its child, across the processes."""
    d = deployment
    batch = d.tmp / "tasks.txt"
    batch.write_text("first thing\nsecond thing\n")
    with otlp_receiver() as receiver:
        d.env.update(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        )
        d.start("agent", "start", "coder", "--name", "coder-1")
        ids = d.cli("task", "submit", "--batch", str(batch), "-c", "code").out.split()
        for task_id in ids:
            assert d.wait_status(task_id, Status.SUCCEEDED, Status.FAILED).status == "succeeded"
        wait_until(lambda: len(receiver.named("invoke_agent")) >= 2, timeout=30, what="spans")
        spans = list(receiver.spans)
    (chunk,) = [s for s in spans if s.name == "orchestra.submit_many"]
    assert chunk.process == "cli" and chunk.attrs["orchestra.tasks"] == 2
    agents = [s for s in spans if s.name.startswith("invoke_agent ")]
    assert {s.attrs["orchestra.task.id"] for s in agents} == set(ids)
    assert all(s.parent_id == chunk.span_id for s in agents)
