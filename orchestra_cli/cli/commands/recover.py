"""`orchestra recover`: find stuck or orphaned work and put it back on its way."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestra_cli.cli.context import AppContext


def recover(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only show what would be done.")
    ] = False,
    stale: Annotated[
        float | None,
        typer.Option(
            min=0, help="Seconds without progress before pending/waiting work counts as stuck."
        ),
    ] = None,
) -> None:
    """Requeue tasks orphaned by dead agents, resubmit lost intake, re-aggregate parents.

    The orchestrator runs the same sweep every tasks.recovery_interval_seconds.
    """
    from orchestra_cli.engine.deadletters import MISSING, SCAN, letters
    from orchestra_cli.engine.recovery import Recovery

    app: AppContext = ctx.obj
    findings = Recovery(app.backends(), stale_seconds=stale).sweep(dry_run=dry_run)
    # tasks the store lost (a Redis restarted without persistence) leave only dead letters
    lost = sorted(
        {x["task_id"] for x in letters(app.backends(), SCAN) if x["task_status"] == MISSING}
    )
    if app.json:
        findings_json = [f.as_dict() for f in findings]
        app.print_json({"dry_run": dry_run, "findings": findings_json, "lost_tasks": lost})
        return
    if lost:
        app.info(
            f"{len(lost)} dead-lettered task(s) no longer exist in the state store (lost by a "
            "restart without persistence?) — `orchestra dlq resubmit` submits them again"
        )
    if not findings:
        app.info("nothing stuck" + (" in the state store" if lost else ""))
        return
    verb = "would" if dry_run else "did"
    for f in findings:
        state = f.action if (f.done or dry_run) else f"{f.action} skipped (it moved on)"
        print(f"{f.task_id}  {f.status:<8} {verb} {state}: {f.reason}")


def register(app: typer.Typer) -> None:
    app.command("recover")(recover)
