"""The typer application: global options and the command groups."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from orchestra_cli import __version__

EPILOG = (
    "Exit codes: 0 success; 1 the thing asked about failed (task failed, check failed); "
    "2 usage error (bad arguments, input or config); 3 a required service is unreachable; "
    "130 interrupted."
)


def _version(value: bool) -> None:
    if value:
        print(f"orchestra {__version__}")
        raise typer.Exit()


def _callback(
    ctx: typer.Context,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            help="Config file (default: ./orchestra.yaml).",
            envvar="ORCHESTRA_CONFIG",
            show_envvar=False,
        ),
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only essentials.")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log to stderr; show tracebacks.")
    ] = False,
    no_color: Annotated[bool, typer.Option("--no-color", help="Disable colour.")] = False,
    traceback: Annotated[
        bool, typer.Option("--traceback", help="Show tracebacks on errors.", hidden=True)
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """orchestra: run and operate a multi-agent task orchestration system."""
    from orchestra_cli.cli.context import AppContext

    app_ctx = AppContext(
        config=config, json=json, quiet=quiet, verbose=verbose or traceback, no_color=no_color
    )
    ctx.obj = app_ctx
    ctx.call_on_close(app_ctx.close)


def build_app() -> typer.Typer:
    from orchestra_cli.cli.commands import (
        agent,
        api,
        config,
        health,
        recover,
        report,
        run,
        services,
        snapshot,
        task,
    )

    app = typer.Typer(
        name="orchestra",
        help=_callback.__doc__,
        epilog=EPILOG,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_callback)
    config.register(app)
    task.register(app)
    agent.register(app)
    run.register(app)
    health.register(app)
    recover.register(app)
    api.register(app)
    snapshot.register(app)
    report.register(app)
    services.register(app)
    return app


def build_command() -> Any:
    """The click command behind the app (what `run_cli` executes)."""
    import os

    if os.environ.get("_ORCHESTRA_COMPLETE"):  # a shell asking for completions
        from typer._completion_classes import completion_init

        completion_init()
    return typer.main.get_command(build_app())
