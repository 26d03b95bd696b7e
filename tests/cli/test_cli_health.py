"""`orchestra health`: checks, JSON, and cron-friendly exit codes."""

from __future__ import annotations

import json

import pytest

from tests.conftest import CliRunner


def test_embedded_health_is_ok_with_warnings_and_strict_turns_them_into_failure(
    cli: CliRunner,
) -> None:
    data = json.loads(cli("--json", "health").out)
    levels = {c["name"]: c["level"] for c in data["checks"]}
    assert levels["state"] == levels["broker"] == levels["dependencies"] == "ok"
    assert levels["agents"] == "warn"  # nobody running
    assert data["healthy"] is True
    assert cli("health", "--strict", expect=1).code == 1
    assert "no live agents" in cli("health").out


def test_a_subset_of_checks_can_be_selected(cli: CliRunner) -> None:
    data = json.loads(cli("--json", "health", "--check", "state,broker").out)
    assert [c["name"] for c in data["checks"]] == ["state", "broker"]
    assert "unknown check 'vibes'" in cli("health", "-c", "vibes", expect=2).err


def test_quiet_health_prints_only_what_needs_attention_and_piped_rows_stay_whole(
    cli: CliRunner,
) -> None:
    assert cli("-q", "health", "--check", "state,broker").out == ""  # all ok: silence
    quiet = cli("-q", "health", "--check", "state,agents").out.splitlines()
    assert len(quiet) == 1 and quiet[0].split()[:2] == ["agents", "warn"]
    lines = cli("health").out.splitlines()  # captured: not a terminal, so plain text
    assert lines[0].split() == ["CHECK", "STATUS", "DETAIL"]
    assert len(lines) == 1 + len(json.loads(cli("--json", "health").out)["checks"])
    assert "\x1b[" not in cli("health").out


def test_a_bad_configuration_is_one_usage_error_not_a_failed_check(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRA_STATE_URL", "redis://127.0.0.1:6379/0")  # no broker URL
    err = cli("health", expect=2).err
    assert err.startswith("orchestra: error: ") and "ORCHESTRA_BROKER_URL" in err
    assert err.count("\n") == 1


def test_unreachable_services_exit_3_with_masked_urls(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRA_STATE_URL", "redis://:pw123456@127.0.0.1:1/0")
    monkeypatch.setenv("ORCHESTRA_BROKER_URL", "amqp://guest:pw123456@127.0.0.1:1/")
    monkeypatch.setenv("ORCHESTRA_REDIS__CONNECT_TIMEOUT", "0.2")
    result = cli("--json", "health", "--check", "state,broker,agents", expect=3)
    assert "pw123456" not in result.out + result.err
    levels = [c["level"] for c in json.loads(result.out)["checks"]]
    assert levels == ["fail", "fail", "fail"]


def test_dead_letters_and_stuck_queues_are_warnings(cli: CliRunner) -> None:
    from orchestra_cli.backends import open_backends
    from orchestra_cli.models import MSG_RUN, Envelope
    from orchestra_cli.settings import load_settings

    backends = open_backends(load_settings().settings)
    try:
        backends.broker.dead_letter("work.code", Envelope(type=MSG_RUN, task_id="x"), "boom")
        backends.broker.publish("work.code", Envelope(type=MSG_RUN, task_id="y"))
    finally:
        backends.close()
    check = json.loads(cli("--json", "health", "--check", "queues").out)["checks"][0]
    assert check["level"] == "warn"
    assert (
        "1 dead-lettered" in check["summary"] and "nobody consuming work.code" in check["summary"]
    )


def test_the_cli_lists_every_health_check() -> None:
    from orchestra_cli.cli.commands.health import CHECK_NAMES
    from orchestra_cli.health import CHECKS

    assert tuple(CHECKS) == CHECK_NAMES


def test_no_orchestrator_is_a_warning_when_idle_and_a_failure_when_work_waits(
    cli: CliRunner,
) -> None:
    check = json.loads(cli("--json", "health", "-c", "orchestrator").out)["checks"][0]
    assert check["level"] == "warn" and "orchestra run" in check["summary"]
    cli("task", "submit", "-q", "--capability", "code", "routed at submit: needs only an agent")
    check = json.loads(cli("--json", "health", "-c", "orchestrator").out)["checks"][0]
    assert check["level"] == "warn"
    cli("task", "submit", "-q", "write a parser")  # to be planned
    result = cli("--json", "health", "-c", "orchestrator", expect=1)
    check = json.loads(result.out)["checks"][0]
    assert check["level"] == "fail" and "1 task(s) waiting" in check["summary"]
