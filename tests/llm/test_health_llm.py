"""`orchestra health --check llm`: the model API asked for the configured model (one
unbilled GET /v1/models/{id}) by a real `orchestra` process, against the fake API — and
never by a plain `orchestra health`."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.llm.certs import make_ca_and_server
from tests.llm.fake_anthropic import FakeAnthropic
from tests.support import Result, clean_env, run_orchestra


def _health(tmp_path: Path, url: str, key: str, *args: str, **extra: str) -> tuple[Result, Any]:
    env = clean_env(
        {
            "ORCHESTRA_HOME": str(tmp_path / "home"),
            "ANTHROPIC_API_KEY": key,
            "ANTHROPIC_BASE_URL": url,
            **extra,
        }
    )
    got = run_orchestra(["--json", "health", *args], env, tmp_path)
    return got, json.loads(got.out) if got.out.strip() else None


def _llm(report: Any) -> dict[str, Any]:
    return next(c for c in report["checks"] if c["name"] == "llm")


def test_the_llm_check_asks_the_api_for_the_configured_model(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    got, report = _health(tmp_path, fake.url, fake.api_key, "--check", "llm")
    assert got.code == 0, got
    check = _llm(report)
    assert check["level"] == "ok"
    # llm.model first, then the built-in roles' own (the planner's; a role's on Haiku)
    assert check["summary"].startswith("claude-sonnet-5-5 (Claude Sonnet 5.5), ")
    assert check["summary"].endswith(f" answered at {fake.url}")
    assert fake.model_requests[0] == "/v1/models/claude-sonnet-5-5"
    assert len(set(fake.model_requests)) == len(fake.model_requests)  # each model once
    assert fake.requests == [] and fake.count_requests == []  # nothing billed


def test_every_model_in_use_is_asked_once_and_a_role_files_bad_one_is_named(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    roles = tmp_path / "roles"
    roles.mkdir()
    role = "description: {d}\ncapabilities: [{c}]\nmodel: {m}\n"
    (roles / "deep.yaml").write_text(
        "name: deep\n" + role.format(d="Thinks hard.", c="think", m="claude-opus-5-5")
    )
    (roles / "typo.yaml").write_text(
        "name: typo\n" + role.format(d="Misnamed.", c="spell", m="claude-opus-5-55")
    )
    env = {"ORCHESTRA_AGENTS__DEFINITIONS_DIR": str(roles)}
    got, report = _health(tmp_path, fake.url, fake.api_key, "--check", "llm", **env)
    assert got.code == 1, got
    check = _llm(report)
    assert check["summary"].startswith("claude-opus-5-55 (role typo): Anthropic API error 404")
    assert "more)" not in check["summary"]  # the one bad name
    models = check["details"]["models"]  # every model, the ones after the bad name too
    deep = {"used_by": ["role deep"], "display_name": "Claude Opus 5.5"}
    assert models["claude-opus-5-5"] == deep
    assert "llm.model" in models["claude-sonnet-5-5"]["used_by"]  # and the built-in roles
    assert models["claude-opus-5-55"]["used_by"] == ["role typo"]
    assert all("display_name" in m for name, m in models.items() if name != "claude-opus-5-55")
    assert sorted(fake.model_requests) == sorted(f"/v1/models/{m}" for m in models)


def test_with_no_key_the_llm_check_warns_that_agents_run_offline(tmp_path: Path) -> None:
    got, report = _health(tmp_path, "http://127.0.0.1:9", "", "--check", "llm")
    assert got.code == 0, got
    check = _llm(report)
    assert check["level"] == "warn"
    assert check["summary"] == "ANTHROPIC_API_KEY does not resolve: agents use the offline provider"
    strict, _ = _health(tmp_path, "http://127.0.0.1:9", "", "--check", "llm", "--strict")
    assert strict.code == 1, strict


def test_a_plain_health_run_does_not_call_the_model_api(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    got, report = _health(tmp_path, fake.url, fake.api_key)
    assert "llm" not in [c["name"] for c in report["checks"]], got
    assert fake.model_requests == []


@pytest.mark.parametrize(
    ("case", "code", "summary"),
    [
        ("key", 1, "the Anthropic API rejected the API key (401 authentication_error)"),
        ("model", 1, "Anthropic API error 404 not_found_error: model: claude-nope-9"),
        ("down", 3, "cannot reach the Anthropic API at"),
    ],
)
def test_a_failing_llm_check_is_one_line_with_the_exit_code_cron_reads(
    fake: FakeAnthropic, tmp_path: Path, case: str, code: int, summary: str
) -> None:
    url, key, extra = fake.url, fake.api_key, {}
    if case == "key":
        key = "sk-ant-wrong-key-111111"
    elif case == "model":
        extra = {"ORCHESTRA_LLM__MODEL": "claude-nope-9"}
    else:
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}"
    got, report = _health(tmp_path, url, key, "--check", "llm", **extra)
    assert got.code == code, got
    check = _llm(report)
    assert check["level"] == "fail"
    assert summary in check["summary"] and "\n" not in check["summary"]


def test_an_untrusted_tls_certificate_fails_the_llm_check_naming_ssl_cert_file(
    tmp_path: Path,
) -> None:
    _, context = make_ca_and_server(tmp_path)
    fake = FakeAnthropic()
    fake.server.socket = context.wrap_socket(fake.server.socket, server_side=True)
    fake.start()
    try:
        url = fake.url.replace("http://", "https://")
        got, report = _health(tmp_path, url, fake.api_key, "--check", "llm")
    finally:
        fake.stop()
    assert got.code == 1, got
    summary = _llm(report)["summary"]
    assert f"the TLS certificate of the Anthropic API at {url} does not verify" in summary
    assert "SSL_CERT_FILE" in summary


def test_the_offline_provider_has_no_api_to_reach(tmp_path: Path) -> None:
    got, report = _health(
        tmp_path, "http://127.0.0.1:9", "", "--check", "llm", ORCHESTRA_LLM__PROVIDER="offline"
    )
    assert got.code == 0, got
    assert _llm(report)["summary"] == "the offline provider: no model API to reach"
