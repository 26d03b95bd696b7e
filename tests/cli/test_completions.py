"""Completion scripts are generated from the CLI, committed, and work."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from orchestra_cli.cli import typer_private
from orchestra_cli.cli.completion import FILES, script
from tests.conftest import CliRunner
from tests.support import REPO

# The CLI as a shell runs it for candidates, and again as if typer had lost the private
# functions cli/typer_private.py uses (its fallback: typer's documented behaviour only).
AS_INSTALLED = [sys.executable, "-m", "orchestra_cli"]
WITHOUT_TYPERS_PRIVATES = [
    sys.executable,
    "-c",
    "import orchestra_cli.cli.typer_private as t; t._private = lambda module, name: None; "
    "from orchestra_cli.cli.main import main; main()",
]


def test_typers_private_completion_functions_are_still_there() -> None:
    """Canary: cli/typer_private.py uses these while they exist; without them completion
    takes the documented way (slower), and this names what went."""
    problems = typer_private.missing()
    assert not problems, (
        f"typer {typer_private.version()} changed what cli/typer_private.py uses: "
        + "; ".join(problems)
        + " — completion still works through typer's documented behaviour; port "
        "typer_private.py or keep typer at the last version it knows"
    )


@pytest.mark.parametrize("private", [None, False], ids=["private", "documented-only"])
def test_committed_completion_scripts_are_up_to_date(private: bool | None) -> None:
    for shell, name in FILES.items():
        committed = (REPO / "completions" / name).read_text()
        assert committed == script(shell, private=private) + "\n", (
            f"completions/{name} is stale: run `make completions`"
        )


@pytest.mark.parametrize(
    "command", [AS_INSTALLED, WITHOUT_TYPERS_PRIVATES], ids=["private", "documented-only"]
)
def test_bash_completion_offers_commands_and_options(command: list[str]) -> None:
    def complete(words: str, cword: int) -> list[str]:
        env = {
            **os.environ,
            "_ORCHESTRA_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(cword),
        }
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        return out.stdout.split()

    assert "task" in complete("orchestra ta", 1)
    assert "--capability" in complete("orchestra task submit --cap", 3)
    assert complete("orchestra task list --status fai", 4) == ["failed"]
    assert "--install-completion" not in complete("orchestra --", 1)  # not orchestra's


def _in_bash(line: str) -> list[str]:
    """What a real bash offers for ``line`` (the cursor at its end) with the committed
    completions/orchestra.bash sourced, `orchestra` on PATH."""
    words = line.split(" ")
    script = (
        f"source {REPO / 'completions' / 'orchestra.bash'}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_orchestra_completion orchestra\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    out = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [ln for ln in out.stdout.splitlines() if ln]


def test_bash_completes_task_ids_newest_first_and_agent_names(cli: CliRunner) -> None:
    from orchestra_cli.backends import open_backends
    from orchestra_cli.models import AgentRecord
    from orchestra_cli.settings import load_settings

    ids = [cli("task", "submit", "-q", f"task {i}").out.strip() for i in range(5)]
    backends = open_backends(load_settings(None).settings)
    try:
        backends.state.save_agent(AgentRecord(name="coder-1", role="coder", capabilities=["code"]))
    finally:
        backends.close()
    offered = _in_bash("orchestra task get ")
    assert offered[:5] == [i[-8:] for i in reversed(ids)]  # short ids, the newest first
    assert _in_bash(f"orchestra task watch {ids[0][-8:-3]}") == [ids[0][-8:]]
    assert _in_bash("orchestra agent status cod") == ["coder-1"]
    assert _in_bash("orchestra logs --task ")[:3] == offered[:3]
    assert _in_bash("orchestra agent start rev") == ["reviewer"]
    assert "failed" in _in_bash("orchestra task list --status ")
    assert _in_bash("orchestra task list -s queued,ru") == ["queued,running"]
    assert "code" in _in_bash("orchestra task submit -c ")
    assert _in_bash("orchestra logs rab") == ["rabbitmq"]


def test_value_completion_offers_nothing_when_the_config_is_broken(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    Path("orchestra.yaml").write_text("state_url: [unclosed\n")
    assert _in_bash("orchestra task get ") == []
