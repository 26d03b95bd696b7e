"""Settings: YAML file + ``.env`` + ``ORCHESTRA_*`` environment, checked as ``records``.

Precedence, lowest first: built-in defaults, the config file, ``ORCHESTRA_*``
keys in ``./.env``, ``ORCHESTRA_*`` environment variables (nested with ``__``:
``ORCHESTRA_LLM__OFFLINE__LATENCY_MS``). ``load_settings`` also records where
every value came from, for ``orchestra config show --sources``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec
from msgspec import Meta

from orchestra_cli.errors import ConfigError
from orchestra_cli.records import FieldError, Record, RecordError, one_of

ENV_PREFIX = "ORCHESTRA_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
CONFIG_FILE_NAME = "orchestra.yaml"


class _Section(Record, forbid_unknown_fields=True):
    """A group of settings: unknown keys refused."""


class OfflineLLMSettings(_Section):
    latency_ms: Annotated[int, Meta(ge=0, description="simulated think time per call")] = 0


class ModelPrice(_Section):
    """USD per million tokens for one model (or model-name prefix)."""

    input: Annotated[float, Meta(ge=0)]
    output: Annotated[float, Meta(ge=0)]
    cache_write: Annotated[float, Meta(ge=0, description="default 1.25 × input")] | None = None
    cache_read: Annotated[float, Meta(ge=0, description="default 0.1 × input")] | None = None


class LLMSettings(_Section):
    provider: Literal["auto", "anthropic", "offline"] = "auto"
    model: Annotated[str, Meta(min_length=1)] = "claude-sonnet-5-5"
    max_tokens: Annotated[int, Meta(ge=1)] = 2048
    temperature: Annotated[float, Meta(ge=0, le=1)] = 0.2
    timeout: Annotated[float, Meta(gt=0)] = 60.0
    base_url: Annotated[str, Meta(description="default: ANTHROPIC_BASE_URL or the API")] | None = (
        None
    )
    max_retries: Annotated[
        int, Meta(ge=0, le=20, description="retries on 429/529/5xx/timeouts")
    ] = 4
    retry_backoff_seconds: Annotated[float, Meta(ge=0, description="first backoff, doubled")] = 1.0
    max_reasks: Annotated[
        int, Meta(ge=0, le=10, description="re-asks on invalid structured output")
    ] = 2
    max_continuations: Annotated[
        int, Meta(ge=0, le=10, description="continuations of an answer cut at max_tokens")
    ] = 2
    budget_usd: Annotated[float, Meta(gt=0, description="per task tree")] | None = None
    budget_tokens: Annotated[int, Meta(gt=0, description="per task tree")] | None = None
    prices: Annotated[
        dict[str, ModelPrice], Meta(description="model (or prefix) → price; adds to the built-ins")
    ] = msgspec.field(default_factory=dict)
    offline: OfflineLLMSettings = msgspec.field(default_factory=OfflineLLMSettings)


class VaultSettings(_Section):
    timeout: Annotated[float, Meta(gt=0)] = 5.0
    cache_seconds: Annotated[float, Meta(ge=0, description="in-process secret cache")] = 30.0
    renew_before_seconds: Annotated[float, Meta(ge=0, description="renew the token this early")] = (
        60.0
    )
    approle_mount: str = "approle"


class BrokerSettings(_Section):
    lease_seconds: Annotated[float, Meta(gt=0, description="embedded: claim lease, renewed")] = 30.0
    max_deliveries: Annotated[int, Meta(ge=1, description="deliveries before a poison message")] = 5
    queue_type: Literal["classic", "quorum"] = "classic"


class RedisSettings(_Section):
    """The Redis state store (``state_url: redis://…``)."""

    key_prefix: Annotated[str, Meta(min_length=1, description="namespace of every key")] = (
        "orchestra"
    )
    stream_maxlen: Annotated[int, Meta(ge=1, description="events kept per stream (approx.)")] = (
        100_000
    )
    socket_timeout: Annotated[float, Meta(gt=0, description="seconds per command")] = 5.0
    connect_timeout: Annotated[float, Meta(gt=0)] = 2.0
    health_check_interval: Annotated[int, Meta(ge=0, description="ping idle connections (s)")] = 15
    max_connections: Annotated[int, Meta(ge=1, description="pool size per process")] = 64


class RabbitMQSettings(_Section):
    """The RabbitMQ broker (``broker_url: amqp://…``)."""

    queue_prefix: Annotated[str, Meta(min_length=1, description="namespace of queues")] = (
        "orchestra"
    )
    heartbeat: Annotated[int, Meta(ge=0, description="AMQP heartbeat (s); 0 disables")] = 30
    blocked_connection_timeout: Annotated[float, Meta(gt=0)] = 60.0
    connect_timeout: Annotated[float, Meta(gt=0)] = 5.0
    max_outage_seconds: Annotated[
        float,
        Meta(
            ge=0,
            description="a running consumer gives up (its process exits 3) after RabbitMQ has "
            "been unreachable this long; 0 rides out an outage of any length",
        ),
    ] = 0.0
    fast_path: Annotated[
        bool, Meta(description="pika internals for speed; false: its public API only")
    ] = True


class ServicesSettings(_Section):
    """`orchestra up`: local Redis, RabbitMQ and Vault (OpenBao) for services mode.

    Ports default away from the standard ones so a system Redis/RabbitMQ/Vault
    on the same host is never touched. Vault also binds ``vault_port + 1``
    (its cluster listener).
    """

    runtime: Literal["auto", "docker", "native"] = "auto"
    redis_port: Annotated[int, Meta(ge=1, le=65535)] = 16379
    amqp_port: Annotated[int, Meta(ge=1, le=65535)] = 16672
    rabbitmq_dist_port: Annotated[
        int, Meta(ge=1, le=65535, description="Erlang distribution port (native)")
    ] = 26672
    rabbitmq_management_port: Annotated[int, Meta(ge=1, le=65535, description="docker only")] = (
        16673
    )
    vault_port: Annotated[int, Meta(ge=1, le=65534)] = 18200
    timeout: Annotated[float, Meta(gt=0, description="seconds `up --wait` waits for health")] = (
        120.0
    )
    compose_file: Annotated[Path, Meta(description="default: ./compose.yaml")] | None = None

    def __post_init__(self) -> None:  # every port its own
        ports = {
            "redis_port": self.redis_port,
            "amqp_port": self.amqp_port,
            "rabbitmq_dist_port": self.rabbitmq_dist_port,
            "rabbitmq_management_port": self.rabbitmq_management_port,
            "vault_port": self.vault_port,
            "vault_port + 1": self.vault_port + 1,
        }
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port in seen:
                raise ValueError(f"{seen[port]} and {name} are both {port}; give each its own port")
            seen[port] = name


class NotifySettings(_Section):
    """Webhook notifications (``orchestra run`` sends them; notify.py)."""

    webhook_url: (
        Annotated[
            str, Meta(pattern=r"^https?://", description="POSTed JSON: inbox and tree_failed")
        ]
        | None
    ) = None
    timeout: Annotated[float, Meta(gt=0, description="per delivery attempt")] = 5.0


class AgentSettings(_Section):
    heartbeat_seconds: Annotated[float, Meta(gt=0)] = 2.0
    ttl_seconds: Annotated[float, Meta(gt=0, description="an agent is dead after this silence")] = (
        10.0
    )
    concurrency: Annotated[int, Meta(ge=1, le=256)] = 1
    definitions_dir: Path | None = None
    prune_after_seconds: Annotated[
        float, Meta(gt=0, description="stopped or dead agents leave the registry after this")
    ] = 86400.0
    max_delegation_depth: Annotated[
        int, Meta(ge=0, le=10, description="levels of delegate/spawn below a tree's root")
    ] = 3

    def __post_init__(self) -> None:  # ttl outlasts heartbeats
        if self.ttl_seconds < 2 * self.heartbeat_seconds:
            raise ValueError(
                f"ttl_seconds ({self.ttl_seconds:g}) must be at least twice heartbeat_seconds "
                f"({self.heartbeat_seconds:g}), or every agent counts as dead between beats"
            )


class TaskSettings(_Section):
    review_plans: Annotated[
        bool, Meta(description="every tree's plan waits for `task approve` before it runs")
    ] = False
    default_timeout: Annotated[float, Meta(gt=0)] = 600.0
    default_max_attempts: Annotated[int, Meta(ge=1, le=100)] = 3
    max_input_bytes: Annotated[int, Meta(ge=1)] = 1_000_000
    retry_backoff_seconds: Annotated[float, Meta(ge=0)] = 1.0
    default_capability: str = "code"
    recovery_interval_seconds: Annotated[
        float, Meta(ge=0, description="orchestrator's stuck-work sweep; 0 disables")
    ] = 15.0


class LogSettings(_Section):
    level: str = "INFO"
    max_bytes: Annotated[int, Meta(ge=1024)] = 10_000_000
    backups: Annotated[int, Meta(ge=0)] = 5

    def __post_init__(self) -> None:  # any case: ORCHESTRA_LOG__LEVEL=debug
        self.level = self.level.upper()
        if self.level not in LOG_LEVELS:
            raise FieldError("level", f"Input should be {one_of(LOG_LEVELS)}")


def _default_home() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("orchestra", appauthor=False))


