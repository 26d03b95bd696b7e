"""The CLI in-process: output, JSON, exit codes and one-line errors."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CliRunner


def test_version_and_help_exit_zero(cli: CliRunner) -> None:
    assert "orchestra" in cli("--version").out
    out = cli("--help").out
    assert "Exit codes" in out and "task" in out and "agent" in out


def test_help_imports_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "from orchestra_cli.cli.main import run_cli\n"
        "assert run_cli(['--help']) == 0\n"
        "heavy = [m for m in ('anthropic', 'hvac', 'pika', 'redis', 'fastapi', 'pydantic',"
        " 'prometheus_client', 'opentelemetry') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY="


@pytest.mark.parametrize(
    "args",
    [["task", "submit", "-q", "write a function"], ["task", "list"], ["agent", "list"]],
    ids=["submit", "list", "agents"],
)
def test_one_shot_commands_import_no_heavy_library(home: Path, args: list[str]) -> None:
    """pydantic alone is ~75 ms of a command's start-up (settings, tasks and roles are
    msgspec records); the clients come with the commands that talk to them."""
    code = (
        "import sys\n"
        "from orchestra_cli.cli.main import run_cli\n"
        f"assert run_cli({args!r}) == 0\n"
        "heavy = ('anthropic', 'hvac', 'pika', 'redis', 'fastapi', 'pydantic',"
        " 'prometheus_client', 'opentelemetry')\n"
        "print('HEAVY=' + ','.join(m for m in heavy if m in sys.modules))\n"
    )
    env = {**os.environ, "ORCHESTRA_HOME": str(home)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip().splitlines()[-1] == "HEAVY="


def test_a_named_command_builds_only_its_module_and_every_name_is_mapped() -> None:
    import typer

    from orchestra_cli.cli.app import COMMAND_MODULES, build_app, invoked_command

    full = typer.main.get_command(build_app())
    assert set(full.commands) == set(COMMAND_MODULES)  # type: ignore[attr-defined]
    only = typer.main.get_command(build_app("up"))
    assert set(only.commands) == {"up", "down", "ps", "logs"}  # type: ignore[attr-defined]
    assert invoked_command(["--json", "--config", "task", "agent", "list"]) == "agent"
    assert invoked_command(["--help", "task"]) is None
    assert invoked_command(["--", "task"]) is None


def test_a_named_subcommand_builds_alone_and_leaves_its_group_whole() -> None:
    import typer

    from orchestra_cli.cli.app import build_app, invoked_path

    assert invoked_path(["-q", "task", "submit", "x"]) == ("task", "submit")
    assert invoked_path(["task", "--help"]) == ("task", None)
    narrowed = typer.main.get_command(build_app("task", "submit"))
    assert set(narrowed.commands["task"].commands) == {"submit"}  # type: ignore[attr-defined]
    whole = typer.main.get_command(build_app("task"))  # the shared group is not changed
    assert {"submit", "list", "get", "approve"} <= set(whole.commands["task"].commands)  # type: ignore[attr-defined]
    typo = typer.main.get_command(build_app("task", "sbumit"))  # click's "No such command"
    assert set(typo.commands["task"].commands) == set(whole.commands["task"].commands)  # type: ignore[attr-defined]


def test_submit_reads_no_role_file_unless_it_must(home: Path) -> None:
    """Unrouted work waits for the orchestrator, so `task submit` needs no role (the
    warning names none): no PyYAML, no OpenSSL (hashlib), no logging.handlers — ~40
    ms of its start-up together (-X importtime). Routed work with no live agent reads
    the roles, to name the one to start, and logs that it waits."""
    code = (
        "import sys\n"
        "from orchestra_cli.cli.main import run_cli\n"
        "assert run_cli(sys.argv[1:]) == 0\n"
        "print('LOADED=' + ','.join(m for m in ('yaml', '_hashlib', 'logging.handlers')"
        " if m in sys.modules))\n"
    )
    env = {**os.environ, "ORCHESTRA_HOME": str(home)}

    def loaded(*args: str) -> tuple[str, str]:
        out = subprocess.run(
            [sys.executable, "-c", code, "task", "submit", "-q", *args],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        return out.stdout.strip().splitlines()[-1], out.stderr

    assert loaded("write a function") == (
        "LOADED=",
        "orchestra: warning: no orchestrator running to plan it — start one: orchestra run\n",
    )
    assert not (home / "logs" / "cli.log").exists()  # nothing logged: no empty file
    routed, warning = loaded("-c", "code", "write a function")  # logs "no live agent"
    assert routed == "LOADED=yaml,logging.handlers" and "agent start coder" in warning
    assert "no live agent for capability code" in (home / "logs" / "cli.log").read_text()


def test_subcommand_help_and_typos_still_see_the_whole_tree(cli: CliRunner) -> None:
    assert "submit" in cli("task", "--help").out
    assert "--limit" in cli("task", "list", "--help").out
    typo = cli("tsk", "list", expect=2)
    assert "No such command 'tsk'" in typo.err


def test_unknown_command_is_a_usage_error_on_one_line(cli: CliRunner) -> None:
    result = cli("frobnicate", expect=2)
    assert result.err.startswith("orchestra: error: ") and result.err.count("\n") == 1


def test_unusable_paths_are_one_line_errors_naming_the_path(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    Path("a-file").write_text("")
    err = cli("report", "daily", "--output", "no/such/dir/r.html", expect=2).err
    assert err.startswith("orchestra: error: No such file or directory: no/such/dir/r.html — ")
    assert err.count("\n") == 1
    monkeypatch.setenv("ORCHESTRA_HOME", str(Path("a-file").resolve()))
    err = cli("task", "list", expect=2).err
    assert "Not a directory: " in err and "a-file" in err and err.count("\n") == 1


def test_configured_directories_that_do_not_exist_are_config_errors(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRA_AGENTS__DEFINITIONS_DIR", "no-such-dir")
    err = cli("config", "validate", expect=2).err
    assert "definitions_dir no-such-dir is not a directory" in err
    monkeypatch.delenv("ORCHESTRA_AGENTS__DEFINITIONS_DIR")
    monkeypatch.setenv("ORCHESTRA_PROMPTS_DIR", "no-such-dir")
    assert "prompts_dir no-such-dir is not a directory" in cli("config", "validate", expect=2).err


def test_init_writes_config_and_private_dotenv_and_refuses_to_overwrite(cli: CliRunner) -> None:
    cli("init")
    assert Path("orchestra.yaml").is_file()
    assert stat.S_IMODE(os.stat(".env").st_mode) == 0o600
    again = cli("init", expect=2)
    assert "already exist" in again.err and "--force" in again.err
    cli("init", "--force")
    cli("config", "validate")


def test_config_show_json_lists_sources_and_masks_secrets(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    mp = monkeypatch
    mp.setenv("ANTHROPIC_API_KEY", "sk-ant-test-1234567890abcdef")
    mp.setenv("ORCHESTRA_BROKER_URL", "amqp://guest:hunter2@127.0.0.1:5672/")
    result = cli("config", "show", "--sources", "--json")
    assert "hunter2" not in result.out and "1234567890abcdef" not in result.out
    data = json.loads(result.out)
    assert data["settings"]["home"]["source"] == "ORCHESTRA_HOME"
    assert data["settings"]["broker_url"]["value"] == "amqp://guest:***@127.0.0.1:5672/"
    assert data["secrets"]["ANTHROPIC_API_KEY"] == {"set": True, "source": "env", "value": "***"}
    table = cli("config", "show", "--sources").out
    assert "ORCHESTRA_HOME" in table and "hunter2" not in table


def test_invalid_yaml_config_is_a_one_line_error(cli: CliRunner) -> None:
    Path("orchestra.yaml").write_text("llm: [oops\n")
    result = cli("config", "validate", expect=2)
    assert result.err.startswith("orchestra: error: ") and "orchestra.yaml:" in result.err
    assert result.err.count("\n") == 1 and "Traceback" not in result.err


def test_unknown_config_key_is_a_one_line_error(cli: CliRunner) -> None:
    Path("orchestra.yaml").write_text("colour: blue\n")
    result = cli("task", "list", expect=2)
    assert "unknown key 'colour'" in result.err and result.err.count("\n") == 1


def test_verbose_shows_the_traceback(cli: CliRunner) -> None:
    Path("orchestra.yaml").write_text("colour: blue\n")
    result = cli("-v", "task", "list", expect=2)
    assert "Traceback" in result.err


def test_production_environment_warns_about_laptop_settings(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert json.loads(cli("--json", "config", "validate").out)["warnings"] == []
    monkeypatch.setenv("ORCHESTRA_ENV", "production")
    data = json.loads(cli("--json", "config", "validate").out)
    assert data["environment"] == "production" and data["mode"] == "embedded"
    assert any("embedded SQLite" in w for w in data["warnings"])
    assert any("offline model provider" in w for w in data["warnings"])
    result = cli("config", "validate", "--strict", expect=1)
    assert "warning: production on the embedded SQLite file" in result.err
    assert result.err.splitlines()[-1] == (
        "orchestra: error: 2 warnings, and --strict fails on them"
    )


def test_up_refuses_an_env_file_it_could_not_write_before_starting_anything(
    cli: CliRunner, home: Path, tmp_path: Path
) -> None:
    result = cli("up", "--env-file", str(tmp_path / "missing" / ".env.services"), expect=2)
    assert "--env-file" in result.err and "writable folder" in result.err
    assert not (home / "services").exists()  # nothing was started
    assert "is a directory" in cli("up", "--env-file", str(tmp_path), expect=2).err


def test_a_reader_that_closes_the_pipe_early_is_not_an_error(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from orchestra_cli.cli.main import run_cli

    assert run_cli(["task", "submit", "-q", "one"]) == 0

    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert run_cli(["task", "list"]) == 0  # as `orchestra task list | head -1`


def test_ctrl_c_exits_130_and_says_so(home: Path) -> None:
    import signal
    import time

    env = {**os.environ, "ORCHESTRA_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestra_cli", "task", "submit", "x", "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.5)  # past start-up: waiting for an agent that never comes
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err.rstrip().endswith("orchestra: interrupted")


def test_a_value_outside_a_choice_is_named_with_the_choices(cli: CliRunner) -> None:
    err = cli("up", "--runtime", "podman", expect=2).err
    assert "Invalid value for '--runtime': 'podman' is not one of" in err
    assert "Value error" not in err
