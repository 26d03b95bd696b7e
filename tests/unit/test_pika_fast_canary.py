"""Canary: the pika internals the RabbitMQ fast path (broker/pika_fast.py) relies on.

When a pika upgrade removes or changes one of them, these tests fail naming it and
pika's version. orchestra itself keeps working meanwhile: it takes the plain path
(pika's public API, broker/rabbitmq_io.py) and says so in a warning. Fix it by
porting pika_fast.py to the new pika, or set ``rabbitmq.fast_path: false``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pika
import pytest

from orchestra_cli.broker import pika_fast, rabbitmq_link
from orchestra_cli.broker.rabbitmq_io import PLAIN
from orchestra_cli.settings import RabbitMQSettings
from tests.contract.conftest import AMQP_URL
from tests.support import require_service


def _told(problems: list[str]) -> str:
    return (
        f"pika {pika.__version__} changed what the RabbitMQ fast path (broker/pika_fast.py) "
        "uses: " + "; ".join(problems) + " — port pika_fast.py to it (until then orchestra "
        "takes the plain path, slower) or keep pika at the last version it knows"
    )


@pytest.fixture
def fresh_check() -> Iterator[None]:
    """Forget the once-per-process answers, before and after the test."""
    pika_fast._static = None
    rabbitmq_link._fallback_told.clear()
    yield
    pika_fast._static = None
    rabbitmq_link._fallback_told.clear()


def test_every_private_name_of_pikas_classes_the_fast_path_uses_is_still_there(
    fresh_check: None,
) -> None:
    problems = pika_fast.missing()
    assert not problems, _told(problems)


@pytest.mark.integration
def test_every_private_attribute_of_a_live_connection_the_fast_path_uses_is_still_there() -> None:
    require_service("RabbitMQ", "127.0.0.1", 5672)
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        problems = pika_fast.missing_live(conn, conn.channel())
    finally:
        conn.close()
    assert not problems, _told(problems)


def test_the_canary_names_a_name_pika_no_longer_has_and_one_it_calls_differently(
    fresh_check: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pika.adapters.blocking_connection as blocking
    import pika.connection

    monkeypatch.delattr(blocking, "_IoloopTimerContext")
    monkeypatch.setattr(pika.connection.Connection, "_output_marshaled_frames", lambda self: None)
    problems = pika_fast.missing()
    assert problems == [
        "adapters.blocking_connection._IoloopTimerContext is gone (waiting for confirms)",
        "connection.Connection._output_marshaled_frames takes 0 arguments now, not 1 "
        "(joining a message's frames)",
    ]
    assert f"pika {pika.__version__} changed" in _told(problems)


def test_a_live_object_without_an_attribute_is_named() -> None:
    class Bare:
        pass

    problems = pika_fast.missing_live(Bare(), Bare())
    assert problems[0] == "connection._impl is gone (every fast-path write)"
    assert "channel._closing_reason is gone (why the broker closed a channel)" in problems


def test_a_pika_without_the_internals_gets_the_plain_path_and_one_warning(
    fresh_check: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pika_fast, "missing", lambda: ["x._gone is gone (testing)"])
    settings = RabbitMQSettings()
    with caplog.at_level(logging.WARNING, logger="orchestra_cli.broker.rabbitmq_link"):
        assert rabbitmq_link.io_path(settings, None, None) is PLAIN
        assert rabbitmq_link.io_path(settings, None, None) is PLAIN
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert f"pika {pika.__version__}: x._gone is gone (testing)" in warnings[0]
    assert "plain path" in warnings[0] and "rabbitmq.fast_path" in warnings[0]


def test_fast_path_false_takes_the_plain_path_without_looking_at_pika(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never() -> list[str]:
        raise AssertionError("the fast path's names were checked")

    monkeypatch.setattr(pika_fast, "missing", never)
    assert rabbitmq_link.io_path(RabbitMQSettings(fast_path=False), None, None) is PLAIN