class Settings(_Section):
    """Every documented setting (README, ``orchestra config show``)."""

    home: Path = msgspec.field(default_factory=_default_home)
    environment: Literal["development", "staging", "production"] = "development"
    state_url: str | None = None
    broker_url: str | None = None
    secrets_url: str = "env"
    prompts_dir: Path | None = None
    llm: LLMSettings = msgspec.field(default_factory=LLMSettings)
    vault: VaultSettings = msgspec.field(default_factory=VaultSettings)
    broker: BrokerSettings = msgspec.field(default_factory=BrokerSettings)
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    rabbitmq: RabbitMQSettings = msgspec.field(default_factory=RabbitMQSettings)
    agents: AgentSettings = msgspec.field(default_factory=AgentSettings)
    services: ServicesSettings = msgspec.field(default_factory=ServicesSettings)
    tasks: TaskSettings = msgspec.field(default_factory=TaskSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    notify: NotifySettings = msgspec.field(default_factory=NotifySettings)

    def __post_init__(self) -> None:
        self.home = self.home.expanduser()

    @property
    def db_path(self) -> Path:
        return self.home / "orchestra.db"

    @property
    def effective_state_url(self) -> str:
        return self.state_url or f"sqlite:///{self.db_path}"

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.effective_state_url

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"


@dataclass
class LoadedSettings:
    """Settings plus where each value came from."""

    settings: Settings
    config_file: Path | None
    sources: dict[str, str] = field(default_factory=dict)


def mask_url(url: str) -> str:
    """``amqp://guest:***@host/`` — a URL with its password hidden."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse a ``.env`` file: ``KEY=value``, ``export KEY=value``, quotes, comments."""
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return values
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", "fix or remove the file") from exc
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"{path}:{lineno}: expected KEY=value", "fix the line")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def find_config_file(explicit: str | None, env: Mapping[str, str], cwd: Path) -> Path | None:
    """The config file in effect: ``--config``, ``$ORCHESTRA_CONFIG``, ./, user dir."""
    if explicit:
        return _config_file(Path(explicit).expanduser(), "", "check the --config path")
    if env.get("ORCHESTRA_CONFIG"):
        path = Path(env["ORCHESTRA_CONFIG"]).expanduser()
        return _config_file(path, " (from ORCHESTRA_CONFIG)", "fix or unset ORCHESTRA_CONFIG")
    local = _found(cwd / CONFIG_FILE_NAME)
    if local is not None:
        return local
    from platformdirs import user_config_dir

    return _found(Path(user_config_dir("orchestra", appauthor=False)) / CONFIG_FILE_NAME)


