"""`orchestra dlq list|purge`: the dead-letter queue (poison messages, exhausted retries)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from orchestra_cli.cli.context import AppContext

dlq_app = typer.Typer(
    help="Inspect and clear the dead-letter queue (`health` counts it).", no_args_is_help=True
)

COLUMNS = ("AGE", "QUEUE", "TASK", "NOW", "TRIES", "REASON")


def _letters(app: AppContext, limit: int) -> list[dict[str, Any]]:
    """The broker's letters, each with its task id and what that task's status is now."""
    backends = app.backends()
    letters = backends.broker.dead_letters(limit)  # each with its task id, if it names one
    tasks = backends.state.get_tasks(x["task_id"] for x in letters if x["task_id"])
    for x in letters:
        task = tasks.get(x["task_id"]) if x["task_id"] else None
        x["task_status"] = task.status.value if task else ("missing" if x["task_id"] else None)
    return letters


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
        app.print_json([{**x, "enqueued_at": iso(x["enqueued_at"])} for x in letters])
        return
    if app.quiet:  # task ids only, for scripts (`… | xargs -n1 orchestra task retry`)
        sys.stdout.write("".join(f"{x['task_id']}\n" for x in letters if x["task_id"]))
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
            "?" if x["deliveries"] is None else str(x["deliveries"]),
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


@dlq_app.command("purge")
def purge(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete every dead letter (their tasks stay as they are in state)."""
    from orchestra_cli.errors import UsageError
    from orchestra_cli.models import Q_DEAD

    app: AppContext = ctx.obj
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("purging deletes every dead letter", "pass --yes to confirm")
        if not typer.confirm("Delete every message in the dead-letter queue?"):
            raise typer.Abort()
    count = app.backends().broker.purge(Q_DEAD)
    if app.json:
        app.print_json({"purged": count})
    else:
        app.info(f"purged {count} dead letter{'' if count == 1 else 's'}")


def register(app: typer.Typer) -> None:
    app.add_typer(dlq_app, name="dlq")
