"""Humans in the loop: a tool call behind `ask` waits for a person, on both backends,
with real `orchestra run` and agent processes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.contract.conftest import AMQP_URL, REDIS_URL
from tests.llm.deployment import Deployment
from tests.llm.fake_anthropic import FakeAnthropic, text, tool_use
from tests.services.conftest import delete_queues_with_prefix
from tests.support import Proc, processes, require_service, run_orchestra, wait_until
from tests.tools.conftest import require_bwrap

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CAREFUL = """name: careful
description: Writes files freely, runs commands only with a person's approval.
capabilities: [careful]
prompt: execute-coder
tools: [Write, Bash]
permissions:
  allow: [Write]
  ask: [Bash]
"""


@pytest.fixture(params=["embedded", "services"])
def backend_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    roles = tmp_path / "roles"
    roles.mkdir()
    (roles / "careful.yaml").write_text(CAREFUL)
    env = {
        "ORCHESTRA_AGENTS__DEFINITIONS_DIR": str(roles),
        "ORCHESTRA_AGENTS__TTL_SECONDS": "2",
        "ORCHESTRA_BROKER__LEASE_SECONDS": "2",
    }
    if request.param == "embedded":
        yield env
        return
    require_service("Redis", "127.0.0.1", 6379)
    require_service("RabbitMQ", "127.0.0.1", 5672)
    prefix = f"orchestra-hitl-{uuid.uuid4().hex[:10]}"
    yield {
        **env,
        "ORCHESTRA_STATE_URL": REDIS_URL,
        "ORCHESTRA_BROKER_URL": AMQP_URL,
        "ORCHESTRA_REDIS__KEY_PREFIX": prefix,
        "ORCHESTRA_RABBITMQ__QUEUE_PREFIX": prefix,
    }
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()
    delete_queues_with_prefix(prefix, AMQP_URL)


def _results(request: dict[str, Any]) -> list[dict[str, Any]]:
    content = request["body"]["messages"][-1]["content"]
    return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]


def _restart_everything(deployment: Deployment, procs: list[Proc], suffix: str) -> None:
    for proc in list(procs):
        proc.stop()
        procs.remove(proc)
    procs.append(Proc(["run"], deployment.env, deployment.cwd, deployment.tmp / f"run-{suffix}"))
    deployment.agent = deployment.start_agent(suffix)


def test_a_call_behind_ask_waits_without_a_slot_survives_a_restart_and_runs_once_approved(
    fake: FakeAnthropic, tmp_path: Path, backend_env: dict[str, str]
) -> None:
    require_bwrap()
    fake.script(
        tool_use("Bash", {"command": "echo ran >> runs.txt && cat runs.txt"}),
        text("meanwhile: the other task"),  # the second task, in the freed slot
        text("done after approval"),
    )
    with processes() as procs:
        deployment = Deployment(fake, tmp_path, procs, env=backend_env, role="careful")
        task_id = deployment.submit("run the command", "--capability", "careful")
        wait_until(lambda: deployment.task(task_id)["status"] == "blocked", timeout=30)
        # the agent's one slot is free: another task runs while the first one waits
        other = deployment.finished(deployment.submit("other", "--capability", "careful"))
        assert other["status"] == "succeeded" and other["result"] == "meanwhile: the other task"
        inbox = deployment.cli("inbox")
        assert [(i["task_id"], i["tool"]) for i in inbox] == [(task_id, "Bash")]
        shown = run_orchestra(["task", "get", task_id], deployment.env, deployment.cwd)
        assert "waits for approval: Bash echo ran >> runs.txt" in shown.out
        assert f"orchestra task approve {task_id}" in shown.out
        _restart_everything(deployment, procs, "2")  # orchestrator and every agent
        assert deployment.task(task_id)["status"] == "blocked"
        approved = run_orchestra(["task", "approve", task_id], deployment.env, deployment.cwd)
        assert approved.code == 0, approved
        task = deployment.finished(task_id)
        again = run_orchestra(["task", "approve", task_id], deployment.env, deployment.cwd)
    assert task["status"] == "succeeded" and task["result"] == "done after approval"
    assert task["agent"] == "careful-2"  # resumed on a different agent
    (ran,) = _results(fake.requests[2])
    assert ran["content"].strip() == "ran"  # it ran once, after the approval
    assert len(fake.requests) == 3  # the first turn was not asked again
    assert again.code == 1 and "waits for no approval" in again.err
    assert again.err.count("\n") == 1


def test_a_rejected_call_never_runs_and_the_reason_reaches_the_model(
    fake: FakeAnthropic, tmp_path: Path, backend_env: dict[str, str]
) -> None:
    require_bwrap()
    fake.script(
        tool_use("Bash", {"command": "touch ran.txt"}),
        text("understood, not running it"),
    )
    with processes() as procs:
        deployment = Deployment(fake, tmp_path, procs, env=backend_env, role="careful")
        task_id = deployment.submit("run the command", "--capability", "careful")
        wait_until(lambda: deployment.task(task_id)["status"] == "blocked", timeout=30)
        env, cwd = deployment.env, deployment.cwd
        no_reason = run_orchestra(["task", "reject", task_id, "--reason", " "], env, cwd)
        wrong_step = run_orchestra(["task", "approve", task_id, "--step", "99"], env, cwd)
        assert deployment.task(task_id)["status"] == "blocked"  # nothing changed
        rejected = run_orchestra(
            ["task", "reject", task_id, "--reason", "not on a Friday"], env, cwd
        )
        assert rejected.code == 0, rejected
        task = deployment.finished(task_id)
        files = deployment.cli("task", "files", task_id)["files"]
    for bad in (no_reason, wrong_step):
        assert bad.code == 2 and bad.err.count("\n") == 1, bad
    assert "needs a reason" in no_reason.err and "no call waiting at step 99" in wrong_step.err
    assert task["status"] == "succeeded", task
    (result,) = _results(fake.requests[1])
    assert result["is_error"] is True and "not on a Friday" in result["content"]
    assert files == []  # the command never ran


def _requests_with(fake: FakeAnthropic, needle: str) -> list[dict[str, Any]]:
    return [r for r in fake.requests if needle in str(r["body"]["messages"])]


def test_retry_with_a_note_reruns_a_succeeded_step_with_the_note_and_then_its_dependents(
    fake: FakeAnthropic, tmp_path: Path, backend_env: dict[str, str]
) -> None:
    require_bwrap()
    with processes() as procs:
        deployment = Deployment(fake, tmp_path, procs, env=backend_env, role="coder")
        deployment.start_agent("1", role="architect")
        root = deployment.submit("design and build an API")  # planned: design → build
        first = deployment.finished(root)
        assert first["status"] == "succeeded", first
        tree = deployment.cli("task", "get", root)["subtasks"]
        design = next(t for t in tree if t["title"] == "Design it")
        build = next(t for t in tree if t["title"] == "Build it")
        builds_before = len(_requests_with(fake, "# Your step: Build it"))
        env, cwd = deployment.env, deployment.cwd
        plain = run_orchestra(["task", "retry", design["id"]], env, cwd)
        noted = run_orchestra(
            ["task", "retry", design["id"], "--note", "use REST, not RPC"], env, cwd
        )
        assert noted.code == 0, noted

        def rebuilt() -> bool:
            got = deployment.cli("task", "get", root)
            return (
                got["status"] == "succeeded"
                and len(_requests_with(fake, "# Your step: Build it")) > builds_before
            )

        wait_until(rebuilt, timeout=60, what="the tree to run again")
        after = {t["title"]: t for t in deployment.cli("task", "get", root)["subtasks"]}
    assert plain.code == 1 and "--note" in plain.err  # a succeeded step needs the note
    noted_requests = _requests_with(fake, "use REST, not RPC")
    assert noted_requests, "the note reached the step's prompt"
    assert "# A note on your previous attempt" in str(noted_requests[0]["body"]["messages"])
    assert after["Design it"]["status"] == after["Build it"]["status"] == "succeeded"
    assert build["id"] == after["Build it"]["id"]  # the same step, run again
    transcript = deployment.cli("task", "transcript", design["id"])["steps"]
    assert [s["kind"] for s in transcript].count("prompt") == 2  # both attempts kept


def test_pause_stops_new_steps_and_resume_goes_on_from_there(
    fake: FakeAnthropic, tmp_path: Path, backend_env: dict[str, str]
) -> None:
    require_bwrap()
    fake.script(
        tool_use("Write", {"file_path": "a.txt", "content": "a"}),
        tool_use("Write", {"file_path": "b.txt", "content": "b"}, delay=3),
        text("both written"),
    )
    with processes() as procs:
        deployment = Deployment(fake, tmp_path, procs, env=backend_env, role="careful")
        env, cwd = deployment.env, deployment.cwd
        task_id = deployment.submit("write two files", "--capability", "careful")
        wait_until(lambda: len(fake.requests) == 2, timeout=30, what="the second turn")
        paused = run_orchestra(["task", "pause", task_id], env, cwd)
        assert paused.code == 0, paused
        wait_until(lambda: deployment.task(task_id)["status"] == "blocked", timeout=30)
        time.sleep(1.5)
        assert len(fake.requests) == 2  # the turn in flight finished; no new step started
        inbox = deployment.cli("inbox")
        assert [(i["kind"], i["task_id"]) for i in inbox] == [("paused", task_id)]
        twice = run_orchestra(["task", "pause", task_id], env, cwd)
        resumed = run_orchestra(["task", "resume", task_id], env, cwd)
        assert resumed.code == 0, resumed
        task = deployment.finished(task_id)
        files = sorted(f["path"] for f in deployment.cli("task", "files", task_id)["files"])
        again = run_orchestra(["task", "resume", task_id], env, cwd)
    assert twice.code == 1 and "paused already" in twice.err
    assert task["status"] == "succeeded" and task["result"] == "both written"
    assert files == ["a.txt", "b.txt"]
    assert len(fake.requests) == 3
    assert (again.code == 1 and "has ended" in again.err) or "not paused" in again.err


class Receiver:
    """A local webhook receiver: answers 500 to its first request, then 200."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.got: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(500 if len(receiver.got) == 1 else 200)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def events(self) -> list[dict[str, Any]]:
        import json

        return [json.loads(body) for _, body in self.got]


