"""Hostile headers, properties and bodies on every queue orchestra consumes.

A header is as much a stranger's input as a body: each bad one must
dead-letter its own message with the reason while the consumer goes on.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from orchestra_cli.backends import Backends
from orchestra_cli.broker.rabbitmq import RabbitBroker
from orchestra_cli.models import MSG_RESULT, MSG_RUN, MSG_SUBMIT, Q_DEAD, Envelope
from tests.conftest import CliRunner
from tests.e2e.test_services_e2e import Env, _start
from tests.e2e.test_services_e2e import svc_env as svc_env
from tests.faults.conftest import has_consumer, publish_with_headers
from tests.support import wait_until

pytestmark = pytest.mark.integration

BAD_COUNTS: list[Any] = ["abc", [1, 2], -1, Decimal("1.5"), True, 10**15, {"n": 1}, b"\xff"]
QUEUES = {"intake": MSG_SUBMIT, "results": MSG_RESULT, "work.code": MSG_RUN}


def _broker(b: Backends) -> RabbitBroker:
    assert isinstance(b.broker, RabbitBroker)
    return b.broker


@pytest.mark.parametrize("queue", list(QUEUES))
@pytest.mark.parametrize("header", ["x-orchestra-deliveries", "x-delivery-count"])
def test_a_bad_delivery_count_header_dead_letters_its_message_and_the_consumer_goes_on(
    svc: Backends, queue: str, header: str
) -> None:
    broker = _broker(svc)
    consumer = broker.consumer([queue], prefetch=4, name="hostile")
    try:
        physical = broker.topo.physical(queue)
        for i, value in enumerate(BAD_COUNTS):
            body = Envelope(type=QUEUES[queue], task_id=f"bad-{i}").encode()
            publish_with_headers(physical, body, {header: value}, message_id=f"bad-{i}")
        broker.publish(queue, Envelope(type=QUEUES[queue], task_id="good"))
        good = consumer.get(timeout=10)
        assert good is not None and good.envelope.task_id == "good"
        assert good.delivery_count == 1
        good.ack()
        assert consumer._link.alive  # still consuming: nothing raised on its thread

        def all_dead() -> list[dict[str, Any]] | None:
            letters = broker.dead_letters(100)
            return letters if len(letters) == len(BAD_COUNTS) else None

        letters = wait_until(all_dead, timeout=10, what="every bad message dead-lettered")
    finally:
        consumer.close()
    assert {x["task_id"] for x in letters} == {f"bad-{i}" for i in range(len(BAD_COUNTS))}
    for letter in letters:
        assert letter["queue"] == queue and f"header {header} is" in letter["reason"]
        assert letter["undecodable"] is None  # the body was fine: its task is named


def test_dead_letters_with_hostile_headers_are_listed_not_an_internal_error(
    svc: Backends,
) -> None:
    broker = _broker(svc)
    broker.dead_letter("work.code", Envelope(type=MSG_RUN, task_id="known"), "exhausted")
    dead = broker.topo.physical(Q_DEAD)
    publish_with_headers(dead, b"{}", {"x-orchestra-deliveries": "abc", "x-death": "garbage"})
    publish_with_headers(dead, b"[" * 100_000, {"x-orchestra-reason": b"\xed\xa0\x80 lone"})
    letters = broker.dead_letters()
    assert len(letters) == 3
    by_size = {x["size"]: x for x in letters}
    assert by_size[2]["deliveries"] is None and by_size[2]["undecodable"]
    deep = by_size[100_000]
    assert "nested too deeply" in deep["undecodable"] and deep["task_id"] is None
    assert deep["reason"].encode("utf-8")  # printable, a lone surrogate replaced
    json.dumps(letters)


def test_hostile_control_messages_leave_the_control_channel_working(svc: Backends) -> None:
    import pika

    from tests.contract.conftest import AMQP_URL

    control = svc.broker.control_consumer("hostile")
    try:
        conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        try:
            ch = conn.channel()
            for body in (b"[" * 100_000, b"\xff", b"[1]", b'{"type": "cancel", "task_ids": 5}'):
                ch.basic_publish(_broker(svc).topo.control, "", body)
        finally:
            conn.close()
        svc.broker.publish_control({"type": "ping", "agent": "*"})

        def ping() -> dict[str, Any] | None:
            message = control.get(timeout=0.5)
            return message if message and message.get("type") == "ping" else None

        assert wait_until(ping, timeout=10, what="the ping after the garbage")
    finally:
        control.close()


def test_received_headers_pika_cannot_encode_again_are_sent_on_as_text() -> None:
    from orchestra_cli.broker.rabbitmq_headers import republishable

    # what pika decodes from another client's frames: a double, an unsigned 64-bit integer
    headers = {"ratio": 1.5, "big": 2**64 - 1, "fine": "x", "n": 3}
    out = republishable(headers)
    assert out == {"ratio": "1.5", "big": str(2**64 - 1), "fine": "x", "n": 3}
    assert republishable(None) == {}


def test_dlq_list_shows_undecodable_letters_with_their_size_and_reason(cli: CliRunner) -> None:
    from orchestra_cli.backends import open_backends
    from orchestra_cli.settings import load_settings

    backends = open_backends(load_settings().settings)  # embedded: the same listing code
    try:
        backends.broker.publish_raw(Q_DEAD, b"[" * 100_000)
        backends.broker.publish_raw(Q_DEAD, b'{"task_id": "\\ud800"}')
    finally:
        backends.close()
    letters = json.loads(cli("--json", "dlq", "list").out)
    assert [x["size"] for x in letters] == [21, 100_000]
    assert all(x["undecodable"] and x["task_id"] is None for x in letters)
    table = cli("dlq", "list").out
    assert "undecodable (100000 bytes)" in table and "undecodable (21 bytes)" in table


@pytest.mark.slow
def test_a_running_agent_and_orchestrator_survive_hostile_headers_and_go_on_working(
    svc_env: Env,
) -> None:
    from tests.support import processes, run_orchestra

    with processes() as procs:
        system = _start(svc_env, procs, ["run", "--agents", "coder"], "system")
        b = svc_env.backends()
        try:
            wait_until(lambda: has_consumer(b, "work.code"), timeout=60, what="the agent consuming")
            for queue, kind in QUEUES.items():
                body = Envelope(type=kind, task_id=f"hostile-{queue}").encode()
                publish_with_headers(
                    f"{svc_env.prefix}.{queue}", body, {"x-orchestra-deliveries": "abc"}
                )
            done = run_orchestra(
                ["task", "submit", "--wait", "-q", "after the garbage"], svc_env.vars, svc_env.cwd
            )
            assert done.code == 0, str(done)
            letters = wait_until(
                lambda: len(found := b.broker.dead_letters()) == 3 and found,
                timeout=30,
                what="the 3 hostile messages dead-lettered",
            )
        finally:
            b.close()
        assert {x["queue"] for x in letters} == set(QUEUES)
        assert system.popen.poll() is None, system.output()  # nothing stopped or restarted
        assert "gave up" not in system.output()
