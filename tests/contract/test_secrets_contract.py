"""The secrets seam: one test body, every SecretsProvider.

The environment, a ``.env`` file, Vault (a real OpenBao dev server, one KV v2
secret per test) and the chain in front of Vault and the environment. Each
case can store a secret where its provider reads it, and says how its backend
can be unreachable — or why it cannot be.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestra_cli.errors import SecretsUnavailable
from orchestra_cli.logs import redact
from orchestra_cli.secrets.base import ChainSecrets, SecretsProvider
from orchestra_cli.secrets.env import DotenvSecrets, EnvSecrets
from orchestra_cli.secrets.vault import VaultSecrets
from orchestra_cli.settings import VaultSettings
from tests.bao_server import ROOT_TOKEN, Bao, running_bao

HEALTH_KEYS = {"ok", "provider", "url", "error"}
UNREACHABLE = "vault://127.0.0.1:9/secret/orchestra"  # the discard port: nothing listens


@dataclass
class Case:
    provider: SecretsProvider
    put: Callable[[str, str], None]  # store a secret where the provider reads it
    down: Callable[[], SecretsProvider] | None  # the provider with its backend unreachable
    never_down: str = ""  # why ``down`` is None


def _vault(bao: Bao) -> tuple[VaultSecrets, Callable[[str, str], None], str]:
    path = f"secret/contract-{uuid.uuid4().hex[:12]}"
    fields: dict[str, str] = {}

    def put(key: str, value: str) -> None:
        fields[key] = value
        bao.cli("kv", "put", path, *(f"{k}={v}" for k, v in fields.items()))

    settings = VaultSettings(cache_seconds=0)
    return VaultSecrets(bao.url(path), settings, env={"VAULT_TOKEN": ROOT_TOKEN}), put, path


def _vault_down() -> VaultSecrets:
    return VaultSecrets(UNREACHABLE, VaultSettings(timeout=1), env={"VAULT_TOKEN": ROOT_TOKEN})


def _dotenv(tmp_path: Path) -> Case:
    path = tmp_path / ".env"
    path.write_text("# written by the contract suite\n")

    def put(key: str, value: str) -> None:
        with path.open("a") as out:
            out.write(f"{key}={value}\n")

    reason = (
        ".env is a local file: an absent one holds no secrets, an unreadable one is a "
        "ConfigError (bad input, exit 2), never an unreachable service"
    )
    return Case(DotenvSecrets(path), put, None, reason)


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    with running_bao(tmp_path_factory) as server:
        yield server


@pytest.fixture(
    params=[
        "env",
        ".env",
        pytest.param("vault", marks=pytest.mark.integration),
        pytest.param("chain", marks=pytest.mark.integration),
    ]
)
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    if request.param == "env":
        env: dict[str, str] = {}
        always = "the process environment is always there"
        yield Case(EnvSecrets(env), env.__setitem__, None, always)
        return
    if request.param == ".env":
        yield _dotenv(tmp_path)
        return
    server: Bao = request.getfixturevalue("bao")
    vault, put, path = _vault(server)
    if request.param == "vault":
        yield Case(vault, put, _vault_down)
    else:  # Vault first; a name it lacks is taken from the environment
        env = {}
        yield Case(
            ChainSecrets([vault, EnvSecrets(env)]),
            env.__setitem__,
            lambda: ChainSecrets([_vault_down(), EnvSecrets({})]),
        )
    server.cli("kv", "metadata", "delete", path)


def _value() -> str:
    return f"contract-value-{uuid.uuid4().hex}"  # no credential pattern: only registration masks it


def test_a_stored_secret_reads_back(case: Case) -> None:
    value = _value()
    case.put("CONTRACT_SECRET", value)
    assert case.provider.get("CONTRACT_SECRET") == value


def test_a_missing_or_empty_secret_is_none(case: Case) -> None:
    assert case.provider.get("CONTRACT_NOT_THERE") is None  # nothing stored at all yet
    case.put("CONTRACT_SECRET", _value())
    case.put("CONTRACT_EMPTY", "")
    assert case.provider.get("CONTRACT_NOT_THERE") is None
    assert case.provider.get("CONTRACT_EMPTY") is None


def test_a_value_read_never_appears_in_reprs_or_log_lines(
    case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    value = _value()
    case.put("CONTRACT_SECRET", value)
    with caplog.at_level(logging.DEBUG):
        assert case.provider.get("CONTRACT_SECRET") == value
    assert value not in caplog.text
    assert value not in repr(case.provider) and value not in str(case.provider.health())
    assert redact(f"calling out with token={value}") == "calling out with token=***"


def test_health_has_the_same_keys_on_every_provider(case: Case) -> None:
    report = case.provider.health()
    assert set(report) >= HEALTH_KEYS, report
    assert report["ok"] is True and report["error"] is None
    assert report["provider"] == case.provider.name and isinstance(report["url"], str)


def test_an_unreachable_backend_is_secrets_unavailable_in_one_line(case: Case) -> None:
    if case.down is None:
        pytest.skip(f"{case.provider.name} cannot be unreachable: {case.never_down}")
    down = case.down()
    with pytest.raises(SecretsUnavailable) as caught:
        down.get("CONTRACT_SECRET")
    message = str(caught.value)
    assert "127.0.0.1:9" in message and "\n" not in message and caught.value.hint
    report = down.health()
    assert set(report) >= HEALTH_KEYS and report["ok"] is False
    assert "127.0.0.1:9" in report["error"] and "\n" not in report["error"]
