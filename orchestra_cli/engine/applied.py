"""The concurrency and task timeout an agent really runs with, and where each comes from.

Concurrency: ``agent start --concurrency`` beats the role file's
``concurrency``, which beats ``agents.concurrency``. Timeouts are the task's
own: its ``--timeout``, else ``tasks.default_timeout`` when it was submitted
(subtasks inherit their parent's); a role file's ``timeout`` is not applied,
and what is shown says so.
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


def task_timeout(
    role: RoleDefinition, settings: Settings, sources: Mapping[str, str] | None = None
) -> Applied:
    """Seconds an attempt may take, for tasks submitted without ``--timeout``."""
    origin = role_origin(role.name)
    note = "a task's --timeout beats it"
    if origin is not None and "timeout" in origin[1]:
        note += f"; the role file's timeout ({role.timeout:g}) is not applied"
    return Applied(
        settings.tasks.default_timeout,
        _setting_source("tasks.default_timeout", sources or {}),
        note,
    )


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
