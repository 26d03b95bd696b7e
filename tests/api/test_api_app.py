"""The API app in-process (FastAPI's TestClient): auth, error mapping, the event stream."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse

from orchestra_cli.api.app import create_app
from orchestra_cli.backends import Backends
from orchestra_cli.engine.roles import load_roles
from orchestra_cli.engine.service import SubmitRequest, TaskService
from orchestra_cli.errors import StateUnavailable
from orchestra_cli.models import AgentRecord

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(backends: Backends) -> Iterator[TestClient]:
    with TestClient(create_app(backends, load_roles(), token=TOKEN)) as c:
        yield c


def test_every_route_but_health_needs_the_token(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        r = client.get("/v1/tasks", headers=headers)
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer"
        assert set(r.json()) == {"error", "hint"}
    assert client.post("/v1/tasks", json={"text": "x"}).status_code == 401
    assert client.get("/v1/openapi.json").status_code == 401
    assert client.get("/v1/openapi.json", headers=AUTH).json()["info"]["title"] == "orchestra"
    assert client.get("/v1/tasks", headers=AUTH).json() == []


def test_health_is_open_but_says_only_healthy_or_not_without_the_token(
    client: TestClient,
) -> None:
    r = client.get("/v1/health")
    assert r.status_code == 200 and r.json() == {"healthy": True}  # no paths, hosts, pids
    detailed = client.get("/v1/health", headers=AUTH).json()
    assert all("details" in c and c["summary"] for c in detailed["checks"])
    strict = client.get("/v1/health?strict=true&check=agents")  # no live agent: a warning
    assert strict.status_code == 503 and strict.json() == {"healthy": False}
    assert client.get("/v1/health?check=bogus").status_code == 422


def test_the_llm_check_calls_out_so_it_needs_the_token(client: TestClient) -> None:
    assert client.get("/v1/health?check=llm").status_code == 401
    assert client.get("/v1/health?check=state,llm").status_code == 401
    assert client.get("/v1/health?check=bogus,llm").status_code == 401  # the token first
    got = client.get("/v1/health?check=llm", headers=AUTH)
    assert got.status_code == 200, got.text
    assert [c["name"] for c in got.json()["checks"]] == ["llm"]


def test_submit_is_201_then_200_for_the_same_idempotency_key(client: TestClient) -> None:
    body = {"text": "write a haiku", "idempotency_key": "k1", "budget": {"usd": 0.5}}
    first = client.post("/v1/tasks", json=body, headers=AUTH)
    assert first.status_code == 201 and first.json()["created"] is True
    task = first.json()["task"]
    assert task["labels"] == {"budget_usd": "0.5"} and task["status"] == "pending"
    again = client.post("/v1/tasks", json=body, headers=AUTH)
    assert again.status_code == 200 and again.json() == {"created": False, "task": task}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"text": "   "}, "task text is empty"),
        ({"text": "x", "priority": 42}, "priority 42 is out of range"),
        ({"text": "x", "capability": "juggling"}, "unknown capability"),
        ({}, "text: Field required"),
        ({"text": "x", "budget": {"usd": -1}}, "budget.usd"),
        ({"text": "x", "colour": "red"}, "colour: Extra inputs"),
    ],
)
def test_bad_submissions_are_422_with_what_failed_and_what_to_do(
    client: TestClient, body: dict[str, object], words: str
) -> None:
    r = client.post("/v1/tasks", json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    assert words in r.json()["error"] and r.json()["hint"]


def test_unknown_ids_are_404_json_errors(client: TestClient) -> None:
    for method, path in (
        ("GET", "/v1/tasks/nope"),
        ("POST", "/v1/tasks/nope/cancel"),
        ("POST", "/v1/tasks/nope/retry"),
        ("GET", "/v1/agents/ghost"),
        ("POST", "/v1/agents/ghost/stop"),
        ("GET", "/v2/anything"),
    ):
        r = client.request(method, path, headers=AUTH)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"] and r.json()["hint"], path


def test_cancel_then_retry_and_conflicts_with_the_tasks_state_as_409(client: TestClient) -> None:
    task_id = client.post("/v1/tasks", json={"text": "t"}, headers=AUTH).json()["task"]["id"]
    assert client.post(f"/v1/tasks/{task_id}/retry", headers=AUTH).status_code == 409
    cancelled = client.post(f"/v1/tasks/{task_id}/cancel", headers=AUTH)
    assert cancelled.json() == {"cancelled": [task_id]}
    again = client.post(f"/v1/tasks/{task_id}/cancel", headers=AUTH)
    assert again.status_code == 409 and "already cancelled" in again.json()["error"]
    retried = client.post(f"/v1/tasks/{task_id}/retry", headers=AUTH).json()
    assert retried["status"] == "pending" and retried["attempts"] == 0
    listed = client.get("/v1/tasks?status=pending,cancelled&roots=true", headers=AUTH).json()
    assert [t["id"] for t in listed] == [task_id]
    assert client.get("/v1/tasks?status=bogus", headers=AUTH).status_code == 422
    assert client.get("/v1/tasks?since=yesterday-ish", headers=AUTH).status_code == 422


def test_an_unreachable_state_store_is_503(
    client: TestClient, backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*args: object, **kwargs: object) -> None:
        raise StateUnavailable("cannot reach Redis at redis://127.0.0.1:6379/0", "start it")

    monkeypatch.setattr(backends.state, "get_task", down)
    r = client.get("/v1/tasks/anything", headers=AUTH)
    assert r.status_code == 503
    assert r.json() == {
        "error": "cannot reach Redis at redis://127.0.0.1:6379/0",
        "hint": "start it",
    }


def test_agents_are_listed_and_asked_to_stop(client: TestClient, backends: Backends) -> None:
    backends.state.save_agent(
        AgentRecord(name="c1", role="coder", capabilities=["code"], status="running")
    )
    assert [a["name"] for a in client.get("/v1/agents", headers=AUTH).json()] == ["c1"]
    stopped = client.post("/v1/agents/c1/stop", headers=AUTH)
    assert stopped.status_code == 202 and stopped.json()["state"] == "stopping"
    assert client.get("/v1/agents/c1", headers=AUTH).json()["stop_requested"] is True


def test_event_stream_replays_a_finished_tree_and_ends(
    client: TestClient, backends: Backends
) -> None:
    service = TaskService(backends, load_roles())
    task, _ = service.submit(SubmitRequest(text="soon cancelled"))
    service.cancel(task.id)
    with client.websocket_connect(f"/v1/ws/tasks/{task.id}?token={TOKEN}") as ws:
        first, second, end = ws.receive_json(), ws.receive_json(), ws.receive_json()
    assert [first["type"], second["type"]] == ["created", "cancelled"]
    assert second["seq"] > first["seq"]
    assert end["type"] == "end" and end["status"] == "cancelled"
    assert end["task"]["id"] == task.id
    polled = client.get(f"/v1/events?after={first['seq']}", headers=AUTH).json()
    assert [e["type"] for e in polled["events"]] == ["cancelled"]
    assert polled["last_seq"] == second["seq"]


def test_event_stream_refuses_a_bad_token_and_an_unknown_task(client: TestClient) -> None:
    with pytest.raises(WebSocketDenialResponse) as denied:
        with client.websocket_connect("/v1/tasks/whatever/events?token=wrong"):
            pass
    assert denied.value.status_code == 401
    with pytest.raises(WebSocketDenialResponse) as missing:
        with client.websocket_connect("/v1/tasks/nope/events", headers=AUTH):
            pass
    assert missing.value.status_code == 404 and "not found" in missing.value.json()["error"]


def _blocked_on_a_call(backends: Backends) -> str:
    """A task an agent parked for approval of a Bash call, as the loop leaves it."""
    from orchestra_cli.models import Task
    from orchestra_cli.status import Status

    state = backends.state
    task, _ = state.create_task(Task(title="deploy", input="d", capability="code"))
    state.transition(task.id, Status.QUEUED)
    running, _ = state.claim(task.id, "coder-1")
    blocks = [{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "x"}}]
    steps = [
        {"kind": "prompt", "system": "s", "prefix": "", "prompt": "p"},
        {"kind": "model", "blocks": blocks, "stop_reason": "tool_use", "usage": {}},
        {"kind": "awaiting_approval", "call_id": "toolu_1", "name": "Bash", "input": "x"},
    ]
    for n, step in enumerate(steps):
        state.record_step(task.id, task.id, n, step, {})
    state.transition(task.id, Status.BLOCKED, expect_version=running.version)
    return task.id


def test_the_inbox_approve_and_transcript_routes_answer_as_the_cli_does(
    client: TestClient, backends: Backends
) -> None:
    task_id = _blocked_on_a_call(backends)
    inbox = client.get("/v1/inbox", headers=AUTH)
    assert inbox.status_code == 200
    assert [(i["kind"], i["task_id"], i["tool"], i["step"]) for i in inbox.json()] == [
        ("approval", task_id, "Bash", 2)
    ]
    wrong = client.post(f"/v1/tasks/{task_id}/approve", json={"step": 7}, headers=AUTH)
    assert wrong.status_code == 422 and "no call waiting at step 7" in wrong.json()["error"]
    no_reason = client.post(f"/v1/tasks/{task_id}/reject", json={"reason": ""}, headers=AUTH)
    assert no_reason.status_code == 422
    approved = client.post(f"/v1/tasks/{task_id}/approve", json={"step": 2}, headers=AUTH)
    assert approved.status_code == 200 and approved.json()["status"] == "queued"
    again = client.post(f"/v1/tasks/{task_id}/approve", headers=AUTH)
    assert again.status_code == 409 and "waits for no approval" in again.json()["error"]
    assert again.json()["hint"] == "GET /v1/inbox lists what waits for a person"
    steps = client.get(f"/v1/tasks/{task_id}/transcript", headers=AUTH).json()["steps"]
    assert [s["kind"] for s in steps][-1] == "approval"
    assert client.get(f"/v1/tasks/{task_id}/files", headers=AUTH).json()["files"] == []
    assert client.get("/v1/inbox", headers=AUTH).json() == []


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("   ", False),
        ("\ufeff\u3000\t", False),  # blanks to JSON Schema (ECMA-262's \s)
        ("\x1f", True),  # blank to Python's str.strip, not to the document: accepted
        ("\x85", True),
        ("k1", True),
    ],
)
def test_blank_is_what_the_openapi_document_says_it_is(
    client: TestClient, value: str, valid: bool
) -> None:
    import json
    import re

    from orchestra_cli.util import NOT_BLANK

    doc = client.get("/v1/openapi.json", headers=AUTH).text
    patterns = set(re.findall(r'"pattern":\s*("(?:[^"\\]|\\.)*")', doc))
    assert json.dumps(NOT_BLANK) in patterns and json.dumps(r"\S") not in patterns
    assert (re.search(NOT_BLANK, value) is not None) == valid
    got = client.post(
        "/v1/tasks", json={"text": f"t{value}", "idempotency_key": value}, headers=AUTH
    )
    assert got.status_code == (201 if valid else 422), got.text
    text = client.post("/v1/tasks", json={"text": value}, headers=AUTH)
    assert text.status_code == (201 if valid else 422), text.text
