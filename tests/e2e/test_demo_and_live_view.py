"""`orchestra demo` and the live TTY view of `task watch`, as a user runs them."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Deployment
from tests.support import clean_env, run_orchestra

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_finishes_with_a_succeeded_tree_of_several_agents(tmp_path: Path) -> None:
    start = time.monotonic()
    result = run_orchestra(["demo", "--latency-ms", "100"], clean_env(), tmp_path, timeout=60)
    assert result.code == 0, str(result)
    assert time.monotonic() - start < 60
    for role in ("architect-1", "coder-1", "infra-1", "reviewer-1"):
        assert f"agent={role}" in result.out
    assert result.out.count("✔ succeeded") >= 5
    data_dir = re.search(r"on (\S*orchestra-demo-\S+)", result.err.replace("\n", ""))
    assert data_dir and not Path(data_dir.group(1)).exists()  # cleaned up
    # the agents acted: the coder wrote a module and its test and ran it with Bash, the
    # reviewer read them; the tree's files were exported
    assert "Write ok" in result.out and "Bash: python3 test_app.py" in result.out
    assert "Bash ok" in result.out and "Read ok" in result.out
    exported = tmp_path / "orchestra-demo-output"
    assert sorted(p.name for p in exported.iterdir()) == ["DESIGN.md", "app.py", "test_app.py"]
    assert "[offline]" in (exported / "app.py").read_text()


def _run_in_pty(args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[int, str]:
    """Run a command with a pseudo-terminal as stdout; return exit code and screen output."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestra_cli", *args],
        env={**env, "COLUMNS": "160", "TERM": "xterm"},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=10), b"".join(chunks).decode(errors="replace")


def test_watch_on_a_terminal_draws_a_live_view_and_exits_with_the_outcome(
    deployment: Deployment,
) -> None:
    d = deployment
    d.env["ORCHESTRA_LLM__OFFLINE__LATENCY_MS"] = "300"
    d.start("run", "--agents", "all")
    task_id = d.submit("Design and implement a cache, then review it")
    code, screen = _run_in_pty(["task", "watch", task_id], d.env, d.tmp, timeout=60)
    assert code == 0, screen
    assert f"task {task_id[-8:]} succeeded · " in screen and "3/3 subtasks done" in screen
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)  # without the terminal's escapes
    assert re.search(r"ID +STATUS +AGENT +TRY +TIME +TOKENS +TITLE", plain)
    assert "✔ succeeded" in screen and "▶ running" in screen
    assert f"task {task_id} succeeded" in screen
