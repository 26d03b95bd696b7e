"""The one module that uses typer's private completion modules (``typer._completion_*``).

Shell completion needs two things typer has no documented function for:

- the scripts in ``completions/`` (``_completion_shared.get_completion_script``);
- typer's completion classes registered with its click, so that a shell's
  request (``_ORCHESTRA_COMPLETE=complete_bash``) is answered in the format those
  scripts read (``_completion_classes.completion_init``). typer registers them
  itself only while building an app made with ``add_completion=True``, which
  orchestra's is not (it would add ``--install-completion`` and
  ``--show-completion`` to every help screen).

Both have a fallback through typer's documented behaviour only: building any
app made with ``add_completion=True`` registers the same classes, and the
``source_<shell>`` instruction (``_ORCHESTRA_COMPLETE=source_bash orchestra``,
click's documented way to print a script) prints the same script. The private
names are used while they are there (a canary test fails, naming the missing
one and typer's version, when an upgrade removes one); without them the
fallback runs, a little slower, with the same result.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
from collections.abc import Callable
from typing import Any

# (module, name, what orchestra uses it for)
NEEDS = (
    ("typer._completion_shared", "get_completion_script", "the scripts in completions/"),
    ("typer._completion_classes", "completion_init", "answering a shell's completion request"),
)


def _private(module: str, name: str) -> Callable[..., Any] | None:
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    return found if callable(found) else None


def missing() -> list[str]:
    """The private names this typer lacks, each with what it is for; [] when all are there."""
    return [f"{m}.{n} is gone ({why})" for m, n, why in NEEDS if _private(m, n) is None]


def version() -> str:
    import typer

    return str(getattr(typer, "__version__", "?"))


def register_completion_classes(*, private: bool | None = None) -> None:
    """Make typer answer completion requests in its scripts' format (``private``: None
    uses typer's private function while it exists, False the documented way only)."""
    init = _private(*NEEDS[1][:2]) if private is not False else None
    if init is not None:
        init()
        return
    import typer

    # typer registers its completion classes while it builds an add_completion app
    app = typer.Typer(add_completion=True)
    app.command()(_placeholder)
    typer.main.get_command(app)


def completion_script(
    shell: str, prog_name: str, complete_var: str, *, private: bool | None = None
) -> str:
    """The completion script for ``shell``, as typer writes it."""
    generate = _private(*NEEDS[0][:2]) if private is not False else None
    if generate is not None:
        return str(generate(prog_name=prog_name, complete_var=complete_var, shell=shell))
    return _sourced(shell, prog_name, complete_var)


def _sourced(shell: str, prog_name: str, complete_var: str) -> str:
    """The script through the ``source_<shell>`` instruction a command answers."""
    import typer

    register_completion_classes(private=False)
    app = typer.Typer(add_completion=False)
    app.command()(_placeholder)
    command = typer.main.get_command(app)
    out = io.StringIO()
    saved = os.environ.get(complete_var)
    os.environ[complete_var] = f"source_{shell}"
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            command.main(
                args=[], prog_name=prog_name, complete_var=complete_var, standalone_mode=False
            )
    finally:
        if saved is None:
            del os.environ[complete_var]
        else:
            os.environ[complete_var] = saved
    text = out.getvalue().strip()
    if not text:
        raise ValueError(f"typer {version()} wrote no completion script for {shell!r}")
    return text


def _placeholder() -> None:
    """A command for the throwaway apps above (typer builds none without one)."""
