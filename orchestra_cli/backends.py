"""The client factory: build state, broker, secrets and LLM clients from settings.

The backend follows the URLs (``state_url``, ``broker_url``, ``secrets_url``),
so one environment variable moves a deployment from SQLite to services.
Heavy client libraries are imported here, lazily, and nowhere above.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestra_cli.broker.base import Broker
from orchestra_cli.errors import ConfigError
from orchestra_cli.logs import Journals
from orchestra_cli.secrets.base import ChainSecrets, SecretsProvider
from orchestra_cli.settings import Settings, mask_url
from orchestra_cli.state.base import StateStore

if TYPE_CHECKING:  # its dataclasses cost a CLI query ~6 ms to build; it needs none of them
    from orchestra_cli.llm.base import LLMProvider


def _sqlite_path(url: str) -> Path:
    if not url.startswith("sqlite:///"):
        raise ConfigError(f"not a sqlite URL: {mask_url(url)}", "use sqlite:///PATH")
    return Path(url[len("sqlite:///") :]).expanduser()


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


@dataclass
class Backends:
    """The clients one process uses; close them on shutdown."""

    settings: Settings
    state: StateStore
    broker: Broker
    journals: Journals
    _closers: list[Any] = field(default_factory=list)

    def start_background(self) -> None:
        """Upkeep for a long-running process: embedded SQLite files checkpoint in the
        background (sqlitedb.py), off the writers' path."""
        from orchestra_cli.sqlitedb import SQLiteDB

        for db in {
            id(d): d for d in (getattr(self.state, "db", None), getattr(self.broker, "db", None))
        }.values():
            if isinstance(db, SQLiteDB):
                db.start_checkpointer()

    def close(self) -> None:
        for closer in [*self._closers, self.journals.close]:
            try:
                closer()
            except Exception:  # closing is best effort on shutdown
                pass
        self._closers.clear()


def _check_pairing(state_url: str, broker_url: str) -> str:
    """``embedded`` or ``services``; a mix of the two is a clear error."""
    redis_state = _scheme(state_url) in ("redis", "rediss")
    amqp_broker = _scheme(broker_url) in ("amqp", "amqps")
    if redis_state and amqp_broker:
        return "services"
    if redis_state:
        raise ConfigError(
            f"state_url is {mask_url(state_url)} but broker_url is {mask_url(broker_url)}",
            "with Redis, set ORCHESTRA_BROKER_URL=amqp://user:pass@host:5672/%2F as well",
        )
    if amqp_broker:
        raise ConfigError(
            f"broker_url is {mask_url(broker_url)} but state_url is {mask_url(state_url)}",
            "with RabbitMQ, set ORCHESTRA_STATE_URL=redis://host:6379/0 as well",
        )
    for url, key in ((state_url, "state_url"), (broker_url, "broker_url")):
        if _scheme(url) != "sqlite":
            raise ConfigError(
                f"{key} {mask_url(url)}: unsupported scheme {_scheme(url) or '(none)'!r}",
                "use sqlite:///PATH, redis://HOST:PORT/DB or amqp://USER:PASS@HOST:PORT/VHOST",
            )
    return "embedded"


def mode_of(settings: Settings) -> str:
    """``embedded`` or ``services``, from the URLs in the settings."""
    return _check_pairing(settings.effective_state_url, settings.effective_broker_url)


def open_state(settings: Settings, db: Any = None, *, patient: bool = True) -> StateStore:
    """The state store named by ``state_url``; ``patient=False``: a one-shot command's,
    which gives up on an unreachable Redis within its connect timeout."""
    url = settings.effective_state_url
    if mode_of(settings) == "services":
        from orchestra_cli.state.redis import RedisStateStore

        return RedisStateStore(url, settings.redis, patient=patient)
    from orchestra_cli.sqlitedb import SQLiteDB
    from orchestra_cli.state.sqlite import SQLiteStateStore

    return SQLiteStateStore(db or SQLiteDB(_sqlite_path(url)))


def open_broker(settings: Settings, db: Any = None) -> Broker:
    """The broker named by ``broker_url``."""
    url = settings.effective_broker_url
    if mode_of(settings) == "services":
        from orchestra_cli.broker.rabbitmq import RabbitBroker

        return RabbitBroker(
            url,
            settings.rabbitmq,
            queue_type=settings.broker.queue_type,
            max_deliveries=settings.broker.max_deliveries,
        )
    from orchestra_cli.broker.sqlite import SQLiteBroker
    from orchestra_cli.sqlitedb import SQLiteDB

    return SQLiteBroker(
        db or SQLiteDB(_sqlite_path(url)),
        lease_seconds=settings.broker.lease_seconds,
        max_deliveries=settings.broker.max_deliveries,
    )


def open_backends(settings: Settings, *, patient: bool = True) -> Backends:
    """Connect to the state store and broker named by the settings (``patient``: see
    ``open_state``)."""
    db = None
    if mode_of(settings) == "embedded" and (
        settings.effective_state_url == settings.effective_broker_url
    ):
        from orchestra_cli.sqlitedb import SQLiteDB

        db = SQLiteDB(_sqlite_path(settings.effective_state_url))  # one file, one connection
    state = open_state(settings, db, patient=patient)
    broker = open_broker(settings, db)
    backends = Backends(settings, state, broker, Journals(settings.home))
    backends._closers.extend([broker.close, state.close])
    return backends


def open_secrets(settings: Settings, cwd: Path | None = None) -> ChainSecrets:
    """The provider chain for ``secrets_url``: (Vault →) environment → ``.env``."""
    from orchestra_cli.secrets.env import DotenvSecrets, EnvSecrets

    providers: list[SecretsProvider] = []
    scheme = _scheme(settings.secrets_url)
    if scheme in ("vault", "vaults"):
        from orchestra_cli.secrets.vault import VaultSecrets

        providers.append(VaultSecrets(settings.secrets_url, settings.vault))
    elif settings.secrets_url != "env":
        raise ConfigError(
            f"secrets_url {mask_url(settings.secrets_url)} is not supported",
            "use env or vault://host:port/mount/path",
        )
    providers += [EnvSecrets(), DotenvSecrets((cwd or Path.cwd()) / ".env")]
    return ChainSecrets(providers)


def open_llm(settings: Settings, secrets: SecretsProvider) -> LLMProvider:
    """The provider in effect: ``llm.provider``, or offline when no API key resolves."""
    from orchestra_cli.llm.offline import OfflineProvider

    provider = settings.llm.provider
    if provider == "offline":
        return OfflineProvider(settings.llm.offline.latency_ms)
    api_key = secrets.get("ANTHROPIC_API_KEY")
    if not api_key:
        if provider == "anthropic":
            raise ConfigError(
                "llm.provider is anthropic but ANTHROPIC_API_KEY does not resolve",
                "set ANTHROPIC_API_KEY (environment, .env or Vault) or use "
                "ORCHESTRA_LLM__PROVIDER=offline",
            )
        return OfflineProvider(settings.llm.offline.latency_ms)
    from orchestra_cli.llm.anthropic import AnthropicProvider

    llm = settings.llm
    return AnthropicProvider(
        api_key,
        base_url=llm.base_url,
        timeout=llm.timeout,
        max_attempts=llm.max_retries + 1,
        backoff_seconds=llm.retry_backoff_seconds,
    )
