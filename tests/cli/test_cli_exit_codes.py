"""Exit codes an operator meets: a refused confirmation, a Redis that is down."""

from __future__ import annotations

import io
import json
import socket
import sys
import time

import pytest

from tests.conftest import CliRunner


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_answering_no_at_a_confirmation_exits_1_not_confirmed(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli("task", "submit", "-q", "kept")
    cli("snapshot", "create", "--name", "before")
    snapshots = json.loads(cli("--json", "snapshot", "list").out)
    monkeypatch.setattr(sys, "stdin", _Terminal("n\n"))
    refused = cli("rollback", "--to", "before", expect=1)  # was 130, as for Ctrl-C
    assert refused.err.splitlines()[-1] == (
        "orchestra: error: not confirmed — nothing was changed (pass --yes to skip the question)"
    )
    assert json.loads(cli("--json", "snapshot", "list").out) == snapshots  # no safety snapshot
    assert "kept" in cli("task", "list").out


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_with_redis_down_task_list_fails_within_the_connect_timeout_in_one_line(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _closed_port()
    monkeypatch.setenv("ORCHESTRA_STATE_URL", f"redis://127.0.0.1:{port}/0")
    monkeypatch.setenv("ORCHESTRA_BROKER_URL", f"amqp://guest:guest@127.0.0.1:{port}/%2F")
    monkeypatch.setenv("ORCHESTRA_REDIS__CONNECT_TIMEOUT", "0.5")
    started = time.monotonic()
    down = cli("task", "list", expect=3)
    took = time.monotonic() - started
    assert took < 1.5, took  # every backoff of a long-running process took ~5.5 s
    assert down.err == (
        f"orchestra: error: cannot reach Redis at redis://127.0.0.1:{port}/0 "
        "(RespConnectionError) — start it with `orchestra up` or set ORCHESTRA_STATE_URL\n"
    )


def test_an_agent_asked_for_more_tasks_at_once_than_one_process_holds_is_exit_2(
    cli: CliRunner,
) -> None:
    from orchestra_cli.blocking import CORE_THREADS, MAX_THREADS
    from orchestra_cli.cli.commands.agent import MAX_CONCURRENCY

    # a loop a pool thread at most, and room beside them for the pool's other steps
    assert MAX_CONCURRENCY + 8 * CORE_THREADS <= MAX_THREADS
    refused = cli("agent", "start", "coder", "-n", str(MAX_CONCURRENCY + 1), expect=2)
    assert f"is not in the range 1<=x<={MAX_CONCURRENCY}" in refused.err
