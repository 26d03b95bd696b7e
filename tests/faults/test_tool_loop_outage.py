"""Faults mid-tool-loop (Redis + RabbitMQ, real agent processes, the fake Messages API,
the real sandbox). The broker drops: each loop in flight goes on as a coroutine while
its message is redelivered to its own agent. The agent is killed with kill -9: a second
one takes its tasks over and resumes each loop from its steps. Redis stops answering
past the store's retries: the loops' step writes give up and their tasks resume from
what is on record. Each way every task finishes once, and no recorded turn is asked
again and no command run twice."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestra_cli.backends import Backends
from orchestra_cli.models import Task
from orchestra_cli.state.redis_conn import MAX_REDIS_ATTEMPTS, RETRY
from tests.e2e.test_services_e2e import Env, _assert_each_succeeded_once, _start, _succeeded
from tests.e2e.test_services_e2e import svc_env as svc_env
from tests.faults.conftest import PrivateRedis
from tests.llm.fake_anthropic import FakeAnthropic, Reply, text, tool_use
from tests.services.conftest import close_connections_named
from tests.support import Proc, processes, run_orchestra, wait_until
from tests.tools.conftest import require_bwrap

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOCKET_TIMEOUT = 0.5  # the Redis test's: a paused server costs each try this


def _retry_budget(per_try: float) -> float:
    """The longest a state write keeps trying before it gives up (every try timing out,
    every backoff at its ceiling)."""
    waits = sum(RETRY.ceiling(attempt) for attempt in range(1, MAX_REDIS_ATTEMPTS))
    return MAX_REDIS_ATTEMPTS * per_try + waits


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    server = FakeAnthropic().start()
    yield server
    server.stop()


def _turns(fake: FakeAnthropic, messages: int) -> int:
    """Model calls whose conversation had ``messages`` messages (1: a loop's first turn)."""
    return sum(1 for r in fake.requests if len(r["body"]["messages"]) == messages)


def _llm_env(env: Env, fake: FakeAnthropic, **extra: str) -> Env:
    """The deployment's namespace, its agents calling the fake Messages API."""
    return Env(
        env.with_(
            ORCHESTRA_LLM__PROVIDER="anthropic",
            ANTHROPIC_API_KEY=fake.api_key,
            ANTHROPIC_BASE_URL=fake.url,
            ORCHESTRA_LLM__RETRY_BACKOFF_SECONDS="0.05",
            **extra,
        ),
        env.cwd,
        env.prefix,
    )


def _agent(env: Env, procs: list[Proc], slots: int, name: str = "coder-1") -> Proc:
    """A coder agent with ``slots`` loops at once, running once this returns."""
    agent = ["agent", "start", "coder", "--name", name, "--concurrency", str(slots)]
    proc = _start(env, procs, agent, name)

    def running() -> bool:
        got = run_orchestra(["--json", "agent", "list"], env.vars, env.cwd)
        found = json.loads(got.out) if got.code == 0 else []
        return any(a["name"] == name and a["state"] == "running" for a in found)

    wait_until(running, timeout=60, interval=0.3, what="the agent")
    return proc


def _submit_batch(env: Env, tmp_path: Path, n: int) -> list[str]:
    batch = tmp_path / "batch.txt"
    batch.write_text("".join(f"run it once {i}\n" for i in range(n)))
    submit = ["task", "submit", "--batch", str(batch), "--capability", "code"]
    got = run_orchestra(submit, env.vars, env.cwd)
    assert got.code == 0, got
    return got.out.split()


def _assert_each_command_ran_once(env: Env, tmp_path: Path, ids: list[str]) -> None:
    for task_id in ids:
        out = tmp_path / "out" / task_id
        got = run_orchestra(["task", "export", task_id, str(out)], env.vars, env.cwd)
        assert got.code == 0, got
        assert (out / "runs.txt").read_text() == "ran\n"  # its workspace: the command ran once


def _through(
    env: Env,
    fake: FakeAnthropic,
    tmp_path: Path,
    procs: list[Proc],
    n: int,
    fault: Callable[[Backends], object],
) -> list[Task]:
    """``n`` tool loops on a coder agent (``procs[0]``); ``fault`` strikes once every one
    waits on its second turn. Returns the tasks, each checked to have succeeded once and
    to have run its command once."""
    _agent(env, procs, n)
    ids = _submit_batch(env, tmp_path, n)
    b = env.backends()
    try:
        wait_until(lambda: _turns(fake, 3) == n, timeout=60, what="every second turn")
        fault(b)
        wait_until(lambda: _succeeded(b) == n, timeout=120, interval=0.3, what="every loop")
        _assert_each_succeeded_once(b, n)
        done = [b.state.get_task(i) for i in ids]
    finally:
        b.close()
    _assert_each_command_ran_once(env, tmp_path, ids)
    return done


def _bash_then(last: Callable[[], Reply]) -> Callable[[dict[str, Any]], Reply]:
    """The fake's answers by the conversation, not by arrival: a Bash call, then ``last``."""

    def reply(body: dict[str, Any]) -> Reply:
        if len(body["messages"]) == 1:
            return tool_use("Bash", {"command": "echo ran >> runs.txt && cat runs.txt"})
        return last()

    return reply


def test_a_broker_drop_mid_tool_loop_finishes_each_loop_once_asking_and_running_nothing_twice(
    svc_env: Env, fake: FakeAnthropic, tmp_path: Path
) -> None:
    require_bwrap()
    n = 6
    released = threading.Event()  # the second turns are answered only after the drop
    fake.default = _bash_then(lambda: text("finished across the drop", hold=released))
    env = _llm_env(svc_env, fake)

    def drop(b: Backends) -> None:
        assert close_connections_named(env.prefix) >= 1
        assert _succeeded(b) == 0  # every loop was mid-call when its connection went
        released.set()

    with processes() as procs:
        done = _through(env, fake, tmp_path, procs, n, drop)
        # the agent's own consumer lost its connection (its messages went back to the queue)
        assert re.search(r"\(coder-1:[0-9a-f]{6}\): ConnectionClosedByBroker", procs[0].output())
    assert all(t.result == "finished across the drop" for t in done)
    assert _turns(fake, 1) == n  # no turn asked again: neither the first
    assert _turns(fake, 3) == n  # nor the one each loop was in when the broker dropped


def test_kill_9_mid_tool_loop_a_second_agent_resumes_each_loop_asking_and_running_nothing_twice(
    svc_env: Env, fake: FakeAnthropic, tmp_path: Path
) -> None:
    require_bwrap()
    n = 6
    resumed = threading.Event()  # set once the first agent is dead
    fake.default = _bash_then(  # the first agent dies waiting for its second turn
        lambda: (
            text("resumed and finished") if resumed.is_set() else text("never seen", hold=resumed)
        )
    )
    env = _llm_env(svc_env, fake)
    with processes() as procs:

        def kill(_: Backends) -> None:
            procs[0].kill9()  # six loops mid-call, each with a command run and on record
            resumed.set()
            _agent(env, procs, n, name="coder-2")  # takes them over once coder-1's TTL ends

        done = _through(env, fake, tmp_path, procs, n, kill)
    assert all(t.result == "resumed and finished" and t.agent == "coder-2" for t in done)
    assert _turns(fake, 1) == n  # no recorded turn asked again
    assert _turns(fake, 3) == 2 * n  # the turn each loop died in, asked once more


def test_redis_paused_mid_tool_loop_past_its_retries_finishes_each_loop_once_running_nothing_twice(
    svc_env: Env, fake: FakeAnthropic, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    require_bwrap()
    n = 6
    released = threading.Event()  # the second turns are answered only once Redis is paused
    fake.default = _bash_then(lambda: text("finished across the pause", hold=released))
    env = _llm_env(
        svc_env,
        fake,
        ORCHESTRA_STATE_URL=private_redis.url,
        ORCHESTRA_REDIS__SOCKET_TIMEOUT=str(SOCKET_TIMEOUT),
        ORCHESTRA_REDIS__CONNECT_TIMEOUT=str(SOCKET_TIMEOUT),
    )

    def pause(_: Backends) -> None:
        os.kill(private_redis.server.pid, signal.SIGSTOP)
        released.set()  # each loop's step write now meets the pause
        time.sleep(_retry_budget(SOCKET_TIMEOUT) + 4)  # past it: every such write gives up
        os.kill(private_redis.server.pid, signal.SIGCONT)

    with processes() as procs:
        _through(env, fake, tmp_path, procs, n, pause)
        log = procs[0].output()
        assert procs[0].popen.poll() is None, log[-3000:]
        assert "heartbeat missed" in log
        assert "Traceback" not in log  # an outage is one line a try, not a stack
        # the loops gave up on their writes and their tasks went back, uncounted
        assert "cannot reach Redis" in log and "(not counted as a delivery)" in log
    assert _turns(fake, 1) == n  # the turns on record before the pause: never asked again
    # a write that gave up may still land as Redis resumes (it sat in the socket): then
    # the resumed loop replays it; otherwise it asks that turn once more
    assert n <= _turns(fake, 3) <= 2 * n
