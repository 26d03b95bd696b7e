"""`orchestra health`: one table (or JSON) and a cron-friendly exit code."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from orchestra_cli.cli.context import AppContext

CHECK_NAMES = (
    "state",
    "broker",
    "orchestrator",
    "agents",
    "queues",
    "secrets",
    "dependencies",
    "parity",
    "llm",  # only when named (health.ONLY_WHEN_NAMED)
)


def health(
    ctx: typer.Context,
    check: Annotated[
        list[str] | None,
        typer.Option(
            "--check",
            "-c",
            metavar="CHECK",
            help=f"Run only these ({', '.join(CHECK_NAMES)}); repeatable or comma-separated. "
            "llm (one unbilled request to the model API) runs only when named.",
        ),
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Warnings fail too (exit 1).")] = False,
) -> int:
    """Check services, agents, queues, secrets, dependencies, state/queue parity and,
    when named (--check llm), the model API.

    Exit 0 healthy, 1 a check failed (or warned, with --strict), 3 a service is unreachable.
    """
    from orchestra_cli.errors import UsageError
    from orchestra_cli.health import HealthContext, exit_status, run_checks

    app: AppContext = ctx.obj
    names = [n.strip() for item in (check or []) for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECK_NAMES]
    if unknown:
        raise UsageError(f"unknown check {unknown[0]!r}", f"choose from {', '.join(CHECK_NAMES)}")
    app.setup_logging("cli")
    hctx = HealthContext(app.settings, app.roles)
    try:
        checks = run_checks(hctx, names or None, raise_config=True)
    finally:
        hctx.close()
    code = exit_status(checks, strict)
    if app.json:
        app.print_json(
            {
                "healthy": code == 0,
                "exit_code": code,
                "checks": [
                    {"name": c.name, "level": c.level, "summary": c.summary, "details": c.details}
                    for c in checks
                ],
            }
        )
        return code
    rows = [(c.name, c.level, c.summary) for c in checks]
    if app.quiet or not sys.stdout.isatty():  # plain, never wrapped (pipes, files, -q)
        from orchestra_cli.cli.render import columns_text

        if app.quiet:  # only what needs attention, nothing when all is well
            problems = [r for r in rows if r[1] != "ok"]
            sys.stdout.write(columns_text(problems[0], problems[1:]) if problems else "")
        else:
            sys.stdout.write(columns_text(("CHECK", "STATUS", "DETAIL"), rows))
        return code
    from rich.table import Table

    style = {"ok": "green", "warn": "yellow", "fail": "bold red"}
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("CHECK", "STATUS", "DETAIL"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(c.name, f"[{style[c.level]}]{c.level}[/]", _escape(c.summary))
    app.console.print(table)
    return code


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def register(app: typer.Typer) -> None:
    app.command("health")(health)
