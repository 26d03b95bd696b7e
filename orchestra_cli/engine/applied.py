"""The concurrency and task timeout an agent really runs with, and where each comes from.

Concurrency: ``agent start --concurrency`` beats the role file's
``concurrency``, which beats ``agents.concurrency``. A task's timeout: its own
``--timeout`` (subtasks inherit a given one), else the role file's ``timeout``,
else ``tasks.default_timeout``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from orchestra_cli.engine.roles import RoleDefinition, role_origin
from orchestra_cli.settings import Settings


@dataclass(frozen=True)
class Applied:
    value: float
    source: str
    note: str = ""

    def __str__(self) -> str:
        return f"{self.value:g} ({self.source}{'; ' + self.note if self.note else ''})"


def _setting_source(key: str, sources: Mapping[str, str]) -> str:
    return f"{key}, {sources.get(key, 'default')}"


def concurrency(
    role: RoleDefinition,
    settings: Settings,
    sources: Mapping[str, str] | None = None,
    flag: int | None = None,
) -> Applied:
    """Tasks at once for an agent of ``role``; ``flag``: ``--concurrency``."""
    if flag is not None:
        return Applied(flag, "--concurrency")
    origin = role_origin(role.name)
    if origin is not None and "concurrency" in origin[1]:
        ignored = (
            "agents.concurrency not applied"
            if "agents.concurrency" in (sources or {})
            and settings.agents.concurrency != role.concurrency
            else ""
        )
        return Applied(role.concurrency, f"role file {origin[0]}", ignored)
    return Applied(
        settings.agents.concurrency, _setting_source("agents.concurrency", sources or {})
    )


def role_timeout(role: RoleDefinition) -> float | None:
    """The role file's ``timeout``, when the file sets one."""
    origin = role_origin(role.name)
    return role.timeout if origin is not None and "timeout" in origin[1] else None


def task_timeout(
    role: RoleDefinition, settings: Settings, sources: Mapping[str, str] | None = None
) -> Applied:
    """Seconds an attempt may take, for tasks submitted without ``--timeout``."""
    note = "a task's --timeout beats it"
    own = role_timeout(role)
    if own is not None:
        origin = role_origin(role.name)
        assert origin is not None
        if "tasks.default_timeout" in (sources or {}) and settings.tasks.default_timeout != own:
            note += "; tasks.default_timeout not applied"
        return Applied(own, f"role file {origin[0]}", note)
    return Applied(
        settings.tasks.default_timeout,
        _setting_source("tasks.default_timeout", sources or {}),
        note,
    )


def time_limit(task_timeout: float, given: bool, role: float | None) -> float:
    """The seconds an attempt of a task gets: its own when given, else the role's."""
    return task_timeout if given or role is None else role


def for_roles(
    roles: Mapping[str, RoleDefinition],
    settings: Settings,
    sources: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Applied]]:
    """Both, for every role: what `config show` prints."""
    return {
        name: {
            "concurrency": concurrency(role, settings, sources),
            "task_timeout": task_timeout(role, settings, sources),
        }
        for name, role in sorted(roles.items())
    }
