"""The docker runtime: ``docker compose -f compose.yaml -p orchestra …``.

Ports and the Vault dev token reach compose through the same variables the
settings use (``ORCHESTRA_SERVICES__REDIS_PORT``…, ``BAO_DEV_ROOT_TOKEN_ID``),
so both runtimes publish the services at the same URLs. Health waiting uses
the shared protocol probes on the published ports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestra_cli.errors import ServiceError
from orchestra_cli.services import definitions as defs
from orchestra_cli.services.base import ProgressFn, ServiceStatus, UpReport, wait_healthy
from orchestra_cli.settings import Settings

PROJECT = "orchestra"
INFO_TIMEOUT = 15.0
COMPOSE_TIMEOUT = 600.0  # pulls can be slow; --wait is ours, not compose's
HINT = "start the Docker engine, or use --runtime native"


def engine_available() -> bool:
    """Whether ``docker info`` reaches an engine (what ``--runtime auto`` asks)."""
    return _engine_problem() is None


def _engine_problem() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "docker not found"
    try:
        proc = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=INFO_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`docker info` failed: {exc}"
    if proc.returncode != 0 or not proc.stdout.strip():
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"exit {proc.returncode}"
        return f"the Docker engine is not reachable ({detail})"
    return None


class DockerRuntime:
    """``ServiceRuntime`` over compose.yaml."""

    name = "docker"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ports = defs.service_ports(settings)

    def compose_file(self) -> Path:
        """``services.compose_file``, else ./compose.yaml, else the one in this checkout."""
        configured = self.settings.services.compose_file
        candidates = [configured] if configured else []
        candidates += [Path.cwd() / "compose.yaml", Path(__file__).parents[2] / "compose.yaml"]
        for path in candidates:
            if path is not None and path.is_file():
                return path
        raise ServiceError(
            "compose.yaml not found",
            "run from the orchestra checkout or set services.compose_file",
        )

    def command(self, *args: str) -> list[str]:
        """The full ``docker compose`` argv for ``args``."""
        return ["docker", "compose", "-f", str(self.compose_file()), "-p", PROJECT, *args]

    def compose_env(self, token: str) -> dict[str, str]:
        """The process environment plus the ports and token compose.yaml interpolates."""
        s = self.settings.services
        env = dict(os.environ)
        for key in ("redis_port", "amqp_port", "rabbitmq_management_port", "vault_port"):
            env[f"ORCHESTRA_SERVICES__{key.upper()}"] = str(getattr(s, key))
        env[defs.TOKEN_ENV] = token
        return env

    def _require_engine(self) -> None:
        problem = _engine_problem()
        if problem:
            raise ServiceError(problem, HINT)
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=INFO_TIMEOUT, check=False
        )
        if probe.returncode != 0:
            raise ServiceError(
                "`docker compose` is not available",
                "install the Docker Compose plugin, or use --runtime native",
            )

    def _run(self, *args: str, token: str = "", timeout: float = COMPOSE_TIMEOUT) -> str:
        try:
            proc = subprocess.run(
                self.command(*args),
                env=self.compose_env(token or defs.vault_token(self.settings)),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceError(f"docker compose {args[0]} failed: {exc}", HINT) from exc
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            raise ServiceError(
                f"docker compose {args[0]} failed: {lines[-1] if lines else proc.returncode}",
                "see the output of `docker compose -p orchestra logs`",
            )
        return proc.stdout

    def up(
        self,
        *,
        wait: bool,
        timeout: float,
        progress: ProgressFn,
        services: tuple[str, ...] = defs.SERVICE_NAMES,
    ) -> UpReport:
        """``compose up -d [SERVICE…]`` (idempotent by nature), then our health wait."""
        self._require_engine()
        token = defs.vault_token(self.settings)  # compose.yaml reads it, even without vault
        before = {s.name for s in self.status() if s.running}
        for name in services:
            progress(name, "already running" if name in before else "starting", "")
        self._run("up", "-d", *services, token=token)
        defs.write_runtime_marker(self.settings, self.name)
        report = UpReport(runtime=self.name)
        report.already_running = [n for n in services if n in before]
        report.started = [n for n in services if n not in before]
        for name in report.started:
            progress(name, "started", "container up")
        if wait:
            probes = defs.health_probes(self.settings, services)
            wait_healthy(probes, timeout=timeout, progress=progress)
        report.statuses = self.status()
        report.env = defs.connection_env(
            self.settings, token if "vault" in services else "", services
        )
        return report

    def down(self, *, volumes: bool, timeout: float, progress: ProgressFn) -> list[str]:
        """``compose down [--volumes]``."""
        self._require_engine()
        running = [s.name for s in self.status() if s.running]
        for name in running:
            progress(name, "stopping", "")
        args = ["down", "--timeout", str(int(timeout))] + (["--volumes"] if volumes else [])
        self._run(*args)
        for name in running:
            progress(name, "stopped", "")
        return running

    def status(self) -> list[ServiceStatus]:
        """``compose ps --format json`` joined with our probes."""
        self._require_engine()
        rows = _parse_ps(self._run("ps", "--all", "--format", "json", timeout=60))
        probes = defs.health_probes(self.settings)
        out = []
        for name in defs.SERVICE_NAMES:
            row = rows.get(name, {})
            running = row.get("State") == "running"
            reason = probes[name]() if running else "not running"
            out.append(
                ServiceStatus(
                    name,
                    running=running,
                    healthy=running and reason is None,
                    port=self.ports[name].port,
                    started_at=_created(row) if running else None,
                    detail=(reason or "") if running else str(row.get("Status", "")),
                )
            )
        return out

    def log_lines(self, service: str | None, *, follow: bool, tail: int | None) -> Iterator[str]:
        """``compose logs [-f] [--tail N] [SERVICE]``, streamed."""
        self._require_engine()
        args = ["logs", "--no-color"] + (["-f"] if follow else [])
        args += ["--tail", str(tail)] if tail is not None else []
        args += [service] if service else []
        env = self.compose_env(defs.vault_token(self.settings))
        with subprocess.Popen(
            self.command(*args), env=env, stdout=subprocess.PIPE, text=True
        ) as proc:
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    yield line.rstrip("\n")
            finally:
                proc.terminate()


def _parse_ps(text: str) -> dict[str, dict[str, Any]]:
    # compose v2 prints one JSON object per line (older: one JSON array)
    text = text.strip()
    if not text:
        return {}
    items: list[Any]
    if text.startswith("["):
        items = json.loads(text)
    else:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {str(i.get("Service")): i for i in items if isinstance(i, dict)}


def _created(row: dict[str, Any]) -> float | None:
    created = row.get("CreatedAt")
    if not isinstance(created, str):
        return None
    from datetime import datetime

    try:
        # "2024-05-01 10:00:00 +0000 UTC"
        return datetime.strptime(created[:25], "%Y-%m-%d %H:%M:%S %z").timestamp()
    except ValueError:
        return time.time()
