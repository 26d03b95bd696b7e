"""The SecretsProvider protocol and the provider chain."""

from __future__ import annotations

from typing import Protocol

from orchestra_cli.logs import register_secret

# Names orchestra looks up; `config show` reports whether each resolves.
KNOWN_SECRETS = ("ANTHROPIC_API_KEY", "ORCHESTRA_API_TOKEN", "ORCHESTRA_WEBHOOK_SECRET")


class SecretsProvider(Protocol):
    """Resolves a secret by name; None when this provider does not have it."""

    name: str

    def get(self, key: str) -> str | None: ...


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
