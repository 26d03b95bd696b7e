"""`orchestra snapshot create|list` and `orchestra rollback --to SNAPSHOT`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from orchestra_cli.cli import complete
from orchestra_cli.cli.context import AppContext

snapshot_app = typer.Typer(
    help="State snapshots (see also `orchestra rollback`).", no_args_is_help=True
)


@snapshot_app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(help="A label for the snapshot.")] = None,
) -> None:
    """Snapshot the state store (online; the system may keep running)."""
    from orchestra_cli import snapshots

    app: AppContext = ctx.obj
    snap = snapshots.create(app.backends(), name)
    if app.json:
        app.print_json(snap.as_dict())
    elif app.quiet:
        print(snap.file)
    else:
        print(snap.file)
        app.info(
            f"snapshot of {snap.state_url} ({snap.size:,} bytes) in "
            f"{snapshots.snapshot_dir(app.settings)}"
        )


@snapshot_app.command("list")
def list_(ctx: typer.Context) -> None:
    """Snapshots in the data dir, oldest first."""
    from orchestra_cli import snapshots

    app: AppContext = ctx.obj
    snaps = snapshots.list_snapshots(app.settings)
    if app.json:
        app.print_json([s.as_dict() for s in snaps])
        return
    if not snaps:
        app.info("no snapshots yet; create one with `orchestra snapshot create`")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("FILE", "NAME", "CREATED", "MODE", "SIZE"):
        table.add_column(col, no_wrap=True)
    for s in snaps:
        table.add_row(s.file, s.name, s.created_at, s.mode, f"{s.size:,}")
    app.console.print(table, markup=False)


def rollback(
    ctx: typer.Context,
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="Snapshot file, name, or 'latest'.",
            autocompletion=complete.snapshot_names,
        ),
    ],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Roll back even while agents are running.")
    ] = False,
) -> None:
    """Replace the whole state with a snapshot (a pre-rollback snapshot is taken first)."""
    from orchestra_cli import snapshots
    from orchestra_cli.errors import UsageError

    app: AppContext = ctx.obj
    snap = snapshots.find(app.settings, to)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(
                f"rolling back to {snap.file} replaces all state", "pass --yes to confirm"
            )
        if not typer.confirm(f"Replace all state with {snap.file} ({snap.created_at})?"):
            raise typer.Abort()
    result = snapshots.rollback(app.backends(), snap, force=force)
    if app.json:
        app.print_json(result)
    else:
        app.info(
            f"rolled back to {snap.file}; the state before is in "
            f"{result['safety_snapshot']}"
            + (f"; re-published {result['republished']} messages" if result["republished"] else "")
        )


def register(app: typer.Typer) -> None:
    app.add_typer(snapshot_app, name="snapshot")
    app.command("rollback")(rollback)
