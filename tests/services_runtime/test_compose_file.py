"""compose.yaml: the docker runtime's services, checked without a Docker engine."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO

COMPOSE = REPO / "compose.yaml"
SERVICES = ("redis", "rabbitmq", "vault")
PORT_VARS = {
    "redis": "ORCHESTRA_SERVICES__REDIS_PORT",
    "rabbitmq": "ORCHESTRA_SERVICES__AMQP_PORT",
    "vault": "ORCHESTRA_SERVICES__VAULT_PORT",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_compose_defines_redis_rabbitmq_and_openbao(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == set(SERVICES)
    assert services["redis"]["image"].startswith("redis:")
    assert services["rabbitmq"]["image"].startswith("rabbitmq:")
    assert "management" in services["rabbitmq"]["image"]
    assert services["vault"]["image"].startswith("openbao/openbao:")
    assert "-dev" in services["vault"]["command"]
    assert "BAO_DEV_ROOT_TOKEN_ID" in services["vault"]["environment"]


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name in SERVICES:
        check = compose["services"][name]["healthcheck"]
        assert check["test"][0] == "CMD", name
        assert check["retries"] >= 10, name
        assert re.fullmatch(r"\d+s", check["interval"]), name


def test_ports_bind_to_loopback_with_the_settings_variables(compose: dict[str, Any]) -> None:
    for name in SERVICES:
        ports = compose["services"][name]["ports"]
        assert ports, name
        for mapping in ports:
            assert mapping.startswith("127.0.0.1:"), mapping
        assert f"${{{PORT_VARS[name]}:-" in ports[0], ports[0]


def test_defaults_match_the_native_runtime(compose: dict[str, Any]) -> None:
    from orchestra_cli.settings import ServicesSettings

    s = ServicesSettings()
    expected = {"redis": s.redis_port, "rabbitmq": s.amqp_port, "vault": s.vault_port}
    for name, port in expected.items():
        assert f":-{port}}}" in compose["services"][name]["ports"][0], name


def test_data_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    volumes = compose["volumes"]
    for name, target in (("redis", "/data"), ("rabbitmq", "/var/lib/rabbitmq")):
        mounts = compose["services"][name]["volumes"]
        named = [m.split(":")[0] for m in mounts if m.endswith(":" + target)]
        assert named and named[0] in volumes, (name, mounts)


def _compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return probe.returncode == 0


def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    # `compose config` is offline (no engine needed), but needs the compose plugin
    if not _compose_available():
        pytest.skip("the docker compose plugin is not installed")
    proc = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
