"""Shared fixtures: an isolated home and cwd per test, and the in-process CLI."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestra_cli.backends import Backends, open_backends
from orchestra_cli.settings import Settings
from tests.support import Result

CliRunner = Callable[..., Result]


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs in its own cwd and data dir, with no ORCHESTRA_* settings leaking in."""
    for key in list(os.environ):
        if key.startswith(("ORCHESTRA_", "ANTHROPIC_", "VAULT_")):
            monkeypatch.delenv(key, raising=False)
    home = tmp_path / "home"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("ORCHESTRA_HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return home


@pytest.fixture
def home(isolated: Path) -> Path:
    return isolated


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> CliRunner:
    """Run `orchestra ARGS…` in-process; ``expect`` checks the exit code and shows all output."""
    from orchestra_cli.cli.main import run_cli

    def run(*args: str, expect: int | None = 0) -> Result:
        capsys.readouterr()
        code = run_cli(list(args))
        captured = capsys.readouterr()
        result = Result(code, captured.out, captured.err)
        if expect is not None and code != expect:
            pytest.fail(f"`orchestra {' '.join(args)}` expected exit {expect}\n{result}")
        return result

    return run


@pytest.fixture
def settings(home: Path) -> Settings:
    return Settings(home=home)


@pytest.fixture
def backends(settings: Settings) -> Iterator[Backends]:
    b = open_backends(settings)
    yield b
    b.close()
