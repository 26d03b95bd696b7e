"""MCP servers through the real SDK: PyPI's mcp-server-time and mcp-server-git, and
one written here (tests/tools/mcp_test_server.py), over stdio and streamable HTTP."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestra_cli.errors import TaskCancelled
from orchestra_cli.tools.config import McpServerConfig
from orchestra_cli.tools.mcp import McpServerError, McpServers, expand
from tests.support import service_reachable, wait_until
from tests.tools.conftest import CancelLater

pytestmark = pytest.mark.integration
TEST_SERVER = str(Path(__file__).with_name("mcp_test_server.py"))
BIN = Path(sys.executable).parent


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def children() -> set[int]:
    """Pids of this process's live children."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().split(")")[-1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid() and fields[0] != "Z":
                found.add(int(entry.name))
    return found


@pytest.fixture(scope="module")
def servers() -> Iterator[McpServers]:
    """The test server (stdio) and mcp-server-time, started once for the module."""
    mcp = McpServers(
        {
            "t": McpServerConfig(
                command=sys.executable,
                args=[TEST_SERVER],
                env={"FROM_CONFIG": "${ORCHESTRA_TEST_MCP_VALUE:-fallback}"},
            ),
            "time": McpServerConfig(command=str(BIN / "mcp-server-time")),
        },
        environ={"ORCHESTRA_TEST_MCP_VALUE": "expanded", "PATH": os.environ["PATH"]},
    )
    mcp.start()
    yield mcp
    mcp.close()


def test_expand_reads_variables_with_defaults_as_claude_code_does() -> None:
    env = {"A": "1"}
    assert expand("${A}-${B:-two}-${C}", env) == "1-two-"


def test_tools_are_offered_as_mcp_server_tool_with_the_servers_schema(
    servers: McpServers,
) -> None:
    tools = {tool.name: tool for tool in servers.tools()}
    assert {"mcp__t__echo", "mcp__t__add", "mcp__time__get_current_time"} <= set(tools)
    echo = tools["mcp__t__echo"]
    assert echo.input_schema["properties"]["text"]["type"] == "string"
    assert echo.input_schema["required"] == ["text"]
    assert echo.idempotent and not tools["mcp__t__add"].idempotent  # the read-only hint
    assert not any("far_too_long" in name for name in tools)  # over the API's 64 characters


def test_a_call_returns_the_tools_text(servers: McpServers) -> None:
    assert servers.call("mcp__t__add", {"a": 2, "b": 3}, timeout=10).content == "5"
    out = servers.call("mcp__time__get_current_time", {"timezone": "UTC"}, timeout=10)
    assert not out.is_error and '"timezone": "UTC"' in out.content


def test_a_stdio_server_gets_its_config_env_expanded_and_no_secrets(
    servers: McpServers,
) -> None:
    assert servers.call("mcp__t__environment", {"name": "FROM_CONFIG"}, timeout=10).content == (
        "expanded"
    )
    out = servers.call("mcp__t__environment", {"name": "ORCHESTRA_TEST_MCP_VALUE"}, timeout=10)
    assert out.content == "(unset)"


def test_tool_errors_and_bad_input_are_error_results(servers: McpServers) -> None:
    out = servers.call("mcp__t__fail", {"reason": "x"}, timeout=10)
    assert out.is_error and "fail" in out.content
    out = servers.call("mcp__t__add", {"a": "not a number"}, timeout=10)
    assert out.is_error and "validation error" in out.content
    out = servers.call("mcp__time__get_current_time", {"timezone": "Nowhere/Nothing"}, timeout=10)
    assert out.is_error and "Invalid timezone" in out.content


def test_unknown_names_are_error_results(servers: McpServers) -> None:
    assert servers.call("mcp__nosuch__x", {}, timeout=5).is_error
    assert servers.call("mcp__t__nosuch", {}, timeout=5).is_error
    assert servers.call("Bash", {}, timeout=5).is_error


def test_a_call_past_its_time_limit_is_an_error_result(servers: McpServers) -> None:
    started = time.monotonic()
    out = servers.call("mcp__t__slow", {"seconds": 5}, timeout=0.5)
    assert out.is_error and "timed out after 0.5 s" in out.content
    assert time.monotonic() - started < 2
    assert servers.call("mcp__t__echo", {"text": "still here"}, timeout=10).content == "still here"


def test_cancel_stops_waiting_for_a_call_within_a_second(servers: McpServers) -> None:
    cancel = CancelLater(0.2)
    with pytest.raises(TaskCancelled):
        servers.call("mcp__t__slow", {"seconds": 5}, timeout=10, cancel=cancel.event)
    assert cancel.since() < 1.0


