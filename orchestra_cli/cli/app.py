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


def build_app(only: str | None = None, sub: str | None = None) -> typer.Typer:
    """The app with every command, or with only the module that registers ``only``
    (and of group ``only``, only its command ``sub`` when it has one by that name).

    Building typer's command tree costs milliseconds per command (typer reads
    every parameter's annotations), so a command line that names a known command
    builds that command alone: `task submit` built the task group's 14 commands,
    ~20 of its ~230 ms (cProfile).
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
    if only is not None and sub is not None:
        app.registered_groups = [
            _narrowed(g, sub) if g.name == only else g for g in app.registered_groups
        ]
    return app


def _narrowed(group: Any, sub: str) -> Any:
    """A copy of the group ``group`` (a TyperInfo) holding only its command ``sub``;
    the group itself unchanged, so the next command line sees all of it. A name
    that is not one of its commands (a typo, a nested group) keeps them all."""
    import copy

    inner = group.typer_instance
    named = [c for c in inner.registered_commands if _command_name(c) == sub]
    if not named:
        return group
    narrowed = copy.copy(inner)
    narrowed.registered_commands = named
    narrowed.registered_groups = []
    info = copy.copy(group)
    info.typer_instance = narrowed
    return info


def _command_name(info: Any) -> str:
    if info.name:
        return str(info.name)
    return str(info.callback.__name__).lower().replace("_", "-")  # as typer names it


def invoked_command(args: list[str]) -> str | None:
    """The top-level command a (hoisted) command line names, if any."""
    return invoked_path(args)[0]


def invoked_path(args: list[str]) -> tuple[str | None, str | None]:
    """The top-level command a (hoisted) command line names and the word after it
    (its subcommand, if it is a group and no option comes first), if any."""
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
        elif arg == "--config":
            skip = True
        elif arg == "--" or not arg.startswith("-"):
            if arg == "--":
                return None, None
            after = args[i + 1] if i + 1 < len(args) else None
            return arg, None if after is None or after.startswith("-") else after
        elif arg in ("-h", "--help", "--version"):
            return None, None
    return None, None


def build_command(args: list[str] | None = None) -> Any:
    """The click command behind the app (what `run_cli` executes for ``args``)."""
    import os

    only, sub = (None, None) if args is None else invoked_path(args)
    if os.environ.get("_ORCHESTRA_COMPLETE"):  # a shell asking for completions
        from orchestra_cli.cli.typer_private import register_completion_classes

        register_completion_classes()
        only = sub = None
    return typer.main.get_command(build_app(only, sub))
