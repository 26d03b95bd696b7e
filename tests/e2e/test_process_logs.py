"""Each long-running process's own log, read and followed with `orchestra logs`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.e2e.conftest import Deployment
from tests.support import wait_until

pytestmark = [pytest.mark.integration]


def test_each_process_logs_to_its_own_file_and_logs_shows_one_or_a_task_merged(
    deployment: Deployment,
) -> None:
    d = deployment
    d.env["ORCHESTRA_LLM__OFFLINE__LATENCY_MS"] = "300"
    d.start("run")
    d.start("agent", "start", "coder", "--name", "coder-1")
    logs_dir = d.tmp / "home" / "logs"
    for name in ("agent-coder-1.log", "orchestrator.log"):  # each process its own
        wait_until((logs_dir / name).exists, what=name)
    failed = d.submit("-c", "code", "--timeout", "0.05", "--max-attempts", "1", "too slow")
    d.wait_status(failed, "failed")

    text = d.cli("logs", "orchestrator").out
    assert " orchestrator INFO " in text and "started" in text and not text.startswith("{")
    lines = d.cli("--json", "logs", "coder-1").out.splitlines()
    records = [json.loads(line) for line in lines]
    assert records and all(r["process"] == "coder-1" for r in records)
    assert any(failed in r["msg"] for r in records)  # its attempt failed: a warning

    merged = d.cli("--json", "logs", "--task", failed[-8:]).out.splitlines()
    timeline = [json.loads(line) for line in merged]
    assert [r["time"] for r in timeline] == sorted(r["time"] for r in timeline)
    processes = {r["process"] for r in timeline}
    assert {"events", "coder-1"} <= processes
    types = [r["msg"].split()[0] for r in timeline if r["process"] == "events"]
    assert types[0] == "created" and "failed" in types
    assert f"failed {failed}" in d.cli("logs", "--task", failed).out  # text, the event too
    err = d.cli("logs", "nobody", expect=2).err
    assert "unknown service or process 'nobody'" in err
    assert "coder-1" in err and "orchestrator" in err  # the processes that have logs


def test_logs_follows_an_agent_until_ctrl_c_which_exits_0(deployment: Deployment) -> None:
    d = deployment
    d.env["ORCHESTRA_LLM__OFFLINE__LATENCY_MS"] = "300"
    d.start("agent", "start", "coder", "--name", "coder-1")
    log = d.tmp / "home" / "logs" / "agent-coder-1.log"
    wait_until(log.exists, what="the agent's log")
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestra_cli", "logs", "coder-1", "-f", "-n", "0"],
        env=d.env,
        cwd=d.tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)  # following from the end
        task_id = d.submit("-c", "code", "--timeout", "0.05", "--max-attempts", "1", "x")
        d.wait_status(task_id, "failed")
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert task_id in out and " coder-1 WARNING " in out
