"""`orchestra inbox`: everything waiting for a person."""

from __future__ import annotations

import typer

from orchestra_cli.cli.context import AppContext


def inbox(ctx: typer.Context) -> None:
    """What waits for a person: tool calls to approve and paused trees, oldest first."""
    from orchestra_cli.engine.steps import short
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
        waited = human_duration(at - w.since)
        if w.tool == "pause":
            print(f"{w.task.id[-8:]}  paused tree  for {waited}  — {w.task.title}")
            continue
        print(
            f"{w.task.id[-8:]}  step {w.step}  {w.tool} {short(w.input)}  "
            f"waiting {waited}  — {w.task.title}"
        )
    app.info(
        "answer with: orchestra task approve ID [--step N] [--always] | reject ID --reason … "
        "| resume ID"
    )


def register(app: typer.Typer) -> None:
    app.command("inbox")(inbox)
