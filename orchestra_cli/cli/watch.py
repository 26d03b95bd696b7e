"""`task watch` and `task submit --wait`: follow a task tree through its event log.

On a terminal the view is a live rich tree; otherwise one plain line per
event (JSON lines with ``--json``), replayed from the task's first event so a
script never misses one. The exit code is the task's outcome.
"""

from __future__ import annotations

import sys

from orchestra_cli.cli.context import AppContext
from orchestra_cli.errors import ExitStatus
from orchestra_cli.models import Event, Task
from orchestra_cli.status import TERMINAL, Status
from orchestra_cli.util import dumps, human_duration


def _outcome(task: Task) -> int:
    return ExitStatus.OK if task.status == Status.SUCCEEDED else ExitStatus.FAILURE


def _timed_out(task: Task, timeout: float) -> int:
    from orchestra_cli.cli.main import error_line

    print(
        error_line(
            f"task {task.id} still {task.status} after {timeout:g}s — keep watching "
            f"with `orchestra task watch {task.id}`"
        ),
        file=sys.stderr,
    )
    return ExitStatus.FAILURE


def _summary(app: AppContext, task: Task) -> None:
    took = human_duration(task.duration)
    line = f"task {task.id} {task.status} in {took}"
    if task.error and task.status != Status.SUCCEEDED:
        line += f": {task.error}"
    app.info(line)


def watch_task(app: AppContext, task_id: str, *, timeout: float | None = None) -> int:
    """Follow the task until it ends; return its exit code."""
    service = app.service()
    task = service.get(task_id)
    if sys.stdout.isatty() and not app.json:
        return _watch_live(app, task, timeout)
    return _watch_lines(app, task, timeout)


def _watch_live(app: AppContext, task: Task, timeout: float | None) -> int:
    from rich.live import Live

    from orchestra_cli.cli.watchview import live_view

    service = app.service()
    tree = service.subtree(task.id)
    steps: dict[str, Event] = {}  # each task's latest step, for "what it is doing now"
    with Live(live_view(tree, {}), console=app.console, auto_refresh=False) as live:
        for update in service.follow(task, timeout=timeout):  # each: the tree changed
            steps.update({e.task_id: e for e in update.events if e.type == "step"})
            tree = service.subtree(task.id)
            current = tree[0]
            stuck = {} if current.status in TERMINAL else service.blockers(tree)
            live.update(live_view(tree, stuck, steps=steps), refresh=True)
            if update.timed_out:
                return _timed_out(current, timeout or 0)
    _summary(app, current)
    return _outcome(current)


def _event_json(event: Event) -> str:
    from orchestra_cli.shapes import event_json

    return dumps(event_json(event))


def _watch_lines(app: AppContext, task: Task, timeout: float | None) -> int:
    from orchestra_cli.cli.render import event_line

    service = app.service()
    members = {t.id: t.title for t in service.subtree(task.id)}
    current = task
    for update in service.follow(task, timeout=timeout):
        if any(e.type == "created" for e in update.events):
            members = {t.id: t.title for t in service.subtree(task.id)}
        for event in update.events:
            if event.task_id in members:
                line = _event_json(event) if app.json else event_line(event, members)
                sys.stdout.write(line + "\n")
        sys.stdout.flush()
        current = update.task
        if update.timed_out:
            return _timed_out(current, timeout or 0)
    if not app.json:
        _summary(app, current)
    return _outcome(current)


def wait_for(
    app: AppContext,
    task: Task,
    *,
    timeout: float | None = None,
    counted: bool = False,
    result: bool = False,
) -> int:
    """Block until the task ends (`task submit --wait`); print its outcome, and with
    ``result`` its result on stdout (like Celery's ``.get()``). Only the end wakes it
    (``TaskService.wait``); ``counted``: submitted with ``wait=True``."""
    from orchestra_cli.cli.render import task_json

    task = app.service().wait(task, timeout, counted=counted)
    if task.status not in TERMINAL:
        return _timed_out(task, timeout or 0)
    if app.json:
        app.print_json({"task": task_json(task)})
        return _outcome(task)
    if result and task.result is not None:
        text = task.result if isinstance(task.result, str) else dumps(task.result, indent=2)
        sys.stdout.write(text.rstrip("\n") + "\n")
        sys.stdout.flush()
    _summary(app, task)
    return _outcome(task)