def test_the_webhook_receives_signed_inbox_and_tree_failed_events_retried_with_backoff(
    fake: FakeAnthropic, tmp_path: Path, backend_env: dict[str, str]
) -> None:
    import hashlib
    import hmac
    import json

    from tests.llm.fake_anthropic import refusal

    receiver = Receiver()
    secret = "whsec-" + uuid.uuid4().hex
    env = {
        **backend_env,
        "ORCHESTRA_NOTIFY__WEBHOOK_URL": receiver.url,
        "ORCHESTRA_WEBHOOK_SECRET": secret,
    }
    fake.script(tool_use("Bash", {"command": "make deploy"}), refusal())
    try:
        with processes() as procs:
            deployment = Deployment(fake, tmp_path, procs, env=env, role="careful")
            asks = deployment.submit("deploy it", "--capability", "careful")
            wait_until(lambda: deployment.task(asks)["status"] == "blocked", timeout=30)
            refused = deployment.submit("something it refuses", "--capability", "careful")
            deployment.finished(refused)

            def both() -> bool:
                kinds = {(e["type"], e["task_id"]) for e in receiver.events()}
                return {("inbox", asks), ("tree_failed", refused)} <= kinds

            wait_until(both, timeout=30, what="the webhook events")
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
    assert len(receiver.got) >= 3  # the first delivery was answered 500 and sent again
    for headers, body in receiver.got:
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-orchestra-signature"], expected)
        assert headers["x-orchestra-event"] == json.loads(body)["type"]
    inbox = next(e for e in receiver.events() if e["type"] == "inbox")
    assert inbox["kind"] == "approval" and "Bash(make deploy)" in inbox["waits_for"]
    assert secret not in "".join(p.output() for p in procs)  # never in a log