def _found(path: Path) -> Path | None:
    """A config file looked for by name: None when absent, ConfigError for a directory."""
    if path.is_dir():
        _config_file(path, "", f"remove or rename the directory {path}")
    return path if path.is_file() else None


def _config_file(path: Path, source: str, hint: str) -> Path:
    """``path`` if it is a file; ConfigError saying what it is instead."""
    if path.is_dir():
        raise ConfigError(f"config file {path}{source} is a directory", hint)
    if not path.is_file():
        raise ConfigError(f"config file {path}{source} not found", hint)
    return path


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    # libyaml's parser where PyYAML has it (a `task submit` reads every role file:
    # 17 ms of profile time with the pure-Python SafeLoader, ~1 ms with this one)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where}: {problem}", "fix the YAML syntax") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", "check the file") from exc
    except RecursionError:
        raise ConfigError(
            f"{path}: nested too deeply", "fix the YAML: keys nest a few deep"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys", "see `orchestra init`")
    return data


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = target
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            nxt = node[part] = {}
        node = nxt
    node[parts[-1]] = value


def _env_overrides(env: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """``ORCHESTRA_LLM__MODEL`` → ``llm.model``, for keys naming a known setting;
    each with (the variable it came from, its value)."""
    known = set(Settings.__struct_fields__)
    out: dict[str, tuple[str, str]] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        if dotted.split(".")[0] in known:
            out[dotted] = (name, value)
        else:  # a secret (ORCHESTRA_API_TOKEN), ORCHESTRA_CONFIG…, or a misspelt setting
            _refuse_near_miss(name, dotted.split(".")[0], known)
    if "ORCHESTRA_ENV" in env and "environment" not in out:
        out["environment"] = ("ORCHESTRA_ENV", env["ORCHESTRA_ENV"])
    return out


def _refuse_near_miss(name: str, key: str, known: set[str]) -> None:
    """ConfigError for a variable one typo away from a setting (``ORCHESTRA_STATE_ULR``):
    ignored, it would leave that setting at its default without a word."""
    import difflib

    close = difflib.get_close_matches(key, known, n=1, cutoff=0.85)
    if close:
        meant = ENV_PREFIX + close[0].upper() + name[len(ENV_PREFIX) + len(key) :]
        raise ConfigError(
            f"{name} is not a setting: did you mean {meant}?",
            f"rename it to {meant}, or unset it (`orchestra config show` lists every key)",
        )


def _section_origin(section: str, message: str, sources: Mapping[str, str]) -> str:
    """Where a section's own check got its keys: those its message names, else any."""
    keys = [key for key in sources if key.startswith(section + ".")]
    named = [key for key in keys if key.rsplit(".", 1)[-1] in message]
    found = list(dict.fromkeys(sources[key] for key in (named or keys)))
    return ", ".join(found) if found else "configuration"


def _describe_error(exc: RecordError, sources: Mapping[str, str]) -> ConfigError:
    err = exc.errors()[0]
    dotted = ".".join(str(p) for p in err["loc"])
    origin = sources.get(dotted) or _section_origin(dotted, str(err["msg"]), sources)
    if err["type"] == "extra_forbidden":
        return ConfigError(
            f"{origin}: unknown key {dotted!r}",
            "remove it or check the spelling (`orchestra config show` lists every key)",
        )
    message = err["msg"].removeprefix("Value error, ")
    return ConfigError(f"{origin}: {dotted}: {message}", f"fix {dotted} in {origin}")


def load_settings(
    config: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> LoadedSettings:
    """Build the effective settings and their sources; raise ConfigError on bad input."""
    env = os.environ if env is None else env
    cwd = cwd or Path.cwd()
    path = find_config_file(config, env, cwd)
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path is not None:
        for dotted, value in _flatten(read_yaml(path)).items():
            _set_dotted(merged, dotted, value)
            sources[dotted] = str(path)
    layers = [
        (".env", _env_overrides(read_dotenv(cwd / ".env"))),
        ("env", _env_overrides(env)),
    ]
    for label, overrides in layers:
        for dotted, (var, value) in overrides.items():
            _set_dotted(merged, dotted, value)
            sources[dotted] = f"{label} {var}" if label == ".env" else var
    try:
        settings = Settings.model_validate(merged)
    except RecordError as exc:
        raise _describe_error(exc, sources) from None
    return LoadedSettings(settings=settings, config_file=path, sources=sources)


def settings_rows(loaded: LoadedSettings) -> list[tuple[str, Any, str]]:
    """(key, value, source) for every setting, URLs masked, effective URLs filled in."""
    s = loaded.settings
    data = _flatten(s.model_dump(mode="json"))
    data["state_url"] = s.effective_state_url
    data["broker_url"] = s.effective_broker_url
    rows = []
    for key in sorted(data):
        value = data[key]
        if isinstance(value, str) and "://" in value:
            value = mask_url(value)
        source = loaded.sources.get(key, "default")
        if key in ("state_url", "broker_url") and getattr(s, key) is None:
            source = "default (embedded)"
        rows.append((key, value, source))
    return rows
