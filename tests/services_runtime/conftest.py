"""Helpers for `orchestra up/down/ps/logs` tests: free ports, binaries, a service env."""

from __future__ import annotations

import os
import random
import socket
import sys
from pathlib import Path

import pytest

from orchestra_cli.services.native import bao_binary, find_binary, rabbitmq_script


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_service_ports() -> dict[str, int]:
    """Five free ports (vault's + 1 too), away from the defaults and the ephemeral range."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 32_000, 10)
        ports = {
            "REDIS_PORT": base,
            "AMQP_PORT": base + 1,
            "RABBITMQ_DIST_PORT": base + 2,
            "RABBITMQ_MANAGEMENT_PORT": base + 3,
            "VAULT_PORT": base + 4,  # bao also binds base + 5
        }
        if all(port_free(p) for p in range(base, base + 6)):
            return ports
    pytest.fail("no free block of ports found")


def services_env(home: Path, ports: dict[str, int]) -> dict[str, str]:
    """ORCHESTRA_* variables for an isolated deployment on ``ports``."""
    env = {"ORCHESTRA_HOME": str(home)}
    env.update({f"ORCHESTRA_SERVICES__{k}": str(v) for k, v in ports.items()})
    return env


def require_native_binaries() -> None:
    """Skip without redis-server/rabbitmq-server/bao on a laptop; fail in CI."""
    missing = [
        name
        for name, found in (
            ("redis-server", find_binary("redis-server")),
            ("rabbitmq-server", rabbitmq_script("rabbitmq-server")),
            ("bao", bao_binary()),
        )
        if not found
    ]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed (python: {sys.executable})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run the native services test")
    pytest.skip(message)
