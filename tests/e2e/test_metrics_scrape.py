"""Prometheus metrics scraped from real `orchestra` processes, against a known workload."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestra_cli.models import Task
from orchestra_cli.status import Status
from tests.e2e.conftest import Deployment
from tests.support import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
TOKEN = "6d6574726963732d746573742d746f6b656e2d31323334353637"  # the API asks for 32+ characters


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    """Every sample of the endpoint, parsed by prometheus_client's own parser."""
    r = httpx.get(url, headers=headers, timeout=10)
    r.raise_for_status()
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Summed over the labels not given."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def serving(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def tool_results(d: Deployment, ids: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for task_id in ids:
        for step in d.backends.state.steps(task_id):
            if step.get("kind") == "tool_result":
                counts[step["name"]] = counts.get(step["name"], 0) + 1
    return counts


def test_orchestrator_and_agent_metrics_count_a_known_workload(deployment: Deployment) -> None:
    d = deployment
    orch_port, agent_port = free_port(), free_port()
    orch = d.start("run", "--metrics-port", str(orch_port))
    d.start(
        "agent", "start", "coder", "--name", "coder-1", "-n", "2", "--metrics-port", str(agent_port)
    )
    orch_url = f"http://127.0.0.1:{orch_port}/metrics"
    agent_url = f"http://127.0.0.1:{agent_port}/metrics"
    wait_until(lambda: serving(orch_url) and serving(agent_url), timeout=30, what="metrics")
    said = f"metrics on http://127.0.0.1:{orch_port}/metrics"  # printed as the server starts
    wait_until(lambda: said in orch.output(), timeout=10, what="the metrics line")

    d.backends.broker.publish_raw("work.code", b"not an envelope")  # dead-lettered by the agent
    ids = [d.submit("--capability", "code", "--wait", f"write module {i}") for i in range(2)]
    for task_id in ids:
        assert d.task(task_id).status == Status.SUCCEEDED
    wait_until(
        lambda: value(scrape(orch_url), "orchestra_dead_letters") == 1, timeout=20, what="letter"
    )

    agent = scrape(agent_url)
    calls = sum(d.task(t).usage.calls for t in ids)
    lines = [x for x in d.backends.journals.metrics.read() if x.get("kind") == "llm_call"]
    model = lines[0]["model"]
    assert calls >= 2 and len(lines) == calls
    assert value(agent, "orchestra_llm_calls_total", model=model, role="coder") == calls
    tokens = sum(int(x["input_tokens"]) for x in lines)
    assert value(agent, "orchestra_llm_tokens_total", model=model, role="coder", kind="input") == (
        tokens
    )
    assert value(agent, "orchestra_llm_call_duration_seconds_count", model=model, role="coder") == (
        calls
    )
    tools = tool_results(d, ids)
    assert tools and {"Write", "Bash"} <= set(tools)
    for tool, n in tools.items():
        assert total(agent, "orchestra_tool_calls_total", tool=tool) == n, tool
    assert total(agent, "orchestra_tasks") == 0  # an agent exports its own work only

    orch_samples = scrape(orch_url)
    assert value(orch_samples, "orchestra_state_up") == 1
    assert value(orch_samples, "orchestra_tasks", status="succeeded") == 2
    assert (
        value(orch_samples, "orchestra_task_outcomes_total", capability="code", outcome="succeeded")
        == 2
    )
    assert (
        value(
            orch_samples,
            "orchestra_task_transitions_total",
            from_status="queued",
            to_status="running",
        )
        == 2
    )
    assert (
        value(
            orch_samples,
            "orchestra_task_duration_seconds_count",
            capability="code",
            outcome="succeeded",
        )
        == 2
    )
    assert value(orch_samples, "orchestra_task_queue_wait_seconds_count", capability="code") == 2
    assert value(orch_samples, "orchestra_agents", role="coder", state="running") == 1
    assert value(orch_samples, "orchestra_agent_slots", agent="coder-1", role="coder") == 2
    wait_until(  # the load the registry holds is as of the agent's last heartbeat
        lambda: (
            value(scrape(orch_url), "orchestra_agent_inflight_tasks", agent="coder-1", role="coder")
            == 0
        ),
        timeout=10,
        what="the agent's load to be 0",
    )
    assert value(orch_samples, "orchestra_queue_messages", queue="dead") == 1
    assert total(orch_samples, "orchestra_waiting_for_person") == 0
    names = {name for name, _ in orch_samples}
    assert not any(re.search(r"[0-9a-f]{8}-[0-9a-f]{4}", str(k)) for k in orch_samples), (
        "a task id in a label"
    )
    assert all(n.startswith("orchestra_") or n.startswith(("process_", "python_")) for n in names)


def test_api_serves_metrics_to_a_bearer_token(deployment: Deployment) -> None:
    d = deployment
    d.env["ORCHESTRA_API_TOKEN"] = TOKEN
    port = free_port()
    d.start("api", "serve", "--port", str(port))
    url = f"http://127.0.0.1:{port}/metrics"
    wait_until(lambda: _answers(url), timeout=30, what="the API")
    assert httpx.get(url, timeout=10).status_code == 401
    d.submit("--capability", "code", "queued for later")
    d.start("run")  # plans the tree below; no agent takes its steps
    root = d.submit("Design and implement a cache")
    d.wait_status(root, "waiting")
    d.cli("task", "pause", root)  # a paused tree waits for a person
    samples = scrape(url, {"Authorization": f"Bearer {TOKEN}"})
    queued = len([t for t in d.backends.state.tree(root) if t.status == "queued"])
    assert value(samples, "orchestra_tasks", status="queued") == 1 + queued
    assert value(samples, "orchestra_open_tasks", status="queued", capability="code") >= 1
    assert value(samples, "orchestra_open_tasks", status="waiting", capability="-") == 1
    assert value(samples, "orchestra_queue_messages", queue="work.code") >= 1
    assert value(samples, "orchestra_waiting_for_person", kind="pause") == 1
    assert value(samples, "orchestra_waiting_for_person", kind="approval") == 0


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return True


def test_the_orchestrators_recovery_sweep_is_counted_by_action(deployment: Deployment) -> None:
    d = deployment
    task, _ = d.backends.state.create_task(Task(title="t", input="i", capability="code"))
    d.backends.state.transition(task.id, Status.QUEUED)
    d.backends.state.transition(task.id, Status.RUNNING, agent="ghost", attempts=1)
    d.env["ORCHESTRA_TASKS__RECOVERY_INTERVAL_SECONDS"] = "0.5"
    port = free_port()
    d.start("run", "--metrics-port", str(port))
    url = f"http://127.0.0.1:{port}/metrics"
    wait_until(
        lambda: (
            serving(url)
            and value(
                scrape(url), "orchestra_recovery_actions_total", action="requeue", result="done"
            )
            == 1
        ),
        timeout=30,
        what="the sweep to requeue the ghost's task",
    )
    assert d.task(task.id).status == Status.QUEUED
    samples = scrape(url)  # counted from the orchestrator's start: not the task's first moves
    assert (
        value(
            samples, "orchestra_task_transitions_total", from_status="pending", to_status="queued"
        )
        == 0
    )
    assert (
        value(
            samples, "orchestra_task_transitions_total", from_status="running", to_status="queued"
        )
        == 1
    )
