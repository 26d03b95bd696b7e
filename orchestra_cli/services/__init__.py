"""Bring Redis, RabbitMQ and Vault (OpenBao) up and down for services mode.

``base`` holds the ``ServiceRuntime`` seam; ``native`` runs local
``redis-server`` / ``rabbitmq-server`` / ``bao`` processes, ``docker`` runs
``compose.yaml``; ``definitions`` knows the services, their ports and the
URLs to export; ``probes`` are the health checks both runtimes share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestra_cli.services.base import ServiceRuntime
    from orchestra_cli.settings import Settings

RUNTIMES = ("auto", "docker", "native")


def select_runtime(settings: Settings, choice: str | None, *, for_up: bool) -> ServiceRuntime:
    """The runtime to use: explicit choice, else ``services.runtime``, else auto-detect.

    ``auto`` picks docker only when the engine answers. For ps/down/logs it first
    honours the runtime the last ``up`` recorded, so they find what ``up`` started.
    """
    from orchestra_cli.services.definitions import read_runtime_marker
    from orchestra_cli.services.docker import DockerRuntime, engine_available
    from orchestra_cli.services.native import NativeRuntime

    chosen = choice or settings.services.runtime
    if chosen == "auto" and not for_up:
        chosen = read_runtime_marker(settings) or "auto"
    if chosen == "auto":
        chosen = "docker" if engine_available() else "native"
    if chosen == "docker":
        return DockerRuntime(settings)
    return NativeRuntime(settings)
