"""Shell completion scripts for `orchestra`, generated from the CLI.

The scripts ask `orchestra` itself for candidates (``_ORCHESTRA_COMPLETE``),
so they always match the installed commands and options.
``python -m orchestra_cli.cli.completion completions`` rewrites the
committed copies; a test fails when they are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

COMPLETE_VAR = "_ORCHESTRA_COMPLETE"
FILES = {"bash": "orchestra.bash", "zsh": "_orchestra", "fish": "orchestra.fish"}


# Candidates come in the order orchestra gives them (task ids newest first), not sorted.
_KEEP_ORDER = {
    "bash": ("complete -o default -F", "complete -o default -o nosort -F"),
    "zsh": (
        "compdef _orchestra_completion orchestra",
        "zstyle ':completion:*:*:orchestra:*' sort false\ncompdef _orchestra_completion orchestra",
    ),
    "fish": (
        "complete --command orchestra --no-files",
        "complete --command orchestra --no-files --keep-order",
    ),
}


def script(shell: str, *, private: bool | None = None) -> str:
    """The completion script for ``shell`` (bash, zsh or fish); ``private``: see
    ``typer_private`` (None: typer's private function while it exists)."""
    from orchestra_cli.cli.typer_private import completion_script

    text = completion_script(shell, "orchestra", COMPLETE_VAR, private=private)
    old, new = _KEEP_ORDER[shell]
    return text.replace(old, new, 1)


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for shell, name in FILES.items():
        path = directory / name
        path.write_text(script(shell) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "completions")):
        print(f"wrote {path}")
