"""Outages longer than any reconnect window: long-running processes ride them out,
or exit 3 at the limit they were given — never exit 0 unasked.

RabbitMQ goes down behind a proxy the test owns (the shared server runs on);
Redis outages use a private redis-server the test starts and stops.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import pytest

from orchestra_cli.backends import Backends
from orchestra_cli.broker.rabbitmq import RabbitBroker
from orchestra_cli.broker.rabbitmq_link import MAX_RECONNECT_ATTEMPTS
from orchestra_cli.models import MSG_RUN, Envelope
from tests.e2e.test_services_e2e import Env, _start, _submit, _succeeded
from tests.e2e.test_services_e2e import svc_env as svc_env
from tests.faults.conftest import PrivateRedis, has_consumer
from tests.support import (
    Proc,
    StallingProxy,
    processes,
    run_orchestra,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def proxy() -> Iterator[StallingProxy]:
    p = StallingProxy(("127.0.0.1", 5672))
    try:
        yield p
    finally:
        p.close()


def _variant(env: Env, **extra: str) -> Env:
    """The same deployment (prefixes, home) with some settings changed."""
    return Env(env.with_(**extra), env.cwd, env.prefix)


def _system(env: Env, procs: list[Proc], latency_ms: int) -> Proc:
    """An orchestrator with a coder agent in one process (one process: a 2-core machine)."""
    extra = {"ORCHESTRA_LLM__OFFLINE__LATENCY_MS": str(latency_ms)}
    return _start(env, procs, ["run", "--agents", "coder"], "system", **extra)


def _through(proxy: StallingProxy) -> str:
    return f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"


def test_a_consumer_rides_out_an_outage_far_past_the_old_reconnect_limit(
    svc: Backends, proxy: StallingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestra_cli.broker import rabbitmq_link

    attempts: list[int] = []

    class Fast:
        def next_delay(self, attempt: int) -> float:
            attempts.append(attempt)
            return 0.01

    monkeypatch.setattr(rabbitmq_link, "RECONNECT", Fast())
    assert isinstance(svc.broker, RabbitBroker)
    broker = RabbitBroker(_through(proxy), svc.broker.settings)  # the same queue prefix
    consumer = broker.consumer(["work.outage"], prefetch=1, name="outage")
    try:
        proxy.down()
        wait_until(
            lambda: attempts and max(attempts) > MAX_RECONNECT_ATTEMPTS + 20,
            timeout=60,
            what="reconnect attempts past the old limit",
        )
        assert consumer._link.alive
        proxy.up()
        svc.broker.publish("work.outage", Envelope(type=MSG_RUN, task_id="after"))
        delivery = consumer.get(timeout=30)
        assert delivery is not None and delivery.envelope.task_id == "after"
        delivery.ack()
    finally:
        consumer.close()
        broker.close()


def _wait_for_consumer(env: Env, queue: str) -> None:
    """Until a consumer is on ``queue`` (it connects after the process says it runs)."""
    b = env.backends()
    try:
        wait_until(lambda: has_consumer(b, queue), timeout=30, what=f"a consumer on {queue}")
    finally:
        b.close()


def test_an_agent_exits_3_with_one_line_once_rabbitmq_is_down_past_its_limit(
    svc_env: Env, proxy: StallingProxy
) -> None:
    env = _variant(
        svc_env, ORCHESTRA_BROKER_URL=_through(proxy), ORCHESTRA_RABBITMQ__MAX_OUTAGE_SECONDS="3"
    )
    with processes() as procs:
        agent = _start(env, procs, ["agent", "start", "coder", "--name", "c-1"], "agent")
        _wait_for_consumer(svc_env, "work.code")
        proxy.down()
        started = time.monotonic()
        code = agent.popen.wait(timeout=60)
        took = time.monotonic() - started
        out = agent.output()
    assert code == 3, out
    assert 3 <= took < 20, out
    errors = [line for line in out.splitlines() if line.startswith("orchestra: error:")]
    assert len(errors) == 1 and "max_outage_seconds" in errors[0], out
    assert "guest:***@" in errors[0] and "orchestra up" in errors[0]


def test_the_system_rides_out_a_rabbitmq_outage_and_finishes_every_task_once(
    svc_env: Env, proxy: StallingProxy
) -> None:
    env = _variant(svc_env, ORCHESTRA_BROKER_URL=_through(proxy))
    with processes() as procs:
        system = _system(env, procs, latency_ms=50)
        assert _submit(env, 20, "o", capability="").wait(timeout=60) == 0
        b = env.backends()
        try:
            wait_until(lambda: _succeeded(b) >= 1, timeout=60, what="some progress")
            proxy.down()
            down = run_orchestra(["--json", "health", "--check", "broker"], env.vars, env.cwd)
            assert down.code == 3, str(down)  # health reports the outage meanwhile
            assert json.loads(down.out)["checks"][0]["level"] == "fail"
            time.sleep(8)
            assert system.popen.poll() is None, system.output()
            proxy.up()
            wait_until(lambda: _succeeded(b) >= 20, timeout=120, interval=0.3, what="all 20")
            tasks = [t for t in b.state.list_tasks(limit=200) if t.parent_id is None]
            assert len(tasks) == 20
            assert all(b.state.count_events(t.id, "succeeded") == 1 for t in tasks)
        finally:
            b.close()
        assert system.popen.poll() is None, system.output()
        assert system.stop(signal.SIGTERM) == 0
        assert "reconnecting in" in system.output()


def test_tries_that_fail_because_a_service_is_down_never_make_a_message_poison(
    backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from orchestra_cli.engine import worker
    from orchestra_cli.errors import StateUnavailable

    monkeypatch.setattr(worker, "OUTAGE_RETRY_SECONDS", 0.01)
    outage_tries = backends.settings.broker.max_deliveries * 3
    seen: list[int] = []
    stop = threading.Event()

    def handler(delivery: object) -> worker.Action:
        seen.append(1)
        if len(seen) <= outage_tries:
            raise StateUnavailable("cannot reach Redis at redis://127.0.0.1:1/0")
        stop.set()
        return worker.Ack()

    backends.broker.publish("work.code", Envelope(type=MSG_RUN, task_id="healthy"))
    loop = worker.ConsumerLoop(backends.broker, ["work.code"], handler, concurrency=1, name="o")
    runner = threading.Thread(target=loop.run, args=(stop,))
    runner.start()
    runner.join(timeout=30)
    assert not runner.is_alive() and len(seen) == outage_tries + 1
    assert backends.broker.dead_letters() == []


def test_a_redis_outage_past_the_retry_window_leaves_no_poison_and_every_task_done(
    svc_env: Env, private_redis: PrivateRedis
) -> None:
    env = _variant(
        svc_env,
        ORCHESTRA_STATE_URL=private_redis.url,
        ORCHESTRA_REDIS__SOCKET_TIMEOUT="0.5",
        ORCHESTRA_REDIS__CONNECT_TIMEOUT="0.5",
        ORCHESTRA_BROKER__MAX_DELIVERIES="2",
    )
    with processes() as procs:
        system = _system(env, procs, latency_ms=100)
        assert _submit(env, 20, "r").wait(timeout=60) == 0
        b = env.backends()
        try:
            wait_until(lambda: _succeeded(b) >= 2, timeout=60, what="some progress")
            os.kill(private_redis.server.pid, signal.SIGSTOP)
            time.sleep(15)  # past Redis's bounded retries (MAX_REDIS_ATTEMPTS) several times
            os.kill(private_redis.server.pid, signal.SIGCONT)
            wait_until(lambda: _succeeded(b) >= 20, timeout=120, interval=0.3, what="all 20")
            assert all(b.state.count_events(t.id, "succeeded") == 1 for t in b.state.list_tasks())
            assert b.broker.dead_letters() == [], system.output()[-3000:]
        finally:
            b.close()
        assert system.popen.poll() is None, system.output()
        assert "not counted as a delivery" in system.output()
