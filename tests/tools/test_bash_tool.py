"""Bash in the bubblewrap sandbox (real bwrap, real processes) and unsandboxed."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestra_cli.errors import TaskCancelled
from orchestra_cli.logs import register_secret
from orchestra_cli.tools import bash as bash_module
from orchestra_cli.tools.base import Limits, Sandbox, ToolContext, half_the_memory
from orchestra_cli.tools.bash import Bash
from orchestra_cli.tools.config import SandboxConfig
from orchestra_cli.tools.toolbox import Toolbox
from tests.tools.conftest import CancelLater

pytestmark = pytest.mark.integration


def processes_with(marker: str) -> list[int]:
    """Pids whose command line contains ``marker`` (this test's own sleeps)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline and "pytest" not in cmdline:
            found.append(int(entry.name))
    return found


def unique_seconds(whole: str) -> str:
    """A sleep length no other process on the machine is likely to use (to find ours)."""
    return f"{whole}.{time.monotonic_ns() % 100000}"


def gone(marker: str, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while processes_with(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts connections (outside any sandbox)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


def run(ctx: ToolContext, command: str, **extra: object) -> tuple[str, bool]:
    out = Bash().run({"command": command, **extra}, ctx)
    return out.content, out.is_error


def test_sandboxed_bash_runs_in_the_workspace(sandboxed: ToolContext) -> None:
    content, failed = run(sandboxed, "pwd; echo hello")
    assert not failed
    assert content.splitlines() == [str(sandboxed.workspace.resolve()), "hello"]


def test_the_sandboxed_system_is_read_only_and_the_workspace_writable(
    sandboxed: ToolContext,
) -> None:
    content, failed = run(sandboxed, "touch /usr/orchestra-sandbox-test")
    assert failed and "Read-only file system" in content
    assert not Path("/usr/orchestra-sandbox-test").exists()
    content, failed = run(sandboxed, "echo made > made.txt && cat made.txt")
    assert (content, failed) == ("made", False)
    assert (sandboxed.workspace / "made.txt").read_text() == "made\n"


def test_the_sandboxed_command_has_no_capabilities_and_cannot_remount_the_system(
    sandboxed: ToolContext,
) -> None:
    content, failed = run(sandboxed, "grep CapEff /proc/self/status")
    assert (content, failed) == ("CapEff:\t0000000000000000", False)
    content, failed = run(sandboxed, "mount -o remount,bind,rw / && touch /usr/orchestra-escape")
    assert failed and not Path("/usr/orchestra-escape").exists()


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A directory the sandbox can see (under /var/tmp: its /tmp is private)."""
    path = Path(tempfile.mkdtemp(prefix="orchestra-test-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path)


def test_hidden_paths_are_not_readable_in_the_sandbox(
    sandboxed: ToolContext, outside_tmp: Path
) -> None:
    home = outside_tmp / "orchestra-home"
    home.mkdir()
    (home / "orchestra.db").write_text("other tasks' data")
    dotenv = outside_tmp / ".env"
    dotenv.write_text("ANTHROPIC_API_KEY=sk-ant-in-dotenv")
    command = f"cat {home}/orchestra.db {dotenv}; ls -A {home}; echo end"
    assert "other tasks' data" in run(sandboxed, command)[0]  # visible without hiding
    ctx = ToolContext(workspace=sandboxed.workspace, hidden=(home, dotenv))
    content, _ = run(ctx, command)
    assert "other tasks' data" not in content and "sk-ant" not in content
    assert content.endswith("end") and "No such file" in content


def test_the_sandbox_has_its_own_tmp(sandboxed: ToolContext) -> None:
    marker = f"orchestra-private-tmp-{time.monotonic_ns()}"
    content, failed = run(sandboxed, f"echo x > /tmp/{marker} && ls /tmp")
    assert not failed and marker in content
    assert not Path("/tmp", marker).exists()


def test_the_sandbox_has_no_network_unless_the_role_allows_it(
    sandboxed: ToolContext, listener: int
) -> None:
    (sandboxed.workspace / "probe.py").write_text(
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {listener}), timeout=2)\n"
        "except OSError as exc:\n"
        "    sys.exit(f'no connection: {exc}')\n"
        "print('connected')\n"
    )
    # the system's python: a virtualenv under /tmp is not in the sandbox (its /tmp is private)
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    assert system_python, "Debian's python3 runs inside the sandbox"
    probe = f"{system_python} probe.py"
    content, failed = run(sandboxed, probe)
    assert failed and content.startswith("no connection: ")
    content, failed = run(sandboxed, f"curl -sS -m 2 http://127.0.0.1:{listener}/")
    assert failed and "curl: (7)" in content
    networked = ToolContext(workspace=sandboxed.workspace, network=True)
    assert run(networked, probe) == ("connected", False)


@pytest.mark.parametrize("sandbox", [Sandbox.BWRAP, Sandbox.NONE])
def test_secrets_in_the_environment_are_not_visible_to_the_command(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, sandbox: Sandbox
) -> None:
    if sandbox is Sandbox.BWRAP:
        from tests.tools.conftest import require_bwrap

        require_bwrap()
    register_secret("registered-secret-value-1234")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key-000000")
    monkeypatch.setenv("VAULT_TOKEN", "hvs.vaulttoken")
    monkeypatch.setenv("ORCHESTRA_API_TOKEN", "api-token-value")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_github_token")
    monkeypatch.setenv("DB_PASSWORD", "db-password-value")
    monkeypatch.setenv("INNOCENT_LOOKING", "prefix-registered-secret-value-1234")
    monkeypatch.setenv("CONTEXT_ONLY", "ctx-secret-value")
    monkeypatch.setenv("HARMLESS", "kept")
    ctx = ToolContext(workspace=workspace, sandbox=sandbox, secrets=frozenset({"ctx-secret-value"}))
    content, failed = run(ctx, "env")
    assert not failed, content
    for leaked in (
        "ANTHROPIC_API_KEY",
        "VAULT_TOKEN",
        "ORCHESTRA_",
        "GITHUB_TOKEN",
        "DB_PASSWORD",
        "INNOCENT_LOOKING",
        "CONTEXT_ONLY",
        "registered-secret-value",
    ):
        assert leaked not in content
    assert "HARMLESS=kept" in content


def test_secret_values_in_the_output_are_redacted(sandboxed: ToolContext) -> None:
    ctx = ToolContext(workspace=sandboxed.workspace, secrets=frozenset({"hunter2-secret"}))
    assert run(ctx, "echo the password is hunter2-secret") == ("the password is ***", False)


@pytest.mark.parametrize("sandbox", [Sandbox.BWRAP, Sandbox.NONE])
def test_a_command_past_its_time_limit_is_killed_with_its_children(
    workspace: Path, sandbox: Sandbox
) -> None:
    if sandbox is Sandbox.BWRAP:
        from tests.tools.conftest import require_bwrap

        require_bwrap()
    ctx = ToolContext(workspace=workspace, sandbox=sandbox)
    marker = unique_seconds("31")
    started = time.monotonic()
    content, failed = run(ctx, f"sleep {marker} & echo started; sleep {marker}", timeout=700)
    assert time.monotonic() - started < 3
    assert failed and content.startswith("started") and "time limit" in content
    assert gone(f"sleep {marker}")


def test_a_background_child_does_not_outlive_the_call(sandboxed: ToolContext) -> None:
    marker = unique_seconds("32")
    started = time.monotonic()
    content, failed = run(sandboxed, f"(setsid sleep {marker} &); sleep {marker} & echo done")
    assert (content, failed) == ("done", False)
    assert time.monotonic() - started < 3
    assert gone(f"sleep {marker}")


def test_cancel_kills_a_running_command_within_a_second(sandboxed: ToolContext) -> None:
    marker = unique_seconds("33")
    cancel = CancelLater(0.3)
    ctx = ToolContext(workspace=sandboxed.workspace, cancel=cancel.event)
    with pytest.raises(TaskCancelled):
        run(ctx, f"sh -c 'sleep {marker}' & sleep {marker}")
    assert cancel.since() < 1.0
    assert gone(f"sleep {marker}", within=1.0)


def test_process_and_file_size_limits_apply_to_the_command(sandboxed: ToolContext) -> None:
    limits = Limits(bash_max_processes=3000, bash_max_file_bytes=100_000)
    ctx = ToolContext(workspace=sandboxed.workspace, limits=limits)
    assert run(ctx, "ulimit -u; ulimit -f") == ("3000\n97", False)  # -f is in 1024-byte blocks
    content, failed = run(ctx, "head -c 200000 /dev/zero > big.bin")
    assert failed and "[exit code" in content
    assert (sandboxed.workspace / "big.bin").stat().st_size == 100_000


def test_a_runaway_allocation_fails_in_the_command_not_in_the_machine(
    sandboxed: ToolContext,
) -> None:
    capped = Limits(bash_max_memory_bytes=256 << 20)
    ctx = ToolContext(workspace=sandboxed.workspace, limits=capped)
    grab = "python3 -c 'b = bytearray(300 << 20); print(len(b))'"  # over the cap
    content, failed = run(ctx, grab)
    assert failed and "MemoryError" in content and "[exit code 1]" in content
    assert run(ctx, "python3 -c 'b = bytearray(64 << 20); print(len(b))'") == ("67108864", False)
    # a role's sandbox.max_memory_mb sets it; 0 lifts it (sanitizers, a JVM's whole heap)
    for mb, expected in ((256, (content, True)), (0, ("314572800", False))):
        box = Toolbox(["Bash"], sandbox=SandboxConfig(max_memory_mb=mb))
        mine = box.context(sandboxed.workspace)
        assert run(mine, grab) == expected


def test_the_default_memory_cap_is_half_of_what_the_agent_may_use(tmp_path: Path) -> None:
    whole = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    assert half_the_memory((tmp_path / "none",)) == whole // 2
    v2.write_text("max\n")
    v1.write_text("9223372036854771712\n")  # cgroup v1's "unlimited"
    assert half_the_memory((v2, v1)) == whole // 2
    v2.write_text(f"{1 << 30}\n")  # a container held to 1 GiB
    assert half_the_memory((v2, v1)) == 1 << 29
    assert Limits().bash_max_memory_bytes == half_the_memory()


def test_huge_output_is_capped_with_a_marker(workspace: Path, sandboxed: ToolContext) -> None:
    ctx = ToolContext(workspace=workspace, limits=Limits(max_output_chars=1000))
    content, failed = run(ctx, "echo first; yes line | head -c 5000000; echo; echo last")
    assert not failed
    assert content.startswith("first") and content.endswith("last")
    assert "[truncated " in content and len(content) < 1200


def test_non_utf8_output_comes_back_with_replacement_characters(sandboxed: ToolContext) -> None:
    content, failed = run(sandboxed, r"printf 'ok \377\376 done\n'")
    assert (content, failed) == ("ok \ufffd\ufffd done", False)


def test_a_non_zero_exit_is_an_error_result_with_the_code(sandboxed: ToolContext) -> None:
    assert run(sandboxed, "echo failing >&2; exit 3") == ("failing\n[exit code 3]", True)


def test_a_task_past_its_deadline_does_not_run_the_command(sandboxed: ToolContext) -> None:
    ctx = ToolContext(workspace=sandboxed.workspace, deadline=time.monotonic() - 1)
    content, failed = run(ctx, "touch ran")
    assert failed and "time is up" in content
    assert not (sandboxed.workspace / "ran").exists()


def test_without_bwrap_bash_is_refused_unless_the_role_opts_in(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bash_module, "bwrap", lambda: None)  # a machine without bubblewrap
    content, failed = run(ToolContext(workspace=workspace, sandbox=Sandbox.BWRAP), "touch ran")
    assert failed and "bubblewrap" in content and "sandbox: {mode: auto}" in content
    assert not (workspace / "ran").exists()
    assert run(ToolContext(workspace=workspace, sandbox=Sandbox.AUTO), "touch ran && echo ok") == (
        "ok",
        False,
    )


def test_a_command_that_closes_its_output_early_is_not_killed(workspace: Path) -> None:
    # coreutils close stdout before they exit: the output's end is not the command's end
    ctx = ToolContext(workspace=workspace, sandbox=Sandbox.NONE)
    results = {run(ctx, "exec /bin/echo hi") for _ in range(30)}
    assert results == {("hi", False)}
    assert run(ctx, "exec >&- 2>&-; sleep 0.3; touch finished") == ("(no output)", False)
    assert (workspace / "finished").exists()


def test_a_missing_bwrap_skips_the_sandbox_tests_on_a_laptop_and_fails_them_in_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.tools import conftest

    monkeypatch.setattr(conftest.shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        conftest.require_bwrap()
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="CI must run the sandbox tests"):
        conftest.require_bwrap()
