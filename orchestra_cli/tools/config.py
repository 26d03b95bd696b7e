"""The tool keys of a role file: ``tools``, ``mcp_servers``, ``permissions``, ``sandbox``.

Light on purpose: the role loader checks these for every command that reads
the agent definitions, so this module imports neither ``mcp`` nor the tools
(their dataclasses cost ~15 ms to create); ``Sandbox`` and the rule syntax live
here and the tools import them.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from msgspec import Meta, field

from orchestra_cli.records import Record

RULE = re.compile(r"^(?P<name>[A-Za-z0-9_*?\[\]!-]+)(?:\((?P<arg>.*)\))?$", re.DOTALL)


class Sandbox(enum.StrEnum):
    """Where ``Bash`` runs. Only ``bwrap`` is safe; the others are an explicit opt-in."""

    BWRAP = "bwrap"  # in bubblewrap; refused when bwrap is not installed
    AUTO = "auto"  # in bubblewrap where installed, else unsandboxed
    NONE = "none"  # never sandboxed


def parse_rule(text: str) -> tuple[str, str | None]:
    """A permissions rule as (tool-name pattern, argument pattern or None)."""
    match = RULE.match(text.strip())
    if not match:
        raise ValueError(
            f"{text!r} is not a tool-name pattern (examples: Bash, mcp__git__*, Bash(git *))"
        )
    return match["name"], match["arg"]


BUILTIN_TOOLS = ("Read", "Write", "Edit", "Glob", "Grep", "Bash", "WebFetch")
ENGINE_TOOLS = ("delegate", "spawn", "wait")  # the engine's own (engine/delegation.py)
SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*(?:_[A-Za-z0-9-]+)*$")  # no "__" inside


def known_tools(names: list[str]) -> list[str]:
    """``names`` if each is a built-in tool, once (a ``ValueError`` names the first that is not)."""
    for name in names:
        if name not in BUILTIN_TOOLS and name not in ENGINE_TOOLS:
            raise ValueError(
                f"unknown tool {name!r}; the built-in tools are "
                f"{', '.join(BUILTIN_TOOLS + ENGINE_TOOLS)}"
            )
    if len(set(names)) != len(names):
        raise ValueError("a tool is listed twice")
    return names


class McpServerConfig(Record, forbid_unknown_fields=True):
    """One MCP server, as in Claude Desktop's and the Claude Agent SDK's ``mcpServers``:
    ``{command, args, env}`` for stdio, ``{type: http, url, headers}`` for streamable HTTP."""

    type: Literal["stdio", "http"] = "stdio"
    command: str | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    startup_timeout: Annotated[float, Meta(gt=0)] = 30.0

    def __post_init__(self) -> None:
        if self.type == "stdio":
            if not self.command:
                raise ValueError("a stdio server needs a command (or type: http with a url)")
            if self.url or self.headers:
                raise ValueError("url and headers are for type: http; a stdio server has command")
            return
        if self.command or self.args or self.env or self.cwd:
            raise ValueError("command, args, env and cwd are for stdio; an http server has url")
        if not self.url or urlsplit(self.url).scheme not in ("http", "https"):
            raise ValueError("an http server needs an http(s) url")


class PermissionsConfig(Record, forbid_unknown_fields=True):
    """``allow`` / ``ask`` / ``deny`` rules. Without ``allow``, the role's tools and every
    tool of its MCP servers are allowed."""

    allow: list[str] | None = None
    ask: list[str] = field(default_factory=list)
    deny: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for rule in (*(self.allow or ()), *self.ask, *self.deny):
            parse_rule(rule)


class SandboxConfig(Record, forbid_unknown_fields=True):
    """Where ``Bash`` runs: ``bwrap`` (refused without bubblewrap), ``auto`` (unsandboxed
    where bwrap is missing) or ``none``; ``network`` lets the sandbox reach the network;
    ``max_memory_mb`` the private memory each of a command's processes may take (unset:
    half of what the agent may use; 0: no limit — sanitizer builds such as ``go test
    -race`` map terabytes up front, and a JVM may commit its whole heap)."""

    mode: Sandbox = Sandbox.BWRAP
    network: bool = False
    max_memory_mb: Annotated[int, Meta(ge=0)] | None = None


def check_servers(servers: dict[str, McpServerConfig]) -> dict[str, McpServerConfig]:
    for name in servers:
        if not SERVER_NAME.match(name):
            raise ValueError(
                f"MCP server name {name!r}: letters, digits, '-' and single '_' only "
                "(its tools are named mcp__<server>__<tool>)"
            )
    return servers
