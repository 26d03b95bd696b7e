"""The seam between `orchestra up/down/ps/logs` and whatever runs the services.

A ``ServiceRuntime`` starts, stops, inspects and tails Redis, RabbitMQ and
Vault. Both runtimes report progress through a ``ProgressFn`` (the CLI draws
it) and share ``wait_healthy``, so ``--wait`` means the same real health
checks whichever runtime started the processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestra_cli.errors import ServiceError

# (service, phase, detail). Phases: starting, started, already running,
# waiting, healthy, failed, stopping, stopped, removed (down --volumes).
ProgressFn = Callable[[str, str, str], None]
# A health check: None when healthy, else a short reason.
Probe = Callable[[], "str | None"]
POLL_SECONDS = 0.25


def no_progress(service: str, phase: str, detail: str) -> None:
    """A ProgressFn that shows nothing."""


@dataclass(frozen=True)
class ServiceStatus:
    """One service as ``ps`` sees it."""

    name: str
    running: bool
    healthy: bool
    port: int
    pid: int | None = None
    started_at: float | None = None
    detail: str = ""

    def uptime(self, now: float | None = None) -> float | None:
        """Seconds since start, when running and known."""
        if not self.running or self.started_at is None:
            return None
        return max(0.0, (now or time.time()) - self.started_at)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` shape of one service."""
        uptime = self.uptime()
        return {
            "name": self.name,
            "running": self.running,
            "healthy": self.healthy,
            "pid": self.pid,
            "port": self.port,
            "uptime_seconds": None if uptime is None else round(uptime, 1),
            "detail": self.detail,
        }


@dataclass
class UpReport:
    """What ``up`` did and what to export to use the services."""

    runtime: str
    started: list[str] = field(default_factory=list)
    already_running: list[str] = field(default_factory=list)
    statuses: list[ServiceStatus] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


class ServiceRuntime(Protocol):
    """Runs the three services: local processes (native) or containers (docker)."""

    name: str

    def up(
        self,
        *,
        wait: bool,
        timeout: float,
        progress: ProgressFn,
        services: tuple[str, ...] = ("redis", "rabbitmq", "vault"),
    ) -> UpReport:
        """Start ``services`` where not running (idempotent); with ``wait``, until healthy."""
        ...

    def down(self, *, volumes: bool, timeout: float, progress: ProgressFn) -> list[str]:
        """Stop every service gracefully; ``volumes`` also deletes their data."""
        ...

    def status(self) -> list[ServiceStatus]:
        """Each service: running, pid, port, health, uptime."""
        ...

    def log_lines(self, service: str | None, *, follow: bool, tail: int | None) -> Iterator[str]:
        """Log lines of one service or all (prefixed), following when asked."""
        ...


STILL_UP = "; the others keep running (`orchestra down` stops them)"


def wait_healthy(
    probes: Mapping[str, Probe],
    *,
    timeout: float,
    progress: ProgressFn,
    exited: Callable[[str], str | None] | None = None,
) -> dict[str, float]:
    """Poll every probe until all pass; return seconds each took.

    ``exited(name)`` says why a service's process is gone (it died while
    starting), so that fails at once with the reason instead of at the timeout.
    """
    start = time.monotonic()
    pending = dict(probes)
    reasons: dict[str, str] = {}
    took: dict[str, float] = {}
    for name in pending:
        progress(name, "waiting", "health check")
    while pending:
        for name, probe in list(pending.items()):
            reason = probe()
            if reason is None:
                took[name] = time.monotonic() - start
                progress(name, "healthy", f"after {took[name]:.1f}s")
                del pending[name]
                continue
            reasons[name] = reason
            gone = exited(name) if exited else None
            if gone:
                progress(name, "failed", gone)
                raise ServiceError(f"{name} {gone}", f"see `orchestra logs {name}`{STILL_UP}")
        if pending and time.monotonic() - start > timeout:
            name = next(iter(pending))
            progress(name, "failed", reasons.get(name, "not healthy"))
            raise ServiceError(
                f"{', '.join(pending)} not healthy after {timeout:.0f}s "
                f"({name}: {reasons.get(name, 'no answer')})",
                f"see `orchestra logs {name}` or raise --timeout{STILL_UP}",
            )
        if pending:
            time.sleep(POLL_SECONDS)
    return took
