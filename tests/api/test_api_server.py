"""The API as deployed: a real `orchestra api serve`, a real orchestrator, real HTTP and WebSocket
clients (httpx, websockets), all on one embedded SQLite home."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.support import Proc, clean_env, processes, run_orchestra, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "api-test-token-" + "0123456789abcdef" * 2  # 32+ characters, as serve asks
AUTH = {"Authorization": f"Bearer {TOKEN}"}
URL_LINE = re.compile(r"^(http://127\.0\.0\.1:\d+)$", re.MULTILINE)


@dataclass
class Api:
    url: str
    env: dict[str, str]
    tmp: Path
    procs: list[Proc]
    http: httpx.Client

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    def start(self, *args: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(list(args), env or self.env, self.tmp, self.tmp / f"proc-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def submit(self, **body: Any) -> dict[str, Any]:
        r = self.http.post("/v1/tasks", json=body, headers=AUTH)
        assert r.status_code == 201, r.text
        return r.json()["task"]  # type: ignore[no-any-return]


def _start_server(api_env: dict[str, str], tmp: Path, procs: list[Proc], *extra: str) -> str:
    proc = Proc(["api", "serve", "--port", "0", *extra], api_env, tmp, tmp / "api.log")
    procs.append(proc)

    def listening() -> str | None:
        assert proc.popen.poll() is None, proc.output()
        found = URL_LINE.search(proc.output())
        return found.group(1) if found else None

    return wait_until(listening, timeout=20, what="the API to listen")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("api")
    env = clean_env(
        {
            "ORCHESTRA_HOME": str(tmp / "home"),
            "ORCHESTRA_API_TOKEN": TOKEN,
            "ORCHESTRA_AGENTS__HEARTBEAT_SECONDS": "0.3",
            "ORCHESTRA_AGENTS__TTL_SECONDS": "1.5",
            "PYTHONUNBUFFERED": "1",
        }
    )
    with processes() as procs:
        url = _start_server(env, tmp, procs)
        with httpx.Client(base_url=url, timeout=10) as http:
            yield Api(url, env, tmp, procs, http)
        assert procs[0].stop(signal.SIGTERM) == 0, procs[0].output()


def _receive_all(ws: ClientConnection, timeout: float = 60) -> list[dict[str, Any]]:
    """Every message until the server closes the stream."""
    messages = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            messages.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
    except ConnectionClosed:
        return messages


def test_requests_without_or_with_a_wrong_token_are_401_but_health_is_open(api: Api) -> None:
    assert api.http.get("/v1/tasks").status_code == 401
    wrong = api.http.get("/v1/tasks", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["hint"]
    health = api.http.get("/v1/health")
    assert health.status_code == 200 and health.json()["healthy"] is True


def test_unknown_ids_are_404_and_empty_text_is_422_as_json_errors(api: Api) -> None:
    missing = api.http.get("/v1/tasks/0000-no-such-task", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json() == {
        "error": "task 0000-no-such-task not found",
        "hint": "GET /v1/tasks lists known ids",  # worded for the API, not the CLI
    }
    empty = api.http.post("/v1/tasks", json={"text": " \n"}, headers=AUTH)
    assert empty.status_code == 422 and empty.json()["error"] == "task text is empty"


def test_a_task_is_cancelled_retried_and_listed_through_the_api(api: Api) -> None:
    # no orchestrator runs in this test, so the task stays pending until cancelled
    task = api.submit(text="refactor the billing module", labels={"team": "core"})
    cancelled = api.http.post(f"/v1/tasks/{task['id']}/cancel", headers=AUTH)
    assert cancelled.status_code == 200 and cancelled.json() == {"cancelled": [task["id"]]}
    got = api.http.get(f"/v1/tasks/{task['id']}", headers=AUTH).json()
    assert got["status"] == "cancelled" and got["subtasks"] == [] and "tree_usage" in got
    retried = api.http.post(f"/v1/tasks/{task['id']}/retry", headers=AUTH)
    assert retried.status_code == 200 and retried.json()["status"] == "pending"
    listed = api.http.get("/v1/tasks", params={"status": "pending", "limit": 100}, headers=AUTH)
    assert task["id"] in [t["id"] for t in listed.json()]


def test_submitted_task_is_followed_over_a_websocket_until_it_succeeds(api: Api) -> None:
    run_env = {**api.env, "ORCHESTRA_LLM__OFFLINE__LATENCY_MS": "200"}
    run = api.start("run", "--agents", "all", env=run_env)
    try:
        _follow_a_multi_step_task(api)
    finally:  # the other tests rely on no orchestrator picking their tasks up
        run.stop()


def _follow_a_multi_step_task(api: Api) -> None:
    task = api.submit(text="Design, implement and deploy a todo API, then review it")
    with connect(f"{api.ws_url}/v1/tasks/{task['id']}/events", additional_headers=AUTH) as ws:
        messages = _receive_all(ws)
    *events, end = messages
    assert end["type"] == "end" and end["status"] == "succeeded", messages
    root = [e["type"] for e in events if e["task_id"] == task["id"]]
    assert root[0] == "created" and "waiting" in root and root[-1] == "succeeded"
    subtasks = {e["task_id"] for e in events} - {task["id"]}
    assert len(subtasks) == 4
    for sub in subtasks:
        kinds = [e["type"] for e in events if e["task_id"] == sub]
        assert kinds[0] == "created" and kinds.index("running") < kinds.index("succeeded")
    # nothing missed: the stream is exactly the tree's event log, in order
    log = api.http.get("/v1/events", params={"root_id": task["id"]}, headers=AUTH).json()
    assert [e["seq"] for e in events] == [e["seq"] for e in log["events"]]
    assert [e["seq"] for e in events] == sorted({e["seq"] for e in events})

    # a late client replays from ?after= (token in the query), then gets the end at once
    after = events[2]["seq"]
    with connect(f"{api.ws_url}/v1/ws/tasks/{task['id']}?after={after}&token={TOKEN}") as ws:
        replayed = _receive_all(ws, timeout=10)
    assert [e["seq"] for e in replayed[:-1]] == [e["seq"] for e in events[3:]]
    assert replayed[-1]["status"] == "succeeded"

    got = api.http.get(f"/v1/tasks/{task['id']}", headers=AUTH).json()
    assert got["status"] == "succeeded" and len(got["subtasks"]) == 4
    agents = api.http.get("/v1/agents", headers=AUTH).json()
    assert {"architect", "coder", "infra", "reviewer"} <= {a["role"] for a in agents}


def test_server_without_a_token_refuses_to_start_in_one_line(tmp_path: Path) -> None:
    env = clean_env({"ORCHESTRA_HOME": str(tmp_path / "home")})
    result = run_orchestra(["api", "serve", "--port", "0"], env, tmp_path)
    assert result.code == 2, result
    assert result.err.count("\n") == 1 and "ORCHESTRA_API_TOKEN" in result.err
    assert "--insecure" in result.err
    public = run_orchestra(["api", "serve", "--insecure", "--host", "0.0.0.0"], env, tmp_path)
    assert public.code == 2 and "only on 127.0.0.1" in public.err


def test_ctrl_c_stops_the_server_and_closes_open_websockets(tmp_path: Path) -> None:
    env = clean_env({"ORCHESTRA_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"})
    with processes() as procs:
        url = _start_server(env, tmp_path, procs, "--insecure")
        with httpx.Client(base_url=url) as http:
            task_id = http.post("/v1/tasks", json={"text": "wait forever"}).json()["task"]["id"]
        ws_url = "ws" + url.removeprefix("http")
        with connect(f"{ws_url}/v1/tasks/{task_id}/events") as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "created"
            started = time.monotonic()
            assert procs[0].stop(signal.SIGINT, timeout=15) == 130, procs[0].output()
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
        assert time.monotonic() - started < 10


def test_api_help_imports_neither_fastapi_nor_uvicorn() -> None:
    code = (
        "import sys\n"
        "from orchestra_cli.cli.main import run_cli\n"
        "assert run_cli(['api', 'serve', '--help']) == 0\n"
        "heavy = [m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY="


def _raw(api: Api, head: str, chunks: list[bytes]) -> tuple[bytes, float]:
    """Send a request's head and then body chunks on a raw socket for as long as the
    server reads them; its answer, and how long it took from the head."""
    import socket

    host, port = api.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        sock.settimeout(0.5)
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:  # the server has answered and closed: it reads no more
            pass
        sock.settimeout(10)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            got = sock.recv(65536)
            if not got:
                break
            answer += got
        return answer, time.monotonic() - started


def test_a_body_over_the_limit_is_refused_from_content_length_before_it_is_read(
    api: Api,
) -> None:
    head = (
        "POST /v1/tasks HTTP/1.1\nHost: x\nContent-Type: application/json\n"
        f"Authorization: Bearer {TOKEN}\nContent-Length: 60000000\n"
    )
    answer, took = _raw(api, head, [b'{"text": "'])  # 10 of the 60 MB announced
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 413"), answer[:300]
    error = json.loads(body)
    assert "7,048,576-byte limit" in error["error"] and "tasks.max_input_bytes" in error["hint"]
    assert took < 2, took  # answered at once, not after reading 60 MB


def test_a_chunked_body_is_cut_off_at_the_limit_with_413(api: Api) -> None:
    head = (
        "POST /v1/tasks HTTP/1.1\nHost: x\nContent-Type: application/json\n"
        f"Authorization: Bearer {TOKEN}\nTransfer-Encoding: chunked\n"
    )
    mib = b"x" * (1 << 20)
    chunk = f"{len(mib):x}\r\n".encode() + mib + b"\r\n"
    # 12 MiB and never the last chunk: only a server that stops at the limit answers
    answer, _ = _raw(api, head, [b'b\r\n{"text": "x\r\n'] + [chunk] * 12)
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 413"), answer[:300]
    assert "byte limit" in json.loads(body)["error"]


def test_conflicts_with_a_tasks_state_are_409_with_hints_for_the_api(api: Api) -> None:
    task = api.submit(text="never runs: no orchestrator in this test")
    assert api.http.post(f"/v1/tasks/{task['id']}/cancel", headers=AUTH).status_code == 200
    again = api.http.post(f"/v1/tasks/{task['id']}/cancel", headers=AUTH)
    assert again.status_code == 409 and "already cancelled" in again.json()["error"]
    assert api.http.post(f"/v1/tasks/{task['id']}/retry", headers=AUTH).status_code == 200
    twice = api.http.post(f"/v1/tasks/{task['id']}/retry", headers=AUTH)
    assert twice.status_code == 409, twice.text
    hint = twice.json()["hint"]
    assert f"POST /v1/tasks/{task['id']}/retry?note=" in hint and "--" not in hint
    unknown = api.http.post("/v1/tasks/00000000/retry", headers=AUTH).json()["hint"]
    paused = api.http.post(f"/v1/tasks/{task['id']}/resume", headers=AUTH)
    assert paused.status_code == 409 and paused.json()["hint"] == "GET /v1/inbox lists paused trees"
    for words in (unknown, paused.json()["hint"]):
        assert "orchestra " not in words and "--" not in words, words
    doc = api.http.get("/v1/openapi.json", headers=AUTH).json()
    retry = doc["paths"]["/v1/tasks/{task_id}/retry"]["post"]["responses"]
    assert {"409", "413"} <= set(retry)
    assert "413" in doc["paths"]["/v1/tasks"]["post"]["responses"]


def test_refused_websockets_are_no_server_errors_and_each_request_logs_one_access_line(
    api: Api,
) -> None:
    for url in (
        f"{api.ws_url}/v1/tasks/whatever/events?token=wrong-{TOKEN}",
        f"{api.ws_url}/v1/tasks/0000feed/events?after=0&token={TOKEN}",
    ):
        with pytest.raises(InvalidStatus) as refused:
            with connect(url):
                pass
        assert refused.value.response.status_code in (401, 404)
    api.http.get("/v1/tasks/0000c0de", headers=AUTH)
    log = api.tmp / "home" / "logs" / "api.log"

    def access() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        return [x for x in lines if x["logger"] == "orchestra_cli.api.access"]

    wait_until(lambda: any("0000c0de" in x["path"] for x in access()), timeout=10)
    lines = access()
    mine = [x for x in lines if "0000c0de" in x["path"]]
    assert len(mine) == 1 and mine[0]["method"] == "GET" and mine[0]["status"] == 404
    assert isinstance(mine[0]["duration_ms"], float)
    denied = [x for x in lines if "whatever" in x["path"] or "0000feed" in x["path"]]
    assert [x["status"] for x in denied] == [401, 404]
    assert denied[1]["path"] == "/v1/tasks/0000feed/events?after=0&token=***"
    assert TOKEN not in log.read_text()
    server = api.procs[0].output()  # the server's own stderr and stdout
    for noise in ("ASGI", "Traceback", "ERROR", "handshake"):
        assert noise not in server, server


def test_agents_have_one_liveness_field_and_dead_ones_show_only_with_all(api: Api) -> None:
    agent = api.start("agent", "start", "coder", "--name", "coder-doomed")

    def listed() -> list[dict[str, Any]]:
        return api.http.get("/v1/agents", headers=AUTH).json()  # type: ignore[no-any-return]

    def running() -> dict[str, Any] | None:
        found = [a for a in listed() if a["name"] == "coder-doomed" and a["state"] == "running"]
        return found[0] if found else None

    assert "status" not in wait_until(running, timeout=60, what="coder-doomed running")
    agent.kill9()
    wait_until(lambda: all(a["name"] != "coder-doomed" for a in listed()), timeout=20)
    everyone = api.http.get("/v1/agents", params={"all": "true"}, headers=AUTH).json()
    dead = next(a for a in everyone if a["name"] == "coder-doomed")
    assert dead["state"] == "dead" and "status" not in dead
    cli = run_orchestra(["--json", "agent", "list", "--all"], api.env, api.tmp)
    assert next(a for a in json.loads(cli.out) if a["name"] == "coder-doomed")["state"] == "dead"
    default = run_orchestra(["agent", "list"], api.env, api.tmp)
    assert "coder-doomed" not in default.out and "dead agent(s) not shown" in default.err
