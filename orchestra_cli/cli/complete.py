"""Values for shell completion: task ids (recent first), agents, roles, statuses…

Each function is a typer ``autocompletion`` callback: called while a shell
asks for candidates (``_ORCHESTRA_COMPLETE``), with the partial word. The
app's own callback has not run then, so settings are loaded here from the
command line's ``--config``. A failure (bad config, a store that cannot be
reached) offers nothing rather than an error in the middle of a prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from orchestra_cli.cli.context import AppContext

TASKS_OFFERED = 30
Candidates = list[tuple[str, str]]


def _app(ctx: typer.Context) -> AppContext:
    from orchestra_cli.cli.context import AppContext

    root = ctx.find_root()
    if isinstance(root.obj, AppContext):
        return root.obj
    config = root.params.get("config")
    return AppContext(config=config, json=False, quiet=True, verbose=False, no_color=True)


def _safely(read: Callable[[AppContext], Iterable[tuple[str, str]]]) -> Callable[..., Candidates]:
    """A completer offering ``read``'s (value, help) pairs that start with the word."""

    def complete(ctx: typer.Context, incomplete: str) -> Candidates:
        app = _app(ctx)
        try:
            pairs = list(read(app))
        except Exception:  # completing must never print an error mid-prompt
            return []
        finally:
            app.close()
        return [(value, help_) for value, help_ in pairs if value.startswith(incomplete)]

    return complete


def _tasks(app: AppContext) -> Iterable[tuple[str, str]]:
    """Short ids of the most recent tasks, newest first, then their whole ids."""
    from orchestra_cli.ids import short_id

    tasks = app.service().list_tasks(limit=TASKS_OFFERED)
    described = [(t, f"{t.status.value}: {' '.join(t.title.split())[:50]}") for t in tasks]
    return [(short_id(t.id), d) for t, d in described] + [(t.id, d) for t, d in described]


def _agents(app: AppContext) -> Iterable[tuple[str, str]]:
    from orchestra_cli.cli.render import agent_state

    ttl = app.settings.agents.ttl_seconds
    agents = app.service().agents()
    states = {a.name: agent_state(a, ttl) for a in agents}
    ordered = sorted(agents, key=lambda a: (states[a.name] == "stopped", a.name))
    return [(a.name, f"{a.role}, {states[a.name]}") for a in ordered]


def _roles(app: AppContext) -> Iterable[tuple[str, str]]:
    return [(name, ", ".join(r.capabilities)) for name, r in sorted(app.roles.items())]


def _capabilities(app: AppContext) -> Iterable[tuple[str, str]]:
    by_cap: dict[str, list[str]] = {}
    for name, role in sorted(app.roles.items()):
        for cap in role.capabilities:
            by_cap.setdefault(cap, []).append(name)
    return [(cap, ", ".join(roles)) for cap, roles in sorted(by_cap.items())]


def _statuses(app: AppContext) -> Iterable[tuple[str, str]]:
    from orchestra_cli.status import Status

    return [(s.value, "") for s in Status]


def _services(app: AppContext) -> Iterable[tuple[str, str]]:
    from orchestra_cli.services.definitions import SERVICE_NAMES

    return [(name, "service") for name in SERVICE_NAMES]


def _log_names(app: AppContext) -> Iterable[tuple[str, str]]:
    from orchestra_cli.proclogs import process_logs

    processes = [(name, "process log") for name in process_logs(app.settings.logs_dir)]
    return [*_services(app), *processes]


def _snapshots(app: AppContext) -> Iterable[tuple[str, str]]:
    from orchestra_cli.snapshots import list_snapshots

    snaps = list(reversed(list_snapshots(app.settings)))  # newest first
    return [("latest", "the newest snapshot")] + [(s.name, s.created_at) for s in snaps]


task_ids = _safely(_tasks)
agent_names = _safely(_agents)
roles = _safely(_roles)
capabilities = _safely(_capabilities)
statuses = _safely(_statuses)
services = _safely(_services)
log_names = _safely(_log_names)
snapshot_names = _safely(_snapshots)


def comma_list(complete: Callable[..., Candidates]) -> Callable[..., Candidates]:
    """For ``a,b,…`` values: complete the last item, keeping those before it."""

    def inner(ctx: typer.Context, incomplete: str) -> Candidates:
        head, sep, last = incomplete.rpartition(",")
        prefix = head + sep
        return [(prefix + value, help_) for value, help_ in complete(ctx, last)]

    return inner