def test_a_plan_under_review_spends_nothing_until_approved_and_can_be_edited_or_rejected(
    fake: FakeAnthropic, tmp_path: Path, backend_env: dict[str, str]
) -> None:
    import json

    with processes() as procs:
        deployment = Deployment(fake, tmp_path, procs, env=backend_env, role="coder")
        env, cwd = deployment.env, deployment.cwd
        root = deployment.submit("design and build an API", "--review-plan")
        wait_until(lambda: deployment.task(root)["status"] == "blocked", timeout=30)
        time.sleep(1.0)
        assert len(fake.requests) == 1  # the plan call; nothing of the plan has run
        assert deployment.cli("task", "get", root)["subtasks"] == []
        inbox = deployment.cli("inbox")
        assert [(i["kind"], i["task_id"]) for i in inbox] == [("plan", root)]
        shown = deployment.cli("task", "plan", root)
        assert [s["title"] for s in shown["subtasks"]] == ["Design it", "Build it"]
        # the operator keeps only the build step (no architect runs here)
        edited = {"decompose": False, "reason": "just build it", "capability": "code"}
        plan_file = tmp_path / "plan.json"
        plan_file.write_text(json.dumps(edited))
        bad_file = tmp_path / "bad.json"
        bad_file.write_text(json.dumps({**edited, "capability": "magic"}))
        bad = run_orchestra(["task", "plan", root, "--set", str(bad_file)], env, cwd)
        good = run_orchestra(["task", "plan", root, "--set", str(plan_file)], env, cwd)
        assert good.code == 0, good
        approved = run_orchestra(["task", "approve", root], env, cwd)
        assert approved.code == 0, approved
        done = deployment.finished(root)
        # a second tree: its plan is rejected with a reason and planned again with it
        other = deployment.submit("design and build a CLI", "--review-plan")
        wait_until(lambda: deployment.task(other)["status"] == "blocked", timeout=30)
        asked = len(fake.requests)
        rejected = run_orchestra(
            ["task", "reject", other, "--reason", "no design step, please"], env, cwd
        )
        assert rejected.code == 0, rejected
        wait_until(lambda: len(fake.requests) > asked, timeout=30, what="the plan again")
        wait_until(lambda: deployment.task(other)["status"] == "blocked", timeout=30)
    assert bad.code == 2 and "unknown capability 'magic'" in bad.err
    assert done["status"] == "succeeded", done
    assert done["capability"] == "code"  # routed whole, as the edited plan said
    replanned = fake.requests[asked]["body"]["messages"][0]["content"]
    assert "no design step, please" in json.dumps(replanned)
