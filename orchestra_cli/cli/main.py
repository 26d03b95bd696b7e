"""Entry point: the one place that turns errors into output and exit codes.

``run_cli`` parses and runs a command and returns its exit code; it never
raises. ``main`` is the console script. (httpie's ``raw_main``/``program`` split.)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

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
    interrupted: list[bool] = []
    try:
        with _noting_interrupts(interrupted):
            result = command.main(args=args, prog_name="orchestra", standalone_mode=False)
    except SystemExit:  # typer's answer to a closed stdout (`orchestra logs | head`)
        if type(sys.stdout).__name__ == "PacifyFlushWrapper":
            return ExitStatus.OK
        raise
    except typer.TyperException as exc:  # click's UsageError and friends
        return _usage_error(exc)
    except typer.Abort:
        return _aborted(bool(interrupted))
    except KeyboardInterrupt:
        return _interrupted()
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
    code = int(result) if isinstance(result, int) else ExitStatus.OK
    if interrupted and code == ExitStatus.INTERRUPTED:  # typer made Ctrl-C an exit code
        return _interrupted()
    return code


def _usage_error(exc: Any) -> int:
    """click's UsageError and friends: one line naming the command's --help."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
        print(ctx.get_help(), file=sys.stderr)
        return ExitStatus.USAGE
    hint = f"see `{ctx.command_path} --help`" if ctx is not None else "see `orchestra --help`"
    _print_error(f"{exc.format_message()} — {hint}")
    return int(exc.exit_code)


def _aborted(interrupted: bool) -> int:
    """A confirmation answered no (or Ctrl-D): 1, "not confirmed"; Ctrl-C at it: 130."""
    if interrupted:
        return _interrupted()
    _print_error("not confirmed — nothing was changed (pass --yes to skip the question)")
    return ExitStatus.FAILURE


def _interrupted() -> int:
    print("\norchestra: interrupted", file=sys.stderr)
    return ExitStatus.INTERRUPTED


@contextlib.contextmanager
def _noting_interrupts(seen: list[bool]) -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt as ever, noted in ``seen`` first (typer turns
    it into exit code 130 without a word). Commands that handle SIGINT themselves
    (run, agent start) put their own handler in place meanwhile."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(signum: int, frame: object) -> None:
        seen.append(True)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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
