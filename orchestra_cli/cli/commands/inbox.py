"""`orchestra inbox`: everything waiting for a person."""

from __future__ import annotations

import typer

from orchestra_cli.cli.context import AppContext


def inbox(ctx: typer.Context) -> None:
    """Tool calls waiting for approval (oldest first) and the commands that answer them."""
    from orchestra_cli.engine.loop import short
    from orchestra_cli.util import human_duration, now

    app: AppContext = ctx.obj
    items = app.service().inbox()
    if app.json:
        app.print_json([w.to_json() for w in items])
        return
    if not items:
        app.info("nothing waits for a person")
        return
    at = now()
    for w in items:
        print(
            f"{w.task.id[-8:]}  step {w.step}  {w.tool} {short(w.input)}  "
            f"waiting {human_duration(at - w.since)}  — {w.task.title}"
        )
    app.info("answer with: orchestra task approve ID [--step N] [--always] | reject ID --reason …")


def register(app: typer.Typer) -> None:
    app.command("inbox")(inbox)
