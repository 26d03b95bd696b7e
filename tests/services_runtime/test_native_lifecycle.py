"""The native runtime for real: up --wait, ps, use the services, logs, down --volumes."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
import redis

from orchestra_cli.services.native import process_alive
from tests.services_runtime.conftest import (
    free_service_ports,
    require_native_binaries,
    services_env,
)
from tests.support import Proc, Result, clean_env, run_orchestra, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Deployment:
    """One isolated deployment: its own home and ports, torn down whatever happens."""

    def __init__(self, tmp_path: Path) -> None:
        self.home = tmp_path / "home"
        self.cwd = tmp_path
        self.ports = free_service_ports()
        self.env = clean_env(services_env(self.home, self.ports))

    def run(self, *args: str, expect: int | None = 0, timeout: float = 120) -> Result:
        result = run_orchestra(list(args), self.env, self.cwd, timeout=timeout)
        if expect is not None and result.code != expect:
            pytest.fail(f"`orchestra {' '.join(args)}` expected exit {expect}\n{result}")
        return result


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    require_native_binaries()
    dep = Deployment(tmp_path)
    try:
        yield dep
    finally:
        # never leave servers behind, even when an assertion failed half-way
        dep.run("down", "--volumes", "--timeout", "20", expect=None)


def _use_redis(port: int) -> None:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        assert client.ping()
        client.set("orchestra-test", "ok")
        assert client.get("orchestra-test") == b"ok"
    finally:
        client.close()


def _use_rabbitmq(port: int) -> None:
    params = pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{port}/%2F")
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        channel.queue_declare("orchestra-test", auto_delete=True)
        channel.basic_publish("", "orchestra-test", b"hello")
        _, _, body = wait_until(
            lambda: (m := channel.basic_get("orchestra-test", auto_ack=True))[0] and m,
            timeout=10,
            what="the message back",
        )
        assert body == b"hello"
    finally:
        connection.close()


def _use_vault(port: int, token: str) -> None:
    url = f"http://127.0.0.1:{port}/v1/secret/data/orchestra"
    headers = {"X-Vault-Token": token, "Content-Type": "application/json"}
    body = json.dumps({"data": {"ANTHROPIC_API_KEY": "sk-test-value"}}).encode()
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=5) as resp:
        data = json.loads(resp.read())
    assert data["data"]["data"]["ANTHROPIC_API_KEY"] == "sk-test-value"


@pytest.mark.timeout(300)
def test_native_services_come_up_healthy_serve_clients_and_go_down(
    deployment: Deployment,
) -> None:
    dep, ports = deployment, deployment.ports
    env_file = dep.cwd / ".env.services"
    up = dep.run(
        "--json", "up", "--runtime", "native", "--wait", "--timeout", "90",
        "--env-file", str(env_file),
    )  # fmt: skip
    report = json.loads(up.out)
    assert report["runtime"] == "native"
    assert report["started"] == ["redis", "rabbitmq", "vault"]
    env = report["env"]
    assert env["ORCHESTRA_STATE_URL"] == f"redis://127.0.0.1:{ports['REDIS_PORT']}/0"
    assert env["ORCHESTRA_BROKER_URL"] == f"amqp://guest:guest@127.0.0.1:{ports['AMQP_PORT']}/%2F"
    assert env["ORCHESTRA_SECRETS_URL"] == (
        f"vault://127.0.0.1:{ports['VAULT_PORT']}/secret/orchestra"
    )
    assert f"VAULT_TOKEN={env['VAULT_TOKEN']}" in env_file.read_text()
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert "rabbitmq: healthy" in up.err  # plain progress lines off a terminal

    ps = json.loads(dep.run("--json", "ps").out)
    assert ps["runtime"] == "native" and ps["healthy"] is True
    pids = {s["name"]: s["pid"] for s in ps["services"]}
    assert all(s["running"] and s["healthy"] and s["pid"] for s in ps["services"])
    assert [s["port"] for s in ps["services"]] == [
        ports["REDIS_PORT"],
        ports["AMQP_PORT"],
        ports["VAULT_PORT"],
    ]
    table = dep.run("ps").out
    assert "healthy" in table and "UPTIME" in table

    _use_redis(ports["REDIS_PORT"])
    _use_rabbitmq(ports["AMQP_PORT"])
    _use_vault(ports["VAULT_PORT"], env["VAULT_TOKEN"])

    again = dep.run("--json", "up", "--wait")
    assert json.loads(again.out)["already_running"] == ["redis", "rabbitmq", "vault"]
    assert json.loads(again.out)["env"] == env
    assert "already running" in again.err
    plain = dep.run("up", "-q")
    assert f"export ORCHESTRA_STATE_URL=redis://127.0.0.1:{ports['REDIS_PORT']}/0" in plain.out
    _settings_changed_since_up(dep)

    assert "Ready to accept connections" in dep.run("logs", "redis").out
    assert "Server startup complete" in dep.run("logs", "rabbitmq").out
    both = dep.run("logs", "--tail", "3").out.splitlines()
    assert {line.split(" | ")[0].strip() for line in both} == {"redis", "rabbitmq", "vault"}
    _follow_sees_new_lines(dep)

    # a killed rabbitmq-server script leaves its Erlang node running: still seen and stopped
    os.kill(pids["rabbitmq"], signal.SIGKILL)
    wait_until(lambda: not process_alive(pids["rabbitmq"]), timeout=10, what="the script gone")
    rabbit = json.loads(dep.run("--json", "ps").out)["services"][1]
    assert rabbit["running"] and rabbit["healthy"] and rabbit["pid"] != pids["rabbitmq"]
    pids["erlang"] = rabbit["pid"]
    _a_hung_broker_is_reported_not_waited_for(dep, pids["erlang"])

    down = dep.run("down", "--volumes")
    assert "stopped: vault, rabbitmq, redis" in down.err
    for pid in pids.values():
        assert not process_alive(pid)
    assert not (dep.home / "services" / "redis").exists()
    after = json.loads(dep.run("--json", "ps", expect=1).out)
    assert [s["running"] for s in after["services"]] == [False, False, False]


def _follow_sees_new_lines(dep: Deployment) -> None:
    """`logs -f redis` prints lines written after it started (a client connecting)."""
    proc = Proc(["logs", "-f", "--tail", "0", "redis"], dep.env, dep.cwd, dep.cwd / "follow.log")
    try:
        time.sleep(1.0)  # past interpreter start-up, into the follow loop
        client = redis.Redis(host="127.0.0.1", port=dep.ports["REDIS_PORT"])
        client.config_set("loglevel", "verbose")  # so connections get logged
        client.close()
        with redis.Redis(host="127.0.0.1", port=dep.ports["REDIS_PORT"]) as again:
            again.ping()
        wait_until(lambda: "Accepted 127.0.0.1" in proc.output(), timeout=15, what="new lines")
    finally:
        # a shell's background jobs inherit an ignored SIGINT: then only SIGTERM ends it
        ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        code = proc.stop(signal.SIGTERM if ignored else signal.SIGINT)
    assert ignored or code == 0, proc.output()  # Ctrl-C is the normal way out of -f


def _settings_changed_since_up(dep: Deployment) -> None:
    """Services started on one port, settings now naming another: `ps` shows where they
    run, `up` refuses to print URLs that point at nothing."""
    moved = free_service_ports()["REDIS_PORT"]
    env = {**dep.env, "ORCHESTRA_SERVICES__REDIS_PORT": str(moved)}
    ps = run_orchestra(["--json", "ps"], env, dep.cwd)
    redis_row = json.loads(ps.out)["services"][0]
    assert ps.code == 1 and redis_row["running"] and not redis_row["healthy"]
    assert redis_row["port"] == dep.ports["REDIS_PORT"]
    assert redis_row["detail"] == f"settings say port {moved}"
    up = run_orchestra(["up", "-q"], env, dep.cwd)
    assert up.code == 2 and up.out == ""
    assert (
        f"redis is running on port {dep.ports['REDIS_PORT']}, but services.redis_port is {moved}"
    ) in up.err


def _a_hung_broker_is_reported_not_waited_for(dep: Deployment, erlang_pid: int) -> None:
    """A stopped (not dead) RabbitMQ: `ps` reports it within its probe timeout instead
    of crashing after pika's 15 s handshake timeout."""
    os.kill(erlang_pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        ps = dep.run("--json", "ps", expect=1)
        rabbit = json.loads(ps.out)["services"][1]
        assert rabbit["running"] and not rabbit["healthy"] and rabbit["detail"]
        assert time.monotonic() - started < 12
    finally:
        os.kill(erlang_pid, signal.SIGCONT)
    wait_until(
        lambda: json.loads(dep.run("--json", "ps", expect=None).out)["healthy"],
        timeout=30,
        what="rabbitmq answering again",
    )


@pytest.mark.timeout(120)
def test_up_with_services_starts_only_those_and_ps_judges_only_them(
    deployment: Deployment,
) -> None:
    dep, ports = deployment, deployment.ports
    up = json.loads(
        dep.run("--json", "up", "--runtime", "native", "--services", "redis", "--wait").out
    )
    assert up["started"] == ["redis"]
    assert up["env"] == {"ORCHESTRA_STATE_URL": f"redis://127.0.0.1:{ports['REDIS_PORT']}/0"}
    _use_redis(ports["REDIS_PORT"])
    ps = json.loads(dep.run("--json", "ps").out)  # exit 0: RabbitMQ and Vault were not asked for
    assert ps["healthy"] is True
    assert [s["running"] for s in ps["services"]] == [True, False, False]
    bad = dep.run("up", "--services", "redis,postgres", expect=2)
    assert "unknown service 'postgres'" in bad.err
