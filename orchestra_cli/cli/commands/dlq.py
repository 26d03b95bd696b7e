"""`orchestra dlq list|show|retry|rm|resubmit|purge`: the dead-letter queue (poison
messages, exhausted retries)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from orchestra_cli.cli import complete
from orchestra_cli.cli.context import AppContext

dlq_app = typer.Typer(
    help="Inspect and clear the dead-letter queue (`health` counts it).", no_args_is_help=True
)

COLUMNS = ("AGE", "QUEUE", "TASK", "NOW", "TRIES", "REASON")
LetterId = Annotated[
    str,
    typer.Argument(
        help="The task id `dlq list` shows (its short id or a unique prefix too), or the "
        "id of a letter that names no task (`dlq list --json`).",
        autocompletion=complete.task_ids,
    ),
]


def _letters(app: AppContext, limit: int) -> list[dict[str, Any]]:
    from orchestra_cli.engine.deadletters import letters

    return letters(app.backends(), limit)


@dlq_app.command("list")
def list_letters(
    ctx: typer.Context,
    limit: Annotated[
        int,
        typer.Option("--limit", "-n", help="At most this many, newest first.", min=1, max=10_000),
    ] = 50,
) -> None:
    """Dead letters, newest first: the queue each left, why, how often it was delivered,
    and the status of its task now (one that has since succeeded needs nothing)."""
    from orchestra_cli.util import human_duration, iso, now

    app: AppContext = ctx.obj
    letters = _letters(app, limit)
    if app.json:
        app.print_json([_shown(x, iso) for x in letters])
        return
    if app.quiet:  # each task once, for scripts (`… | xargs -n1 orchestra dlq retry`)
        tasks = dict.fromkeys(x["task_id"] for x in letters if x["task_id"])
        sys.stdout.write("".join(f"{t}\n" for t in tasks))
        return
    if not letters:
        app.info("the dead-letter queue is empty")
        return
    rows = [
        (
            human_duration(now() - x["enqueued_at"]) if x["enqueued_at"] else "-",
            x["queue"] or "-",
            x["task_id"] or (f"undecodable ({x['size']} bytes)" if x["undecodable"] else "-"),
            x["task_status"] or "-",
            _tries(x),
            x["reason"] or "-",
        )
        for x in letters
    ]
    if sys.stdout.isatty():
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, pad_edge=False, header_style="bold")
        for col in COLUMNS:
            table.add_column(col, no_wrap=col != "REASON", overflow="fold")
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))  # reasons are text, not markup
        app.console.print(table)
    else:
        from orchestra_cli.cli.render import columns_text

        sys.stdout.write(columns_text(COLUMNS, rows, {"TASK": 36}))
    settled = sum(1 for x in letters if x["task_status"] in ("succeeded", "cancelled"))
    if settled:
        app.info(f"{settled} of them belong to tasks that have ended well since")
    missing = sum(1 for x in letters if x["task_status"] == "missing")
    if missing:
        app.info(
            f"{missing} of them belong to tasks the state store no longer has; "
            "`orchestra dlq resubmit` submits them again"
        )


def _tries(letter: dict[str, Any]) -> str:
    """The attempts its task has had (the state store's count); a letter without a
    known task: how often the message was delivered, if known."""
    if letter["attempts"] is not None:
        return f"{letter['attempts']}/{letter['max_attempts']}"
    return "?" if letter["deliveries"] is None else f"{letter['deliveries']} deliveries"


def _shown(letter: dict[str, Any], iso: Any) -> dict[str, Any]:
    """A letter as `dlq list --json` prints it: whether it can be resubmitted, not the
    whole submission it carries."""
    shown = {k: v for k, v in letter.items() if k != "spec"}
    return {
        **shown,
        "enqueued_at": iso(letter["enqueued_at"]),
        "resubmittable": bool(letter["spec"]),
    }


@dlq_app.command("resubmit")
def resubmit(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would go.")] = False,
) -> None:
    """Submit again the tasks the state store lost (a Redis restarted without
    persistence), from the submissions their dead letters carry, under their own ids
    (a lost subtask comes back with its root, which is planned again)."""
    from orchestra_cli.engine.deadletters import SCAN, lost

    app: AppContext = ctx.obj
    specs, bare = lost(_letters(app, SCAN))
    done = []
    for spec in specs:
        if dry_run:
            done.append({"id": spec["id"], "title": spec.get("title"), "created": False})
            continue
        task, created = app.service().resubmit_lost(spec)
        done.append({"id": task.id, "title": task.title, "created": created})
    if app.json:
        app.print_json({"dry_run": dry_run, "resubmitted": done, "not_resubmittable": bare})
    else:
        for item in done:
            print(item["id"])
        verb = "would resubmit" if dry_run else "resubmitted"
        app.info(f"{verb} {len(done)} lost task{'' if len(done) == 1 else 's'}")
    if bare:
        app.info(
            f"{len(bare)} other lost task(s) left no submission of their own (subtasks come "
            f"back with their root; older messages carry none): {', '.join(bare[:5])}"
        )


@dlq_app.command("show")
def show(ctx: typer.Context, letter_id: LetterId) -> int:
    """One letter in full: its task, why it was dead-lettered, the task's error and
    attempts, its headers and when (a task's newest letter, naming its older ones)."""
    from orchestra_cli.engine.deadletters import find
    from orchestra_cli.errors import NotFoundError
    from orchestra_cli.util import iso

    app: AppContext = ctx.obj
    found = find(app.backends(), letter_id)
    if not found.letters:
        raise NotFoundError(
            f"task {found.task_id} has no dead letter", "`orchestra dlq list` shows the letters"
        )
    letter = _shown(found.letters[0], iso)
    letter["other_letters"] = [x["id"] for x in found.task_letters if x is not found.letters[0]]
    if app.json:
        app.print_json(letter)
        return 0
    keys = ("id", "task_id", "task_status", "queue", "reason", "error", "enqueued_at")
    for key in keys:
        print(f"{key:<14} {_one_line(letter[key])}")
    print(f"{'attempts':<14} {_tries(found.letters[0])}")
    print(f"{'deliveries':<14} {_one_line(letter['deliveries'])}")
    print(
        f"{'size':<14} {letter['size']} bytes"
        + (f" ({letter['undecodable']})" if letter["undecodable"] else "")
    )
    for name, value in letter["headers"].items():
        print(f"{'header':<14} {name}: {_one_line(value)}")
    if letter["other_letters"]:
        print(f"{'other letters':<14} {', '.join(letter['other_letters'])}")
    return 0


def _one_line(value: Any) -> str:
    return "-" if value is None or value == "" else " ".join(str(value).split())


@dlq_app.command("retry")
def retry(
    ctx: typer.Context,
    letter_id: Annotated[
        str | None,
        typer.Argument(
            help="A task id `dlq list` shows (or its short id); --all for every one.",
            autocompletion=complete.task_ids,
            show_default=False,
        ),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every letter's task.")] = False,
) -> None:
    """Run a letter's task again and remove its letters (a task the state store lost is
    submitted again). A task on its way already, or without letters, is not run again:
    retrying twice is a no-op."""
    from orchestra_cli.engine import deadletters
    from orchestra_cli.errors import OrchestraError, UsageError

    app: AppContext = ctx.obj
    if (letter_id is None) == (not all_):
        raise UsageError("give one task id or --all", "e.g. orchestra dlq retry --all")
    backends, service = app.backends(), app.service()
    if letter_id is not None:
        done = [deadletters.retry(service, deadletters.find(backends, letter_id))]
        skipped: list[str] = []
    else:
        done, skipped = [], []
        for found in deadletters.by_task(_letters(app, deadletters.SCAN)):
            try:
                done.append(deadletters.retry(service, found))
            except OrchestraError as exc:  # one letter's trouble does not stop the rest
                skipped.append(f"{found.task_id}: {exc.message}")
    if app.json:
        app.print_json({"retried": done, "skipped": skipped})
        return
    for item in done:
        removed = f"; {item['removed']} letter(s) removed" if item["removed"] else ""
        app.info(f"task {item['task_id']}: {item['outcome']}{removed}")
    for line in skipped:
        app.info(f"skipped {line}")
    if not done and not skipped:
        app.info("the dead-letter queue holds no task's letter: nothing to retry")


@dlq_app.command("rm")
def rm(
    ctx: typer.Context,
    letter_id: LetterId,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove a letter (a task id: all of its letters) without running its task again."""
    from orchestra_cli.engine import deadletters

    app: AppContext = ctx.obj
    found = deadletters.find(app.backends(), letter_id)
    count = len(found.letters)
    if count:
        what = f"task {found.task_id}'s" if found.task_id else "the"
        _confirm(yes, f"removing deletes {what} {count} dead letter(s)", "Remove them?")
    removed = deadletters.remove(app.backends(), found.letters)
    if app.json:
        app.print_json({"task_id": found.task_id, "removed": removed})
    else:
        app.info(f"removed {removed} dead letter{'' if removed == 1 else 's'}")


def _confirm(yes: bool, what: str, question: str) -> None:
    """Go on with --yes or a yes at the prompt; off a terminal, without --yes: exit 2."""
    from orchestra_cli.errors import UsageError

    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(what, "pass --yes to confirm")
    if not typer.confirm(question):
        raise typer.Abort()


@dlq_app.command("purge")
def purge(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete every dead letter (their tasks stay as they are in state)."""
    from orchestra_cli.models import Q_DEAD

    app: AppContext = ctx.obj
    _confirm(
        yes, "purging deletes every dead letter", "Delete every message in the dead-letter queue?"
    )
    count = app.backends().broker.purge(Q_DEAD)
    if app.json:
        app.print_json({"purged": count})
    else:
        app.info(f"purged {count} dead letter{'' if count == 1 else 's'}")


def register(app: typer.Typer) -> None:
    app.add_typer(dlq_app, name="dlq")
