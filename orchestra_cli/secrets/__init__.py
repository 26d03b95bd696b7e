"""The secrets seam: look a secret up by name."""

from orchestra_cli.secrets.base import SecretsProvider

__all__ = ["SecretsProvider"]
