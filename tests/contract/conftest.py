"""Backends for the contract suites: one test body, every implementation.

``BACKEND_KINDS`` lists the implementations; each kind's factory returns a
``Backends`` isolated for one test (its own SQLite file, or its own key
prefix and queue names on the shared services) and cleans up after it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestra_cli.backends import Backends, open_backends
from orchestra_cli.settings import BrokerSettings, Settings
from tests.support import require_service

Factory = Callable[[Path], Iterator[Backends]]


def embedded(home: Path) -> Iterator[Backends]:
    settings = Settings(
        home=home,
        broker=BrokerSettings(lease_seconds=1.0, max_deliveries=3),
    )
    b = open_backends(settings)
    yield b
    b.close()


REDIS_URL = "redis://127.0.0.1:6379/0"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def services_settings(home: Path, **overrides: Any) -> Settings:
    """Redis + RabbitMQ settings with a key prefix and queue prefix of their own."""
    require_service("Redis", "127.0.0.1", 6379)
    require_service("RabbitMQ", "127.0.0.1", 5672)
    run = uuid.uuid4().hex[:12]
    values: dict[str, Any] = {
        "home": home,
        "state_url": REDIS_URL,
        "broker_url": AMQP_URL,
        "broker": {"lease_seconds": 1.0, "max_deliveries": 3},
        "redis": {"key_prefix": f"orchestra-test:{run}"},
        "rabbitmq": {"queue_prefix": f"orchestra-test.{run}"},
        **overrides,
    }
    return Settings.model_validate(values)


def services(home: Path) -> Iterator[Backends]:
    b = open_backends(services_settings(home))
    try:
        yield b
    finally:
        cleanup_services(b)


def cleanup_services(b: Backends) -> None:
    """Delete the test's keys and queues, then close the clients."""
    try:
        b.broker.delete_topology()  # type: ignore[attr-defined]
        b.state.purge_namespace()  # type: ignore[attr-defined]
    finally:
        b.close()


def services_plain(home: Path) -> Iterator[Backends]:
    """Services mode with RabbitMQ I/O through pika's public API only (rabbitmq.fast_path off)."""
    settings = services_settings(home)
    settings.rabbitmq.fast_path = False
    b = open_backends(settings)
    try:
        yield b
    finally:
        cleanup_services(b)


FACTORIES: dict[str, Factory] = {"embedded": embedded, "services": services}
BACKEND_KINDS = list(FACTORIES)
# the broker's suite runs on both RabbitMQ I/O paths (broker/pika_fast.py, broker/rabbitmq_io.py)
BROKER_FACTORIES: dict[str, Factory] = {**FACTORIES, "services-plain": services_plain}


@pytest.fixture(params=BACKEND_KINDS)
def contract_backends(request: pytest.FixtureRequest, home: Path) -> Iterator[Backends]:
    """A fresh, isolated set of backends of each kind."""
    yield from FACTORIES[request.param](home)


@pytest.fixture(params=list(BROKER_FACTORIES))
def broker_backends(request: pytest.FixtureRequest, home: Path) -> Iterator[Backends]:
    """Like ``contract_backends``, and services mode once more on the plain RabbitMQ path."""
    yield from BROKER_FACTORIES[request.param](home)


def settings_env(b: Backends) -> dict[str, str]:
    """The environment a child process needs to open these same backends."""
    from tests.support import clean_env

    s = b.settings
    values = {
        "ORCHESTRA_HOME": str(s.home),
        "ORCHESTRA_STATE_URL": s.state_url,
        "ORCHESTRA_BROKER_URL": s.broker_url,
        "ORCHESTRA_REDIS__KEY_PREFIX": s.redis.key_prefix,
        "ORCHESTRA_RABBITMQ__QUEUE_PREFIX": s.rabbitmq.queue_prefix,
    }
    return clean_env({k: v for k, v in values.items() if v is not None})
