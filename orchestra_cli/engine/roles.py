"""Agent role definitions: ``templates/agents/*.yaml`` plus the operator's own."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

from msgspec import Meta, field

from orchestra_cli.errors import ConfigError, UsageError
from orchestra_cli.models import AgentRecord
from orchestra_cli.records import FieldError, Record, RecordError
from orchestra_cli.templates import templates_dir
from orchestra_cli.tools.config import (
    McpServerConfig,
    PermissionsConfig,
    SandboxConfig,
    check_servers,
    known_tools,
)


class RoleDefinition(Record, kw_only=True, forbid_unknown_fields=True):
    """What an agent of this role can do and how it calls the model."""

    name: Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_-]*\Z")]
    description: str = ""
    capabilities: Annotated[list[str], Meta(min_length=1)]
    model: Annotated[str, Meta(min_length=1)] = "claude-sonnet-5-5"
    prompt: str = "execute-coder"
    max_tokens: Annotated[int, Meta(ge=1)] = 4096
    temperature: Annotated[float, Meta(ge=0, le=1)] = 0.2
    concurrency: Annotated[int, Meta(ge=1, le=256)] = 1
    timeout: Annotated[float, Meta(gt=0)] = 600
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None  # the model's default
    # the tool layer (orchestra_cli.tools): README "Tools, MCP servers and permissions"
    tools: list[str] = field(default_factory=list)
    mcp_servers: dict[str, McpServerConfig] = field(default_factory=dict)
    permissions: PermissionsConfig = field(default_factory=PermissionsConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    max_turns: Annotated[int, Meta(ge=1, le=500)] = 25

    def __post_init__(self) -> None:
        try:
            known_tools(self.tools)
        except ValueError as exc:
            raise FieldError("tools", str(exc)) from None
        try:
            check_servers(self.mcp_servers)
        except ValueError as exc:
            raise FieldError("mcp_servers", str(exc)) from None


def role_acts(role: RoleDefinition) -> bool:
    """Whether agents of ``role`` run the tool-use loop (it has tools or MCP servers)."""
    return bool(role.tools or role.mcp_servers)


# role name -> the file it was last loaded from and the keys that file sets
_ORIGINS: dict[str, tuple[Path, frozenset[str]]] = {}


def role_origin(name: str) -> tuple[Path, frozenset[str]] | None:
    """The file a loaded role came from and the keys it sets (the rest are defaults)."""
    return _ORIGINS.get(name)


def _load_file(path: Path) -> RoleDefinition:
    from orchestra_cli.settings import read_yaml

    data = read_yaml(path)  # errors name the file and line
    try:
        role = RoleDefinition.model_validate(data)
        _ORIGINS[role.name] = (path, frozenset(data))
        return role
    except RecordError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "definition"
        raise ConfigError(f"{path}: {field}: {err['msg']}", "fix the agent definition") from None


def load_roles(extra_dir: Path | None = None) -> dict[str, RoleDefinition]:
    """Every role by name; the operator's directory overrides a shipped role."""
    if extra_dir is not None and not extra_dir.is_dir():
        raise ConfigError(
            f"agents.definitions_dir {extra_dir} is not a directory",
            "create it or fix agents.definitions_dir (ORCHESTRA_AGENTS__DEFINITIONS_DIR)",
        )
    roles: dict[str, RoleDefinition] = {}
    for directory in (templates_dir() / "agents", extra_dir):
        if directory is None or not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.yaml")):
            role = _load_file(path)
            roles[role.name] = role
    return roles


def get_role(roles: dict[str, RoleDefinition], name: str) -> RoleDefinition:
    if name not in roles:
        raise UsageError(
            f"unknown agent role {name!r}", f"choose one of: {', '.join(sorted(roles))}"
        )
    return roles[name]


def known_capabilities(
    roles: dict[str, RoleDefinition], agents: Iterable[AgentRecord] = ()
) -> set[str]:
    """Capabilities of the defined roles, plus those of registered agents (custom roles)."""
    caps = {cap for role in roles.values() for cap in role.capabilities}
    for agent in agents:
        caps.update(agent.capabilities)
    return caps
