"""`orchestra up/down/ps/logs` without starting anything: errors, choices, helpers."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestra_cli.errors import ServiceError
from orchestra_cli.services import docker, select_runtime
from orchestra_cli.services.base import wait_healthy
from orchestra_cli.services.logtail import follow_files, tail_lines
from orchestra_cli.services.native import NativeRuntime, process_alive
from orchestra_cli.settings import Settings
from tests.conftest import CliRunner
from tests.services_runtime.conftest import free_service_ports


@pytest.fixture
def ports(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    chosen = free_service_ports()
    for key, value in chosen.items():
        monkeypatch.setenv(f"ORCHESTRA_SERVICES__{key}", str(value))
    return chosen


def test_runtime_docker_without_an_engine_is_one_clear_error(
    cli: CliRunner, ports: dict[str, int]
) -> None:
    if docker.engine_available():
        pytest.skip("a Docker engine is reachable here")
    result = cli("up", "--runtime", "docker", expect=3)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("orchestra: error: ")
    assert "docker" in lines[0].lower()
    assert "--runtime native" in lines[0]


def test_auto_runtime_is_native_without_a_docker_engine(
    monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    monkeypatch.setattr(docker, "engine_available", lambda: False)
    assert select_runtime(Settings(home=home), "auto", for_up=True).name == "native"
    monkeypatch.setattr(docker, "engine_available", lambda: True)
    assert select_runtime(Settings(home=home), None, for_up=True).name == "docker"
    assert select_runtime(Settings(home=home), "native", for_up=True).name == "native"


def test_out_of_range_port_is_a_config_error(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRA_SERVICES__REDIS_PORT", "70000")
    result = cli("up", "--runtime", "native", expect=2)
    assert "services.redis_port" in result.err
    assert "ORCHESTRA_SERVICES__REDIS_PORT" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_two_services_on_one_port_is_a_config_error(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRA_SERVICES__REDIS_PORT", "18200")
    result = cli("ps", "--runtime", "native", expect=2)
    assert "redis_port and vault_port are both 18200" in result.err


@pytest.mark.parametrize(
    ("setting", "service"), [("VAULT_PORT", "vault"), ("RABBITMQ_DIST_PORT", "rabbitmq")]
)
def test_busy_port_fails_before_anything_starts(
    cli: CliRunner, ports: dict[str, int], home: Path, setting: str, service: str
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[setting]))
        holder.listen()
        result = cli("up", "--runtime", "native", expect=3)
    assert f"port {ports[setting]} for {service} is already in use" in result.err
    assert f"ORCHESTRA_SERVICES__{setting}" in result.err
    assert not list((home / "services").glob("*/state.json"))


def test_ps_with_nothing_started_shows_all_down_and_exits_1(
    cli: CliRunner, ports: dict[str, int]
) -> None:
    result = cli("--json", "ps", "--runtime", "native", expect=1)
    import json

    data = json.loads(result.out)
    assert data["healthy"] is False
    assert [s["running"] for s in data["services"]] == [False, False, False]
    assert [s["port"] for s in data["services"]] == [
        ports["REDIS_PORT"],
        ports["AMQP_PORT"],
        ports["VAULT_PORT"],
    ]


def test_down_with_nothing_running_succeeds(cli: CliRunner, ports: dict[str, int]) -> None:
    result = cli("down", "--runtime", "native")
    assert "nothing was running" in result.err


def test_logs_rejects_an_unknown_service(cli: CliRunner) -> None:
    result = cli("logs", "postgres", expect=2)
    assert "unknown service or process 'postgres'" in result.err


def test_logs_before_any_up_says_how_to_start(cli: CliRunner, ports: dict[str, int]) -> None:
    result = cli("logs", "redis", "--runtime", "native", expect=3)
    assert "orchestra up" in result.err


def test_wait_healthy_times_out_with_the_last_reason() -> None:
    with pytest.raises(ServiceError) as info:
        wait_healthy(
            {"redis": lambda: "connection refused"},
            timeout=0.3,
            progress=lambda *a: None,
        )
    assert "redis not healthy after 0s (redis: connection refused)" in str(info.value)
    assert "the others keep running (`orchestra down` stops them)" in info.value.hint


def test_wait_healthy_fails_at_once_when_the_process_exited() -> None:
    start = time.monotonic()
    with pytest.raises(ServiceError, match="rabbitmq exited while starting: boom"):
        wait_healthy(
            {"rabbitmq": lambda: "connection refused"},
            timeout=30,
            progress=lambda *a: None,
            exited=lambda name: "exited while starting: boom",
        )
    assert time.monotonic() - start < 5


def test_a_dead_or_reused_pid_is_not_running() -> None:
    assert process_alive(os.getpid())
    assert not process_alive(os.getpid(), start_ticks=-1)  # same pid, another process
    assert not process_alive(2**22 + 12345)


def test_tail_and_follow_read_appended_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("one\ntwo\nthree\n")
    assert tail_lines(log, 2) == ["two", "three"]
    assert tail_lines(log, None) == ["one", "two", "three"]
    assert tail_lines(tmp_path / "missing.log", 5) == []
    lines: Iterator[tuple[str, str]] = follow_files({"x": log})
    with log.open("a") as fh:
        fh.write("four\nfi")
    assert next(lines) == ("x", "four")
    with log.open("a") as fh:
        fh.write("ve\n")
    assert next(lines) == ("x", "five")


def test_rabbitmq_node_never_reads_the_system_config(home: Path) -> None:
    settings = Settings(home=home)
    runtime = NativeRuntime(settings)
    env = runtime.rabbitmq_env(home / "services" / "rabbitmq")
    assert env["RABBITMQ_NODENAME"] == f"orchestra-{settings.services.amqp_port}@localhost"
    assert env["RABBITMQ_NODE_PORT"] == str(settings.services.amqp_port)
    assert env["RABBITMQ_DIST_PORT"] == str(settings.services.rabbitmq_dist_port)
    for key in ("RABBITMQ_CONF_ENV_FILE", "RABBITMQ_CONFIG_FILE", "RABBITMQ_ENABLED_PLUGINS_FILE"):
        assert env[key].startswith(str(home)), key
    assert env["HOME"] == str(home / "services" / "rabbitmq")


def test_docker_runtime_passes_ports_and_token_to_compose(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BAO_DEV_ROOT_TOKEN_ID", "tok-123456")
    runtime = docker.DockerRuntime(Settings(home=home))
    argv = runtime.command("up", "-d")
    assert argv[:2] == ["docker", "compose"]
    assert argv[argv.index("-p") + 1] == "orchestra"
    assert argv[argv.index("-f") + 1].endswith("compose.yaml")
    env = runtime.compose_env("tok-123456")
    assert env["ORCHESTRA_SERVICES__REDIS_PORT"] == "16379"
    assert env["BAO_DEV_ROOT_TOKEN_ID"] == "tok-123456"
