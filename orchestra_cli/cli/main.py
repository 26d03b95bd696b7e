"""Entry point: the one place that turns errors into output and exit codes.

``run_cli`` parses and runs a command and returns its exit code; it never
raises. ``main`` is the console script. (httpie's ``raw_main``/``program`` split.)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from orchestra_cli.errors import ExitStatus, OrchestraError

# Global flags accepted anywhere on the line (`orchestra task list --json`).
_HOISTED = frozenset({"--json", "--quiet", "-q", "--verbose", "-v", "--no-color", "--traceback"})


def _hoist_global_flags(args: list[str]) -> list[str]:
    """Move global flags given after the subcommand to the front."""
    try:
        cut = args.index("--")
    except ValueError:
        cut = len(args)
    head = [a for a in args[:cut] if a in _HOISTED]
    rest = [a for a in args[:cut] if a not in _HOISTED]
    return head + rest + args[cut:]


def error_line(message: str) -> str:
    from orchestra_cli.logs import redact

    return f"orchestra: error: {redact(message)}"


def _print_error(message: str) -> None:
    print(error_line(message), file=sys.stderr, flush=True)


def run_cli(argv: Sequence[str] | None = None) -> int:
    """Run one command line; return the exit code."""
    import typer

    args = _hoist_global_flags(list(sys.argv[1:] if argv is None else argv))
    verbose = "-v" in args or "--verbose" in args or "--traceback" in args
    from orchestra_cli.cli.app import build_command

    command = build_command(args)
    try:
        result = command.main(args=args, prog_name="orchestra", standalone_mode=False)
    except typer.TyperException as exc:  # click's UsageError and friends
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            print(ctx.get_help(), file=sys.stderr)
            return ExitStatus.USAGE
        hint = f"see `{ctx.command_path} --help`" if ctx is not None else "see `orchestra --help`"
        _print_error(f"{exc.format_message()} — {hint}")
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("\norchestra: interrupted", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except OrchestraError as exc:
        return _report(str(exc), exc.exit_status, verbose)
    except BrokenPipeError:
        return ExitStatus.OK
    except OSError as exc:
        if exc.filename is None:  # not about a file (a socket, say): an unexpected failure
            return _report(_internal(exc), ExitStatus.FAILURE, verbose)
        message = (
            f"{exc.strerror or exc}: {exc.filename} — check the path and its permissions "
            "(ORCHESTRA_HOME for state and logs, --output for reports)"
        )
        return _report(message, ExitStatus.USAGE, verbose)
    except Exception as exc:
        return _report(_internal(exc), ExitStatus.FAILURE, verbose)
    return int(result) if isinstance(result, int) else ExitStatus.OK


def _internal(exc: Exception) -> str:
    return (
        f"internal error: {type(exc).__name__}: {exc} — rerun with -v for the traceback and "
        "report it"
    )


def _report(message: str, code: int, verbose: bool) -> int:
    """The one error line (after the traceback, with -v); the exit code."""
    if verbose:
        import traceback

        traceback.print_exc()
    _print_error(message)
    return code


def main() -> None:
    """The ``orchestra`` console script."""
    code = run_cli()
    sys.stdout.flush()
    sys.exit(code)
