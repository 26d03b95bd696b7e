"""VaultSecrets against a real OpenBao dev server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from orchestra_cli.backends import open_llm, open_secrets
from orchestra_cli.errors import SecretsError, SecretsUnavailable
from orchestra_cli.logs import redact
from orchestra_cli.secrets.vault import VaultSecrets
from orchestra_cli.settings import Settings, VaultSettings
from tests.secrets.conftest import ROOT_TOKEN, Bao

pytestmark = pytest.mark.integration


def _token(bao: Bao, *args: str) -> str:
    out = bao.cli("token", "create", "-format=json", *args)
    return str(json.loads(out)["auth"]["client_token"])


def test_reads_a_field_of_the_kv_v2_secret_and_masks_it_in_logs(bao: Bao) -> None:
    vault = VaultSecrets(bao.url(), env={"VAULT_TOKEN": ROOT_TOKEN})
    assert vault.get("ANTHROPIC_API_KEY") == "sk-ant-from-vault-123456"
    assert vault.get("NOT_THERE") is None
    assert "sk-ant-from-vault-123456" not in redact("key=sk-ant-from-vault-123456")


def test_reads_are_cached_briefly(bao: Bao) -> None:
    bao.cli("kv", "put", "secret/cached", "A=one")
    vault = VaultSecrets(
        bao.url("secret/cached"), VaultSettings(cache_seconds=60), env={"VAULT_TOKEN": ROOT_TOKEN}
    )
    assert vault.get("A") == "one"
    bao.cli("kv", "put", "secret/cached", "A=two")
    assert vault.get("A") == "one"


def test_missing_secret_path_is_a_clear_error_or_none_in_the_chain(bao: Bao) -> None:
    vault = VaultSecrets(bao.url("secret/nowhere"), env={"VAULT_TOKEN": ROOT_TOKEN})
    with pytest.raises(SecretsError, match=r"no secret at secret/nowhere.*bao kv put"):
        vault.read("nowhere")
    assert vault.get("ANTHROPIC_API_KEY") is None


def test_wrong_token_is_permission_denied_without_printing_the_token(bao: Bao) -> None:
    bad = "s.wrongtoken0000000000000000"
    vault = VaultSecrets(bao.url(), env={"VAULT_TOKEN": bad})
    with pytest.raises(SecretsError, match="denied") as caught:
        vault.get("ANTHROPIC_API_KEY")
    assert bad not in str(caught.value) and "\n" not in str(caught.value)


def test_unreachable_vault_is_unavailable_naming_the_address() -> None:
    vault = VaultSecrets(
        "vault://127.0.0.1:9/secret/x", VaultSettings(timeout=1), env={"VAULT_TOKEN": "t"}
    )
    with pytest.raises(SecretsUnavailable, match=r"cannot reach Vault at http://127\.0\.0\.1:9"):
        vault.get("A")


def test_health_reports_initialized_unsealed_and_version(bao: Bao) -> None:
    health = VaultSecrets(bao.url(), env={}).health()
    assert health["ok"] and health["initialized"] and not health["sealed"] and health["version"]


@pytest.mark.slow
def test_short_lived_token_is_renewed_before_it_expires(bao: Bao) -> None:
    token = _token(bao, "-ttl=3s", "-explicit-max-ttl=1h", "-policy=root")
    vault = VaultSecrets(
        bao.url(),
        VaultSettings(cache_seconds=0, renew_before_seconds=2),
        env={"VAULT_TOKEN": token},
    )
    deadline = time.monotonic() + 7  # more than twice the token's TTL
    while time.monotonic() < deadline:
        assert vault.get("ANTHROPIC_API_KEY") == "sk-ant-from-vault-123456"
        time.sleep(1)
    assert vault.renewals >= 2


@pytest.mark.slow
def test_expired_token_that_cannot_be_renewed_is_a_clear_error(bao: Bao) -> None:
    token = _token(bao, "-ttl=2s", "-renewable=false", "-policy=root")
    vault = VaultSecrets(bao.url(), VaultSettings(cache_seconds=0), env={"VAULT_TOKEN": token})
    assert vault.get("ANTHROPIC_API_KEY")
    time.sleep(2.5)
    with pytest.raises(SecretsError, match=r"Vault token .* has expired.*VAULT_TOKEN"):
        vault.get("ANTHROPIC_API_KEY")


@pytest.mark.slow
def test_approle_logs_in_and_logs_in_again_when_the_token_reaches_max_ttl(bao: Bao) -> None:
    policy = 'path "secret/data/orchestra" { capabilities = ["read"] }'
    subprocess.run(
        [bao.binary, "policy", "write", "orchestra-read", "-"],
        input=policy,
        text=True,
        check=True,
        capture_output=True,
        env={"BAO_ADDR": bao.address, "BAO_TOKEN": ROOT_TOKEN},
    )
    bao.cli(
        "write",
        "auth/approle/role/orchestra",
        "token_policies=orchestra-read",
        "token_ttl=2s",
        "token_max_ttl=3s",
    )
    role_id = json.loads(bao.cli("read", "-format=json", "auth/approle/role/orchestra/role-id"))[
        "data"
    ]["role_id"]
    secret_id = json.loads(
        bao.cli("write", "-format=json", "-f", "auth/approle/role/orchestra/secret-id")
    )["data"]["secret_id"]
    vault = VaultSecrets(
        bao.url(),
        VaultSettings(cache_seconds=0, renew_before_seconds=1.5),
        env={"VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": secret_id},
    )
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        assert vault.get("ANTHROPIC_API_KEY") == "sk-ant-from-vault-123456"
        time.sleep(0.5)
    assert vault.logins >= 2


def test_secrets_chain_asks_vault_first_then_the_environment(
    bao: Bao, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_TOKEN", ROOT_TOKEN)
    monkeypatch.setenv("ORCHESTRA_API_TOKEN", "from-env-token")
    settings = Settings(secrets_url=bao.url())
    chain = open_secrets(settings)
    assert chain.lookup("ANTHROPIC_API_KEY") == ("sk-ant-from-vault-123456", "vault")
    assert chain.lookup("ORCHESTRA_API_TOKEN") == ("from-env-token", "env")
    assert open_llm(settings, chain).name == "anthropic"


@pytest.mark.parametrize("command", [["agent", "start", "coder"], ["run"]])
def test_a_process_refuses_to_start_when_its_vault_is_unreachable(
    home: object, command: list[str]
) -> None:
    """No silent fallback to the environment's key: one line, exit 3 (unavailable)."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ORCHESTRA_SECRETS_URL": f"vault://127.0.0.1:{port}/secret/x"}
    env.update(VAULT_TOKEN="t", ANTHROPIC_API_KEY="sk-ant-from-env-000000")
    done = subprocess.run(
        [sys.executable, "-m", "orchestra_cli", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach Vault at http://127.0.0.1:{port}" in lines[0]
    assert "sk-ant-from-env" not in done.stderr + done.stdout
