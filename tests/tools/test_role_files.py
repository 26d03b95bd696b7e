"""The tool keys of a role file: defaults, the built-in roles, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestra_cli.engine.roles import load_roles
from orchestra_cli.errors import ConfigError
from orchestra_cli.tools.base import Sandbox

BASE = "name: custom\ncapabilities: [custom]\n"


def test_a_role_without_tool_keys_has_no_tools_and_the_safe_defaults(tmp_path: Path) -> None:
    role = load_roles(_write(tmp_path, ""))["custom"]
    assert role.tools == [] and role.mcp_servers == {} and role.max_turns == 25
    assert role.permissions.allow is None and role.permissions.deny == []
    assert role.sandbox.mode is Sandbox.BWRAP and role.sandbox.network is False


def test_the_built_in_roles_have_their_tool_sets() -> None:
    roles = load_roles()
    assert roles["architect"].tools == ["Read", "Write", "Edit", "Glob", "Grep"]
    assert roles["coder"].tools == ["Read", "Write", "Edit", "Glob", "Grep", "Bash"]
    assert roles["infra"].tools == ["Read", "Glob", "Grep", "Bash"]
    assert roles["reviewer"].tools == ["Read", "Glob", "Grep"]
    assert all(role.sandbox.mode is Sandbox.BWRAP for role in roles.values())


def test_a_full_tool_section_is_read(tmp_path: Path) -> None:
    body = """
tools: [Read, Bash]
max_turns: 12
sandbox: {mode: auto, network: true, max_memory_mb: 2048}
permissions:
  allow: [Read, "Bash(git *)", "mcp__git__*"]
  ask: [mcp__git__git_commit]
  deny: ["Bash(git push*)"]
mcp_servers:
  git:
    command: uvx
    args: [mcp-server-git, --repository, .]
    env: {GIT_AUTHOR_NAME: orchestra}
  docs:
    type: http
    url: https://mcp.example.com/mcp
    headers: {Authorization: "Bearer ${DOCS_TOKEN}"}
"""
    role = load_roles(_write(tmp_path, body))["custom"]
    assert role.max_turns == 12 and role.sandbox.network is True
    assert role.sandbox.max_memory_mb == 2048
    assert role.mcp_servers["git"].args == ["mcp-server-git", "--repository", "."]
    assert role.mcp_servers["docs"].type == "http"
    assert role.permissions.ask == ["mcp__git__git_commit"]


@pytest.mark.parametrize(
    ("body", "where", "what"),
    [
        ("tools: [Read, Delete]\n", "tools", "unknown tool 'Delete'"),
        ("tools: [Read, Read]\n", "tools", "listed twice"),
        ("max_turns: 0\n", "max_turns", "greater than or equal to 1"),
        ("sandbox: {mode: docker}\n", "sandbox.mode", "'bwrap', 'auto' or 'none'"),
        ("sandbox: {netwrok: true}\n", "sandbox.netwrok", "Extra inputs"),
        ("sandbox: {max_memory_mb: -1}\n", "sandbox.max_memory_mb", "greater than or equal"),
        ("model: ''\n", "model", "at least 1 character"),
        ("permissions: {allow: ['Bash(']}\n", "permissions", "not a tool-name pattern"),
        ("permissions: {always: [Read]}\n", "permissions.always", "Extra inputs"),
        ("mcp_servers: {git: {args: [x]}}\n", "mcp_servers.git", "needs a command"),
        (
            "mcp_servers: {web: {type: http, url: 'ftp://x'}}\n",
            "mcp_servers.web",
            "http(s) url",
        ),
        (
            "mcp_servers: {web: {type: http, url: 'https://x', command: y}}\n",
            "mcp_servers.web",
            "are for stdio",
        ),
        ("mcp_servers: {my__git: {command: x}}\n", "mcp_servers", "single '_'"),
        ("mcp_servers: {git: {type: sse, url: 'https://x'}}\n", "mcp_servers.git.type", ""),
    ],
)
def test_a_bad_tool_key_is_an_error_naming_the_file_and_key(
    tmp_path: Path, body: str, where: str, what: str
) -> None:
    directory = _write(tmp_path, body)
    with pytest.raises(ConfigError) as caught:
        load_roles(directory)
    message = caught.value.message
    assert message.startswith(f"{directory / 'custom.yaml'}: {where}: "), message
    assert what in message


def _write(tmp_path: Path, body: str) -> Path:
    directory = tmp_path / "agents"
    directory.mkdir(exist_ok=True)
    (directory / "custom.yaml").write_text(BASE + body)
    return directory


def test_the_readme_example_role_is_valid_and_decides_as_described(tmp_path: Path) -> None:
    from orchestra_cli.tools.permissions import Decision
    from orchestra_cli.tools.toolbox import Toolbox
    from tests.support import REPO

    readme = (REPO / "README.md").read_text()
    section = readme.split("## Agents that act: the loop, tools, MCP servers, delegation", 1)[1]
    lead = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    section = section.split("A role file gains these keys:", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    directory = tmp_path / "agents"
    directory.mkdir()
    (directory / "release.yaml").write_text(example)
    (directory / "lead.yaml").write_text(lead)
    assert load_roles(directory)["lead"].tools[-3:] == ["delegate", "spawn", "wait"]
    role = load_roles(directory)["release"]
    assert set(role.mcp_servers) == {"git", "docs"}
    toolbox = Toolbox(role.tools, permissions=role.permissions)  # no servers started
    assert toolbox.decide("Bash", {"command": "git status && make test"}) is Decision.ALLOW
    assert toolbox.decide("Bash", {"command": "git status; rm -rf ~"}) is Decision.DENY
    assert toolbox.decide("Edit", {"file_path": "CHANGELOG.md"}) is Decision.ALLOW
    assert toolbox.decide("Edit", {"file_path": "setup.py"}) is Decision.DENY
    assert role.permissions.ask == ["mcp__git__git_commit"]
