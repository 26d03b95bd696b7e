"""config show and agent status say the concurrency and task timeout an agent runs with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestra_cli.backends import open_backends
from orchestra_cli.engine.roles import load_roles
from orchestra_cli.engine.runtime import Runtime
from orchestra_cli.settings import load_settings
from tests.conftest import CliRunner


@pytest.fixture
def custom_role(monkeypatch: pytest.MonkeyPatch) -> Path:
    """A role file that sets neither concurrency nor timeout, and agents.concurrency 5."""
    roles = Path("roles")
    roles.mkdir()
    (roles / "tester.yaml").write_text(
        "name: tester\ncapabilities: [test]\nprompt: execute-coder\n"
    )
    monkeypatch.setenv("ORCHESTRA_AGENTS__DEFINITIONS_DIR", str(roles.resolve()))
    monkeypatch.setenv("ORCHESTRA_AGENTS__CONCURRENCY", "5")
    return roles


def test_config_show_says_what_each_role_runs_with_and_why(
    cli: CliRunner, custom_role: Path
) -> None:
    agents = json.loads(cli("--json", "config", "show").out)["agents"]
    coder, tester = agents["coder"], agents["tester"]
    assert coder["concurrency"]["value"] == 2  # the role file's value beats agents.concurrency
    assert coder["concurrency"]["source"].endswith("templates/agents/coder.yaml")
    assert coder["concurrency"]["note"] == "agents.concurrency not applied"
    assert tester["concurrency"] == {
        "value": 5,
        "source": "agents.concurrency, ORCHESTRA_AGENTS__CONCURRENCY",
        "note": "",
    }
    assert coder["task_timeout"]["value"] == 900  # the role file's timeout is applied
    assert coder["task_timeout"]["source"].endswith("templates/agents/coder.yaml")
    assert tester["task_timeout"]["value"] == 600  # its file sets none: tasks.default_timeout
    table = cli("config", "show", "--sources").out
    assert "agent tester concurrency" in table and "ORCHESTRA_AGENTS__CONCURRENCY" in table


def test_an_agent_runs_with_the_shown_concurrency_and_agent_status_says_why(
    cli: CliRunner, custom_role: Path
) -> None:
    loaded = load_settings(None)
    backends = open_backends(loaded.settings)
    try:
        runtime = Runtime(backends, load_roles(custom_role.resolve()), sources=loaded.sources)
        tester = runtime.add_agent("tester", name="tester-1")
        coder = runtime.add_agent("coder", name="coder-1", concurrency=3)
        assert (tester.concurrency, coder.concurrency) == (5, 3)  # agents.concurrency applied
        for agent in (tester, coder):
            backends.state.save_agent(agent.record)
    finally:
        backends.close()
    status = cli("agent", "status", "tester-1", expect=1).out  # registered, never ran: dead
    assert len([ln for ln in status.splitlines() if ln.startswith("concurrency ")]) == 1
    assert "concurrency      5 (agents.concurrency, ORCHESTRA_AGENTS__CONCURRENCY)" in status
    assert "task_timeout     600 (tasks.default_timeout, default;" in status
    assert "concurrency      3 (--concurrency)" in cli("agent", "status", "coder-1", expect=1).out
