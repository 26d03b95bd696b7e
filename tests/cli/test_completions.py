"""Completion scripts are generated from the CLI, committed, and work."""

from __future__ import annotations

import os
import subprocess
import sys

from orchestra_cli.cli.completion import FILES, script
from tests.support import REPO


def test_committed_completion_scripts_are_up_to_date() -> None:
    for shell, name in FILES.items():
        committed = (REPO / "completions" / name).read_text()
        assert committed == script(shell) + "\n", (
            f"completions/{name} is stale: run `make completions`"
        )


def test_bash_completion_offers_commands_and_options() -> None:
    def complete(words: str, cword: int) -> list[str]:
        env = {
            **os.environ,
            "_ORCHESTRA_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(cword),
        }
        out = subprocess.run(
            [sys.executable, "-m", "orchestra_cli"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.split()

    assert "task" in complete("orchestra ta", 1)
    assert "--capability" in complete("orchestra task submit --cap", 3)
