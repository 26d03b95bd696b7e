"""The SecretsProvider protocol and the provider chain."""

from __future__ import annotations

from typing import Any, Protocol

from orchestra_cli.logs import register_secret

# Names orchestra looks up; `config show` reports whether each resolves.
KNOWN_SECRETS = ("ANTHROPIC_API_KEY", "ORCHESTRA_API_TOKEN", "ORCHESTRA_WEBHOOK_SECRET")


class SecretsProvider(Protocol):
    """Resolves a secret by name; None when this provider does not have it.

    ``get`` registers every value it returns for redaction, so no log line,
    error or report prints it; an unreachable backend raises
    ``SecretsUnavailable``. ``health`` never raises for the backend's state: it
    returns ``health_report``'s shape.
    """

    name: str

    def get(self, key: str) -> str | None: ...

    def health(self) -> dict[str, Any]: ...


def health_report(
    provider: str, url: str, error: str | None = None, **extra: Any
) -> dict[str, Any]:
    """``{"ok", "provider", "url", "error", …}``: the same keys from every provider
    (``error`` is None when ``ok``, else one line saying what is wrong)."""
    return {"ok": error is None, "provider": provider, "url": url, "error": error, **extra}


class ChainSecrets:
    """Asks each provider in turn (Vault → environment → .env)."""

    name = "chain"

    def __init__(self, providers: list[SecretsProvider]) -> None:
        self.providers = providers

    def get(self, key: str) -> str | None:
        value, _ = self.lookup(key)
        return value

    def lookup(self, key: str) -> tuple[str | None, str | None]:
        """The value and the name of the provider that had it."""
        for provider in self.providers:
            value = provider.get(key)
            if value:
                register_secret(value)
                return value, provider.name
        return None, None

    def health(self) -> dict[str, Any]:
        """Ok when every provider is; ``providers`` holds each one's report."""
        reports = [p.health() for p in self.providers]
        error = next((r["error"] for r in reports if not r["ok"]), None)
        url = " → ".join(str(r["url"]) for r in reports)
        return health_report(self.name, url, error, providers=reports)
