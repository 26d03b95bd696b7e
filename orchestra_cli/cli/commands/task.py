"""`orchestra task submit|watch|get|list|cancel|retry|transcript|files|export`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from orchestra_cli.cli import complete
from orchestra_cli.cli.context import AppContext

if TYPE_CHECKING:
    from collections.abc import Callable

    from orchestra_cli.engine.approvals import Waiting
    from orchestra_cli.engine.service import TaskService
    from orchestra_cli.models import Task


def _task_id(value: str) -> str:
    value = value.strip()
    if len(value) < MIN_PREFIX:
        raise typer.BadParameter(
            f"{value!r} is {'empty' if not value else 'too short'}: give the task id or a "
            f"prefix of at least {MIN_PREFIX} characters"
        )
    return value


MIN_PREFIX = 4
TaskId = Annotated[
    str,
    typer.Argument(
        help="Task id, its short id (the last 8 characters) or a unique prefix.",
        callback=_task_id,
        autocompletion=complete.task_ids,
    ),
]

task_app = typer.Typer(help="Submit, watch, inspect and control tasks.", no_args_is_help=True)


def _read_input(text: str | None, file: Path | None) -> str:
    from orchestra_cli.errors import UsageError

    if text is not None and file is not None:
        raise UsageError("give the task as TEXT or --file, not both", "drop one of them")
    if file is not None:
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {file}: {exc.strerror}", "check the path") from None
        source = str(file)
    elif text == "-":
        raw = sys.stdin.buffer.read()
        source = "stdin"
    elif text is not None:
        return text
    else:
        raise UsageError("no task given", "pass TEXT, - to read stdin, or --file PATH")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{source} is not UTF-8 text (bad byte at offset {exc.start})",
            "convert it to UTF-8",
        ) from None


def _parse_labels(labels: list[str]) -> dict[str, str]:
    from orchestra_cli.errors import UsageError

    out = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"label {item!r} is not KEY=VALUE", "e.g. --label team=infra")
        out[key.strip()] = value.strip()
    return out


def _parse_budget(text: str) -> dict[str, str]:
    """``0.50`` / ``$2`` → budget_usd; ``20000tok`` / ``20k tokens`` → budget_tokens."""
    import re

    from orchestra_cli.errors import UsageError

    t = text.strip().lower().replace(",", "").replace(" ", "")
    tokens = re.fullmatch(r"(\d+)(k?)(tok|tokens)", t)
    if tokens:
        return {"budget_tokens": str(int(tokens.group(1)) * (1000 if tokens.group(2) else 1))}
    usd = re.fullmatch(r"\$?(\d+(?:\.\d+)?)(usd)?", t)
    if usd and float(usd.group(1)) > 0:
        return {"budget_usd": usd.group(1)}
    raise UsageError(
        f"cannot read budget {text!r}", "use USD like 0.50 or $2, or tokens like 20000tok"
    )


# The options are the described fields of a submission (engine/submission.py), declared
# here so that building the command imports no records (`orchestra --help` stays light);
# tests/unit/test_submission.py holds their names, types and help to the description.
@task_app.command("submit")
def submit(
    ctx: typer.Context,
    text: Annotated[str | None, typer.Argument(help="Task text, or - to read stdin.")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Read the task from a file.", dir_okay=False)
    ] = None,
    title: Annotated[str | None, typer.Option(help="Short title (default: first line).")] = None,
    capability: Annotated[
        str | None,
        typer.Option(
            "--capability",
            "-c",
            help="Route to this capability; skips planning.",
            autocompletion=complete.capabilities,
        ),
    ] = None,
    priority: Annotated[int | None, typer.Option("--priority", "-p", help="0 (low) to 9.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds per attempt.")] = None,
    max_attempts: Annotated[int | None, typer.Option(help="Attempts before failing.")] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label", "-l", metavar="KEY=VALUE", help="Labels, KEY=VALUE each; repeatable."
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Submitting the same key again returns the same task.")
    ] = None,
    review_plan: Annotated[
        bool,
        typer.Option(
            "--review-plan", help="The plan waits for `task approve` before any of it runs."
        ),
    ] = False,
    budget: Annotated[
        str | None,
        typer.Option(
            help="Spending cap for the whole task tree: USD (0.50, $2) or tokens (20000tok)."
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Wait for the outcome; exit 1 if it fails.")
    ] = False,
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace",
            help="Upload this directory as the tree's starting files (size-capped).",
            file_okay=False,
        ),
    ] = None,
    batch: Annotated[
        str | None,
        typer.Option(
            "--batch",
            "-b",
            help="Submit every line of FILE (- for stdin): task text or a JSON object; "
            "the other options are defaults. Prints one id per line.",
            metavar="FILE",
        ),
    ] = None,
) -> int:
    """Submit a task (or a batch); print its id (only the id with -q)."""
    from orchestra_cli.engine.submission import SubmitRequest
    from orchestra_cli.errors import UsageError

    app: AppContext = ctx.obj
    labels = _parse_labels(label or [])
    if review_plan:
        labels["review_plan"] = "true"
    if budget is not None:
        labels.update(_parse_budget(budget))
    if batch is not None:
        if text is not None or file is not None or wait or idempotency_key or title or workspace:
            raise UsageError(
                "--batch takes its tasks from the file",
                "drop TEXT, --file, --title, --idempotency-key, --workspace and --wait "
                "(set them per line)",
            )
        from orchestra_cli.cli.batch import read_batch, submit_batch

        defaults = SubmitRequest(
            text="",
            capability=capability,
            priority=priority,
            timeout=timeout,
            max_attempts=max_attempts,
            labels=labels,
        )
        return submit_batch(app, read_batch(batch, defaults))
    req = SubmitRequest(
        text=_read_input(text, file),
        title=title,
        capability=capability,
        priority=priority,
        timeout=timeout,
        max_attempts=max_attempts,
        labels=labels,
        idempotency_key=idempotency_key,
    )
    if workspace is not None:
        from orchestra_cli.engine.workspace import read_base

        req.workspace = read_base(workspace, hide=(app.settings.home,))
    from orchestra_cli.errors import Undelivered

    service = app.service()
    try:
        task, created = service.submit(req, wait=wait)
    except Undelivered as exc:  # stored: its id goes out, so a script does not submit it again
        if app.json:
            from orchestra_cli.cli.render import task_json

            stored = task_json(service.get(exc.task_id))
            app.print_json({"created": True, "delivered": False, "task": stored})
        else:
            print(exc.task_id, flush=True)
        raise
    if app.json:  # one document: with --wait, the outcome's (wait_for)
        if not wait:
            from orchestra_cli.cli.render import task_json

            app.print_json({"created": created, "task": task_json(task)})
    elif app.quiet or not wait:  # with --wait, stdout is the result (wait_for)
        print(task.id, flush=True)
    _say_submitted(app, service, task, created=created, wait=wait)
    if not wait:
        return 0
    from orchestra_cli.cli.watch import wait_for

    return wait_for(app, task, counted=True, result=not app.quiet)


def _say_submitted(
    app: AppContext, service: TaskService, task: Task, *, created: bool, wait: bool
) -> None:
    """On stderr: what became of the submission, and (even with -q or --json) why it
    cannot move yet — the registry read the routing did is still fresh."""
    note = "" if created else " (existing task for this idempotency key)"
    if app.json:
        pass
    elif wait:
        app.info(f"submitted {task.id}{note}; waiting for its outcome")
    else:
        app.info(f"submitted{note}; follow it with: orchestra task watch {task.id}")
    blocker = service.blockers([task]).get(task.id) if created else None
    if blocker is not None:
        print(f"orchestra: warning: {blocker}", file=sys.stderr, flush=True)


@task_app.command("watch")
def watch(
    ctx: typer.Context,
    task_id: TaskId,
    timeout: Annotated[
        float | None, typer.Option(min=0, help="Give up after this many seconds (exit 1).")
    ] = None,
) -> int:
    """Live view of a task and its subtasks; exits 0 if it succeeds, 1 otherwise."""
    from orchestra_cli.cli.watch import watch_task

    return watch_task(ctx.obj, task_id, timeout=timeout)


@task_app.command("get")
def get(
    ctx: typer.Context,
    task_id: TaskId,
) -> None:
    """Show a task, its subtasks, result, error and usage."""
    from orchestra_cli.cli.render import task_json, task_tree, task_tree_text, usage_text

    app: AppContext = ctx.obj
    service = app.service()
    task = service.get(task_id)
    tree = service.subtree(task.id)
    total = service.tree_usage(tree)
    from orchestra_cli.engine.steps import short

    waits = [w for t in tree for w in service.waiting(t)]
    if app.json:
        data = task_json(task)
        data["subtasks"] = [task_json(t) for t in tree if t.id != task.id]
        data["tree_usage"] = total.model_dump()
        data["waiting_for"] = [w.to_json() for w in waits]
        data["file_conflicts"] = service.conflicts(task)
        app.print_json(data)
        return
    summary = (
        f"id: {task.id}   tokens: {usage_text(total)}   labels: "
        f"{', '.join(f'{k}={v}' for k, v in task.labels.items()) or '-'}"
    )
    for w in waits:  # what a blocked task waits for, and the command that answers it
        summary += "\n" + _waits_line(w, short)
    for conflict in service.conflicts(task):  # two branches changed one file
        summary += f"\nfile conflict: {conflict}"
    if not sys.stdout.isatty():  # into a pipe or file: plain text, without rich
        error = f"error: {task.error}\n" if task.error else ""
        result = f"result:\n{task.result}\n" if task.result is not None else ""
        sys.stdout.write(f"{task_tree_text(tree)}{summary}\n{error}{result}")
        return
    app.console.print(task_tree(tree))
    app.console.print(summary, markup=False)
    if task.error:
        app.console.print(f"error: {task.error}", markup=False, style="red")
    if task.result is not None:
        app.console.print("result:", style="bold")
        app.console.print(str(task.result), markup=False)


def _waits_line(w: Waiting, short: Callable[[object], str]) -> str:
    who = f"task {w.task.id[-8:]}"
    if w.tool == "plan":
        return (
            f"waits for plan review ({who}): orchestra task plan {w.task.id}, then "
            f"approve {w.task.id} | reject {w.task.id} --reason TEXT"
        )
    return (
        f"waits for approval: {w.tool} {short(w.input)} ({who}, step {w.step}) — "
        f"orchestra task approve {w.task.id} | reject {w.task.id} --reason TEXT"
    )


@task_app.command("list")
def list_tasks(
    ctx: typer.Context,
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            "-s",
            metavar="STATUS",
            help="Filter by status (repeatable or comma-separated).",
            autocompletion=complete.comma_list(complete.statuses),
        ),
    ] = None,
    agent: Annotated[
        str | None,
        typer.Option(help="Filter by agent name.", autocompletion=complete.agent_names),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Created since: 30m, 2h, 7d or ISO time.")
    ] = None,
    limit: Annotated[
        int, typer.Option(help="At most this many, newest first.", min=1, max=1_000_000)
    ] = 50,
    roots: Annotated[bool, typer.Option("--roots", help="Only top-level tasks.")] = False,
    capability: Annotated[
        str | None,
        typer.Option(
            "--capability", "-c", help="Filter by capability.", autocompletion=complete.capabilities
        ),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label", "-l", metavar="KEY=VALUE", help="Only tasks with this label; repeatable."
        ),
    ] = None,
) -> None:
    """List tasks, newest first."""
    from orchestra_cli.cli.render import task_json, tasks_table, tasks_text
    from orchestra_cli.errors import UsageError
    from orchestra_cli.status import Status
    from orchestra_cli.util import parse_since

    app: AppContext = ctx.obj
    statuses = [s.strip() for item in (status or []) for s in item.split(",") if s.strip()]
    valid = {s.value for s in Status}
    bad = [s for s in statuses if s not in valid]
    if bad:
        raise UsageError(f"unknown status {bad[0]!r}", f"choose from {', '.join(sorted(valid))}")
    tasks = app.service().list_tasks(
        status=statuses or None,
        agent=agent,
        since=parse_since(since) if since else None,
        limit=limit,
        roots_only=roots,
        capability=capability,
        labels=_parse_labels(label or []) or None,
    )
    if app.json:
        app.print_json([task_json(t) for t in tasks])
    elif app.quiet:  # ids only, for scripts
        sys.stdout.write("".join(f"{t.id}\n" for t in tasks))
    elif not tasks:
        app.info("no tasks match")
    elif sys.stdout.isatty():
        app.console.print(tasks_table(tasks, app.console.width))
    else:
        sys.stdout.write(tasks_text(tasks))


@task_app.command("cancel")
def cancel(
    ctx: typer.Context,
    task_id: TaskId,
) -> None:
    """Cancel a task and its unfinished subtasks (a running one is told to stop)."""
    app: AppContext = ctx.obj
    cancelled = app.service().cancel(task_id)
    if app.json:
        app.print_json({"cancelled": [t.id for t in cancelled]})
    else:
        for t in cancelled:
            app.info(f"cancelled {t.id} ({t.title})")


@task_app.command("retry")
def retry(
    ctx: typer.Context,
    task_id: TaskId,
    note: Annotated[
        str | None,
        typer.Option(
            help="Feedback: re-run this finished step (succeeded too) with the note in its "
            "prompt; its dependents run again after it."
        ),
    ] = None,
) -> None:
    """Run a failed or cancelled task again (with --note, any finished step)."""
    from orchestra_cli.cli.render import task_json
    from orchestra_cli.errors import UsageError

    app: AppContext = ctx.obj
    if note is not None and not note.strip():
        raise UsageError("--note is empty", "say what the step should do differently")
    task = app.service().retry(task_id, note=note)
    if app.json:
        app.print_json(task_json(task))
    else:
        app.info(f"task {task.id} is {task.status} again; watch it: orchestra task watch {task.id}")


@task_app.command("transcript")
def transcript(ctx: typer.Context, task_id: TaskId) -> None:
    """Every step of a task: the prompt as sent, model turns, tool calls and results."""
    app: AppContext = ctx.obj
    task, steps = app.service().steps(task_id)
    if app.json:
        app.print_json({"task_id": task.id, "status": task.status.value, "steps": steps})
        return
    from orchestra_cli.cli.transcript import render

    sys.stdout.write(render(task, steps))


@task_app.command("files")
def files(ctx: typer.Context, task_id: TaskId) -> None:
    """The files a task changed (a root task: its tree's final files)."""
    app: AppContext = ctx.obj
    task, entries = app.service().files(task_id)
    if app.json:
        app.print_json(
            {
                "task_id": task.id,
                "files": [
                    {"path": e.path, "size": e.size, "sha256": e.sha, "task_id": e.task_id}
                    for e in entries
                ],
            }
        )
        return
    if not entries:
        app.info(f"task {task.id} has no files")
        return
    width = max(len(e.path) for e in entries)
    for e in entries:
        what = "deleted" if e.sha is None else f"{e.size:>9,} B  {e.sha[:12]}"
        print(f"{e.path:<{width}}  {what}  {e.task_id[-8:]}")


@task_app.command("export")
def export(
    ctx: typer.Context,
    task_id: TaskId,
    directory: Annotated[Path, typer.Argument(help="Where to write the files (created).")],
) -> None:
    """Write the final files of the task's tree to DIRECTORY."""
    app: AppContext = ctx.obj
    task, written = app.service().export(task_id, directory)
    if app.json:
        app.print_json({"root_id": task.root_id, "written": [e.path for e in written]})
        return
    app.info(f"wrote {len(written)} file(s) of task tree {task.root_id} to {directory}")


def register(app: typer.Typer) -> None:
    from orchestra_cli.cli.commands import people  # approve, reject, plan, pause, resume

    people.register_on(task_app)
    app.add_typer(task_app, name="task")
