"""The typer application: global options and the command groups."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from orchestra_cli import __version__

EPILOG = (
    "Exit codes: 0 success; 1 the thing asked about failed (task failed, check failed) "
    "or conflicts with the task's state (retrying a task that succeeded); "
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
            metavar="PATH",
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


# Top-level command name -> the module that registers it (``register(app)``).
COMMAND_MODULES = {
    "init": "config",
    "config": "config",
    "task": "task",
    "agent": "agent",
    "run": "run",
    "demo": "run",
    "health": "health",
    "recover": "recover",
    "dlq": "dlq",
    "api": "api",
    "snapshot": "snapshot",
    "rollback": "snapshot",
    "report": "report",
    "up": "services",
    "down": "services",
    "ps": "services",
    "logs": "services",
    "inbox": "inbox",
}
_MODULES = tuple(dict.fromkeys(COMMAND_MODULES.values()))  # each once, in that order


def build_app(only: str | None = None) -> typer.Typer:
    """The app with every command, or with only the module that registers ``only``.

    Building typer's command tree costs milliseconds per command, so a command
    line that names a known command builds that command's module alone.
    """
    import importlib

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
    names = (COMMAND_MODULES[only],) if only in COMMAND_MODULES else _MODULES
    for name in names:
        importlib.import_module(f"orchestra_cli.cli.commands.{name}").register(app)
    return app


def invoked_command(args: list[str]) -> str | None:
    """The top-level command a (hoisted) command line names, if any."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--config":
            skip = True
        elif arg == "--" or not arg.startswith("-"):
            return None if arg == "--" else arg
        elif arg in ("-h", "--help", "--version"):
            return None
    return None


def build_command(args: list[str] | None = None) -> Any:
    """The click command behind the app (what `run_cli` executes for ``args``)."""
    import os

    only = None if args is None else invoked_command(args)
    if os.environ.get("_ORCHESTRA_COMPLETE"):  # a shell asking for completions
        from orchestra_cli.cli.typer_private import register_completion_classes

        register_completion_classes()
        only = None
    return typer.main.get_command(build_app(only))
