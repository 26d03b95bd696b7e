"""Secrets from the process environment and from ``./.env``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from orchestra_cli.settings import read_dotenv


class EnvSecrets:
    name = "env"

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if env is None else env

    def get(self, key: str) -> str | None:
        return self._env.get(key) or None


class DotenvSecrets:
    name = ".env"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._values: dict[str, str] | None = None

    def get(self, key: str) -> str | None:
        if self._values is None:
            self._values = read_dotenv(self.path)
        return self._values.get(key) or None
