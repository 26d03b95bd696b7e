"""Secrets from the process environment and from ``./.env``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestra_cli.errors import ConfigError
from orchestra_cli.logs import register_secret
from orchestra_cli.secrets.base import health_report
from orchestra_cli.settings import read_dotenv


def _found(value: str | None) -> str | None:
    """An empty value is no value; a found one is masked from then on."""
    if not value:
        return None
    register_secret(value)
    return value


class EnvSecrets:
    name = "env"

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if env is None else env

    def get(self, key: str) -> str | None:
        return _found(self._env.get(key))

    def health(self) -> dict[str, Any]:
        """The environment is always there."""
        return health_report(self.name, "env")


class DotenvSecrets:
    name = ".env"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._values: dict[str, str] | None = None

    def get(self, key: str) -> str | None:
        if self._values is None:
            self._values = read_dotenv(self.path)
        return _found(self._values.get(key))

    def health(self) -> dict[str, Any]:
        """Ok when the file is absent (no secrets) or parses; else the parse error."""
        try:
            read_dotenv(self.path)
        except ConfigError as exc:
            return health_report(self.name, str(self.path), exc.message, exists=True)
        return health_report(self.name, str(self.path), exists=self.path.is_file())
