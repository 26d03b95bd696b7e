"""Fixtures for backend-only tests of Redis and RabbitMQ (isolated per test)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestra_cli.backends import Backends, open_backends
from tests.contract.conftest import cleanup_services, services_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def svc(home: Path) -> Iterator[Backends]:
    """Redis state + RabbitMQ broker under a fresh key prefix and queue prefix."""
    b = open_backends(services_settings(home))
    try:
        yield b
    finally:
        cleanup_services(b)


def close_connections_named(prefix: str) -> int:
    """Close, from the server side, every RabbitMQ connection whose name starts with prefix."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "client_properties"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    pids = [
        line.split("\t", 1)[0]
        for line in out.splitlines()
        if f'{{"connection_name","{prefix}/' in line
    ]
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "closed by orchestra tests"],
            capture_output=True,
            timeout=60,
            check=False,
        )
    return len(pids)


def delete_queues_with_prefix(prefix: str, url: str) -> None:
    """Delete every queue named ``<prefix>.…`` (including other processes' delay queues)."""
    import pika

    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "--no-table-headers", "name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    names = [n.strip() for n in out.splitlines() if n.strip().startswith(prefix + ".")]
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        for name in names:
            ch.queue_delete(name)
        for exchange in (prefix, f"{prefix}.dlx", f"{prefix}.control"):
            ch.exchange_delete(exchange)
    finally:
        conn.close()