def test_a_killed_server_is_restarted_and_the_next_call_works(servers: McpServers) -> None:
    pid = int(servers.call("mcp__t__pid", {}, timeout=10).content)
    restarts = servers.restarts("t")
    os.kill(pid, 9)
    wait_until(lambda: not alive(pid), timeout=5, what="the server to die")
    out = servers.call("mcp__t__pid", {}, timeout=20)
    assert not out.is_error and int(out.content) != pid
    assert servers.restarts("t") == restarts + 1


def test_a_server_that_died_while_idle_serves_the_next_call_of_any_tool(
    servers: McpServers,
) -> None:
    pid = int(servers.call("mcp__t__pid", {}, timeout=10).content)
    restarts = servers.restarts("t")
    os.kill(pid, 9)
    wait_until(lambda: servers.restarts("t") > restarts, timeout=5, what="the restart")
    assert servers.call("mcp__t__add", {"a": 1, "b": 1}, timeout=20).content == "2"


def test_a_call_in_flight_when_its_server_dies_is_an_error_result(servers: McpServers) -> None:
    pid = int(servers.call("mcp__t__pid", {}, timeout=10).content)
    threading.Timer(0.3, os.kill, (pid, 9)).start()
    out = servers.call("mcp__t__slow", {"seconds": 5}, timeout=10)
    assert out.is_error and "MCP server t" in out.content
    assert servers.call("mcp__t__echo", {"text": "back"}, timeout=20).content == "back"


def test_closing_stops_every_server_process() -> None:
    mcp = McpServers(
        {
            "a": McpServerConfig(command=sys.executable, args=[TEST_SERVER]),
            "b": McpServerConfig(command=sys.executable, args=[TEST_SERVER]),
        }
    )
    mcp.start()
    pids = {int(mcp.call(f"mcp__{name}__pid", {}, timeout=10).content) for name in "ab"}
    assert len(pids) == 2 and pids <= children()
    started = time.monotonic()
    mcp.close()
    assert time.monotonic() - started < 5
    assert not any(alive(pid) for pid in pids)
    assert not pids & children()  # reaped, not left as zombies


def test_a_server_that_cannot_start_fails_with_its_name_and_stderr() -> None:
    crash = McpServerConfig(
        command=sys.executable,
        args=["-c", "import sys; sys.stderr.write('boom at start'); sys.exit(3)"],
        startup_timeout=10,
    )
    with pytest.raises(McpServerError) as caught:
        McpServers({"broken": crash}).start()
    assert "MCP server 'broken' did not start" in caught.value.message
    assert "boom at start" in caught.value.message
    assert "mcp_servers.broken" in str(caught.value.hint)


def test_a_missing_command_fails_with_the_servers_name() -> None:
    missing = McpServerConfig(command="/nonexistent/mcp-server", startup_timeout=5)
    with pytest.raises(McpServerError, match="'gone' did not start"):
        McpServers({"gone": missing}).start()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=Test"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "a.txt").write_text("a\n")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first commit"], check=True)
    (repo / "b.txt").write_text("untracked\n")
    return repo


def test_mcp_server_git_reports_status_and_log_of_a_throwaway_repository(repo: Path) -> None:
    config = McpServerConfig(command=str(BIN / "mcp-server-git"), args=["--repository", str(repo)])
    mcp = McpServers({"git": config})
    mcp.start()
    try:
        status = mcp.call("mcp__git__git_status", {"repo_path": str(repo)}, timeout=20)
        assert not status.is_error and "b.txt" in status.content
        log = mcp.call("mcp__git__git_log", {"repo_path": str(repo), "max_count": 5}, timeout=20)
        assert not log.is_error and "first commit" in log.content
        assert {t.name for t in mcp.tools()} >= {"mcp__git__git_status", "mcp__git__git_commit"}
    finally:
        mcp.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def http_server() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, TEST_SERVER, "--http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        listening = lambda: service_reachable("127.0.0.1", port)  # noqa: E731
        wait_until(listening, timeout=20, what="the MCP HTTP server")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()
        proc.wait()


def test_a_streamable_http_server_is_called_like_a_stdio_one(http_server: str) -> None:
    config = McpServerConfig(
        type="http", url=http_server, headers={"X-Client": "${ORCHESTRA_TEST_CLIENT:-orchestra}"}
    )
    mcp = McpServers({"web": config})
    mcp.start()
    try:
        assert "mcp__web__echo" in {tool.name for tool in mcp.tools()}
        out = mcp.call("mcp__web__echo", {"text": "over http"}, timeout=10)
        assert (out.content, out.is_error) == ("over http", False)
        assert mcp.call("mcp__web__fail", {"reason": "x"}, timeout=10).is_error
    finally:
        mcp.close()


def test_the_mcp_sdk_is_not_imported_by_the_role_loader() -> None:
    code = (
        "import sys; from orchestra_cli.engine.roles import load_roles; load_roles(); "
        "print('mcp' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_pypi_servers_are_installed_by_the_dev_extra() -> None:
    assert shutil.which("mcp-server-time", path=str(BIN))
    assert shutil.which("mcp-server-git", path=str(BIN))
