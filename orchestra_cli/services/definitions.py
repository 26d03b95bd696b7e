"""The three services: names, ports, where their files live, what to export."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from orchestra_cli.services import probes
from orchestra_cli.services.base import Probe
from orchestra_cli.settings import Settings

HOST = "127.0.0.1"
SERVICE_NAMES = ("redis", "rabbitmq", "vault")
TOKEN_ENV = "BAO_DEV_ROOT_TOKEN_ID"  # the variable `bao server -dev` itself reads
RUNTIME_MARKER = "runtime"
SELECTED_MARKER = "selected"  # the services the last `up --services` asked for


@dataclass(frozen=True)
class ServicePorts:
    """The ports one service binds: (port, the setting that chooses it), main port first."""

    name: str
    bound: tuple[tuple[int, str], ...]

    @property
    def port(self) -> int:
        return self.bound[0][0]


def setting_env_var(setting: str) -> str:
    """``redis_port`` → ``ORCHESTRA_SERVICES__REDIS_PORT``."""
    return f"ORCHESTRA_SERVICES__{setting.upper()}"


def service_ports(settings: Settings) -> dict[str, ServicePorts]:
    """Every port each service binds on 127.0.0.1 (native runtime)."""
    s = settings.services
    return {
        "redis": ServicePorts("redis", ((s.redis_port, "redis_port"),)),
        "rabbitmq": ServicePorts(
            "rabbitmq",
            ((s.amqp_port, "amqp_port"), (s.rabbitmq_dist_port, "rabbitmq_dist_port")),
        ),
        # bao's dev server also listens on port + 1 for cluster traffic
        "vault": ServicePorts(
            "vault", ((s.vault_port, "vault_port"), (s.vault_port + 1, "vault_port"))
        ),
    }


def services_dir(settings: Settings) -> Path:
    """``<home>/services``: one folder per service (data, logs, pid/state)."""
    return settings.home / "services"


def rabbitmq_node(settings: Settings) -> str:
    """The Erlang node name; unique per AMQP port so two deployments never clash in epmd."""
    return f"orchestra-{settings.services.amqp_port}@localhost"


def vault_token(settings: Settings) -> str:
    """The dev root token: ``$BAO_DEV_ROOT_TOKEN_ID``, else one generated once and kept (0600)."""
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    path = services_dir(settings) / "vault" / "root-token"
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    import secrets

    token = "orchestra-" + secrets.token_urlsafe(18)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return token


def select_services(spec: str | None) -> tuple[str, ...]:
    """``redis,rabbitmq`` → those services, in start order; None or empty: all three."""
    from orchestra_cli.errors import UsageError

    names = [n.strip().lower() for n in (spec or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in SERVICE_NAMES]
    if unknown:
        raise UsageError(
            f"unknown service {unknown[0]!r}",
            f"choose from {', '.join(SERVICE_NAMES)} (comma-separated)",
        )
    return tuple(n for n in SERVICE_NAMES if n in names) if names else SERVICE_NAMES


def connection_env(
    settings: Settings, token: str, services: tuple[str, ...] = SERVICE_NAMES
) -> dict[str, str]:
    """The variables that point orchestra (and the bao CLI) at these services."""
    s = settings.services
    env = {
        "redis": {"ORCHESTRA_STATE_URL": f"redis://{HOST}:{s.redis_port}/0"},
        "rabbitmq": {"ORCHESTRA_BROKER_URL": f"amqp://guest:guest@{HOST}:{s.amqp_port}/%2F"},
        "vault": {
            "ORCHESTRA_SECRETS_URL": f"vault://{HOST}:{s.vault_port}/secret/orchestra",
            "VAULT_TOKEN": token,
            "BAO_ADDR": f"http://{HOST}:{s.vault_port}",
        },
    }
    return {k: v for name in services for k, v in env[name].items()}


def health_probes(
    settings: Settings, services: tuple[str, ...] = SERVICE_NAMES
) -> dict[str, Probe]:
    """One real protocol-level health check per service."""
    s = settings.services
    every: dict[str, Probe] = {
        "redis": lambda: probes.redis_ping(HOST, s.redis_port),
        "rabbitmq": lambda: probes.amqp_login(HOST, s.amqp_port),
        "vault": lambda: probes.vault_health(HOST, s.vault_port),
    }
    return {name: every[name] for name in services}


def write_env_file(path: Path, env: dict[str, str]) -> None:
    """``KEY=value`` lines (mode 600: the file holds the Vault token)."""
    text = "".join(f"{key}={value}\n" for key, value in env.items())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("# written by `orchestra up`; load with `set -a; . FILE; set +a`\n" + text)
    os.chmod(path, 0o600)  # an existing file keeps its old mode otherwise


def read_runtime_marker(settings: Settings) -> str | None:
    """The runtime the last ``up`` used (so ps/down/logs look in the same place)."""
    try:
        value = (services_dir(settings) / RUNTIME_MARKER).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return value if value in ("docker", "native") else None


def write_runtime_marker(settings: Settings, runtime: str) -> None:
    """Record which runtime ``up`` used."""
    base = services_dir(settings)
    base.mkdir(parents=True, exist_ok=True)
    (base / RUNTIME_MARKER).write_text(runtime + "\n", encoding="utf-8")


def write_selected(settings: Settings, services: tuple[str, ...]) -> None:
    """Record which services ``up`` was asked for (``ps`` judges only those)."""
    base = services_dir(settings)
    base.mkdir(parents=True, exist_ok=True)
    (base / SELECTED_MARKER).write_text(",".join(services) + "\n", encoding="utf-8")


def read_selected(settings: Settings) -> tuple[str, ...]:
    """The services the last ``up`` started (all three when it named none)."""
    try:
        text = (services_dir(settings) / SELECTED_MARKER).read_text(encoding="utf-8")
    except OSError:
        return SERVICE_NAMES
    return select_services(text.strip())
