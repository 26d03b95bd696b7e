"""Today's API end to end: real `orchestra run` and agent processes against the fake endpoint."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.llm.deployment import Deployment
from tests.llm.fake_anthropic import FakeAnthropic, Reply, default_reply, refusal, text
from tests.support import processes, run_orchestra, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def deployment(fake: FakeAnthropic, tmp_path: Path) -> Iterator[Deployment]:
    with processes() as procs:
        yield Deployment(fake, tmp_path, procs)


def test_a_refusal_fails_its_task_after_one_call_and_is_not_retried(
    fake: FakeAnthropic, deployment: Deployment
) -> None:
    fake.script(refusal())
    task_id = deployment.submit("write an exploit", "--capability", "code", "--max-attempts", "3")
    task = deployment.finished(task_id)
    assert task["status"] == "failed", task
    assert "refused the request" in task["error"]
    assert task["attempts"] == 1
    assert len(fake.requests) == 1


def test_output_cut_at_max_tokens_is_continued_into_one_result(
    fake: FakeAnthropic, deployment: Deployment
) -> None:
    fake.script(
        Reply(content=[{"type": "text", "text": "part one, "}], stop_reason="max_tokens"),
        text("part two."),
    )
    task = deployment.finished(deployment.submit("write it", "--capability", "code"))
    assert task["status"] == "succeeded", task
    assert task["result"] == "part one, part two."
    assert len(fake.requests) == 2
    assert fake.requests[1]["body"]["messages"][-2]["role"] == "assistant"


def test_output_still_truncated_fails_with_the_reason_not_a_silent_success(
    fake: FakeAnthropic, deployment: Deployment
) -> None:
    cut = Reply(content=[{"type": "text", "text": "cut"}], stop_reason="max_tokens")
    fake.script(*[cut] * 3)  # the first call and llm.max_continuations (2)
    task = deployment.finished(deployment.submit("write it", "--capability", "code"))
    assert task["status"] == "failed", task
    assert "output truncated at max_tokens" in task["error"]
    assert len(fake.requests) == 3


def test_a_cancel_frees_the_slot_of_an_in_flight_call_within_a_second(
    fake: FakeAnthropic, deployment: Deployment
) -> None:
    fake.script(text("too late", delay=20))
    slow = deployment.submit("think for long", "--capability", "code")
    wait_until(lambda: len(fake.requests) == 1, timeout=20, what="the call to start")
    started = time.monotonic()
    cancelled = run_orchestra(["task", "cancel", slow], deployment.env, deployment.cwd)
    assert cancelled.code == 0, cancelled
    wait_until(lambda: fake.closed_early == 1, timeout=5, interval=0.05, what="the stream closed")
    assert time.monotonic() - started < 1.5  # the call's connection went within a second
    # the single slot is free: the next task runs at once
    quick = deployment.finished(deployment.submit("quick one", "--capability", "code"), timeout=15)
    assert quick["status"] == "succeeded"
    assert deployment.task(slow)["status"] == "cancelled"
    assert deployment.task(slow)["usage"]["calls"] == 1  # charged for what it used


def test_a_task_timeout_stops_the_call_in_flight_and_fails_on_time(
    fake: FakeAnthropic, deployment: Deployment
) -> None:
    fake.script(text("too late", delay=20))
    started = time.monotonic()
    task_id = deployment.submit(
        "think for long", "--capability", "code", "--timeout", "3", "--max-attempts", "1"
    )
    task = deployment.finished(task_id, timeout=20)
    assert task["status"] == "failed" and "timed out after 3s" in task["error"], task
    assert time.monotonic() - started < 8  # not the 20 s the call would have taken


def test_planning_on_the_default_model_is_done_by_the_llm_planner(
    fake: FakeAnthropic, deployment: Deployment
) -> None:
    # the architect role has no agent here: only the plan is of interest
    fake.default = default_reply
    task_id = deployment.submit("design and build an API")
    wait_until(lambda: fake.requests, timeout=20, what="the plan call")

    def decided() -> list[dict[str, Any]] | None:
        path = deployment.home / "decisions.jsonl"
        lines = [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []
        mine = [d for d in lines if d.get("task_id") == task_id]
        return mine or None

    decisions = wait_until(decided, timeout=20, what="the plan decision")
    assert any(d.get("planner") == "llm" for d in decisions), decisions
    plan_call = fake.requests[0]["body"]
    assert "tool_choice" not in plan_call
    assert plan_call["output_config"]["format"]["type"] == "json_schema"


def test_a_token_budget_is_not_exceeded_at_the_endpoint(
    fake: FakeAnthropic, deployment: Deployment
) -> None:
    fake.default = lambda body: text("z" * 40000)  # 10,000 tokens each: more than is left
    first = deployment.finished(
        deployment.submit("write a parser", "--capability", "code", "--budget", "5000tok")
    )
    billed = sum(
        u["input_tokens"]
        + u["output_tokens"]
        + u["cache_read_input_tokens"]
        + u["cache_creation_input_tokens"]
        for u in fake.billed
    )
    assert 0 < billed <= 5000, billed
    assert first["status"] == "failed" and "budget exceeded" in first["error"], first
