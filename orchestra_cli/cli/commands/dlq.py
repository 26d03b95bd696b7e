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
    missing = sum(1 for x in letters if x["task_status"] == "missing")
    if missing:
        app.info(
            f"{missing} of them belong to tasks the state store no longer has; "
            "`orchestra dlq resubmit` submits them again"
        )


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
    from orchestra_cli.engine.deadletters import lost

    app: AppContext = ctx.obj
    specs, bare = lost(_letters(app, 10_000))
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
