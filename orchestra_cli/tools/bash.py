"""``Bash``: a shell command in the workspace, in a bubblewrap sandbox.

The sandbox (Debian's ``bubblewrap``): the host's root read-only, the
workspace writable at its own path (the working directory), a private /tmp
and /run, new namespaces for everything (no network unless the role allows
it), no capabilities (even when the agent runs as root), a new session, and
death with its parent. The command's environment has
no secrets: ``ANTHROPIC_*``, ``VAULT_*``, ``ORCHESTRA_*``, names that look like
credentials and every value the secrets layer knows are removed. A time limit
and cancel kill the whole process group; so does the command's end, so a
background child never outlives its call.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from orchestra_cli.errors import TaskCancelled
from orchestra_cli.logs import known_secrets
from orchestra_cli.tools.base import (
    Args,
    BuiltinTool,
    Limits,
    Sandbox,
    ToolContext,
    ToolOutput,
    error,
)

SECRET_ENV_PREFIXES = ("ANTHROPIC_", "VAULT_", "ORCHESTRA_", "BAO_")
SECRET_ENV_NAMES = re.compile(r"(?i)(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|CREDENTIAL|PRIVATE_KEY)")
POLL_SECONDS = 0.05
# after the shell exits, how long output from what it left behind is still read
EXIT_GRACE_SECONDS = 0.2


def bwrap() -> str | None:
    """The bubblewrap executable, if installed."""
    return shutil.which("bwrap")


def sandbox_argv(
    executable: str, workspace: Path, *, network: bool, hidden: tuple[Path, ...] = ()
) -> list[str]:
    """bwrap's arguments up to the ``--`` before the command; ``hidden`` directories are
    empty in the sandbox and hidden files read as empty (the workspace stays visible)."""
    ws = str(workspace.resolve())
    argv = [executable, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    argv += ["--tmpfs", "/tmp", "--tmpfs", "/run"]  # /run: no docker or dbus socket
    for path in hidden:
        real = path.resolve()
        if real.is_dir():
            argv += ["--tmpfs", str(real)]
        elif real.exists():
            argv += ["--ro-bind", "/dev/null", str(real)]
    argv += ["--bind", ws, ws, "--chdir", ws, "--unshare-all", "--die-with-parent", "--new-session"]
    # run by root, bwrap keeps every capability: the command could remount / writable
    argv += ["--cap-drop", "ALL"]
    if network:
        argv.append("--share-net")
        resolv = Path("/etc/resolv.conf").resolve()
        if resolv.is_relative_to("/run") and resolv.exists():  # systemd-resolved's stub
            argv += ["--ro-bind", str(resolv), str(resolv)]
    return [*argv, "--"]


def clean_env(
    environ: Mapping[str, str], secrets: frozenset[str], *, home: str | None = None
) -> dict[str, str]:
    """``environ`` without orchestra's settings, credentials or any secret value."""
    values = {value for value in secrets | known_secrets() if value}
    env = {
        key: value
        for key, value in environ.items()
        if not key.startswith(SECRET_ENV_PREFIXES)
        and not SECRET_ENV_NAMES.search(key)
        and not any(secret in value for secret in values)
    }
    if home is not None:
        env["HOME"] = home
    return env


@dataclass
class Completed:
    exit_code: int | None  # None: killed at the time limit
    output: bytes
    dropped: int  # bytes cut from the middle of the output


class _Capture:
    """A command's output: the first and last ``most // 2`` bytes, and how much was cut."""

    def __init__(self, most: int) -> None:
        self.half = max(1, most // 2)
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        self.tail += chunk
        extra = len(self.tail) - self.half
        if extra > 0:
            del self.tail[:extra]
            self.dropped += extra

    def output(self) -> bytes:
        if not self.dropped:
            return bytes(self.head + self.tail)
        marker = f"\n[truncated {self.dropped} bytes of output]\n".encode()
        return bytes(self.head) + marker + bytes(self.tail)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_command(
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    cancel: threading.Event,
    max_bytes: int,
) -> Completed:
    """Run ``argv`` in its own session; kill its process group at the time limit, on
    cancel (then raise ``TaskCancelled``) and when it ends."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    capture = _Capture(max_bytes)
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            timed_out = _pump(proc, selector, capture, deadline, cancel)
    finally:
        _kill_group(proc)
        proc.wait()
        proc.stdout.close()
    return Completed(None if timed_out else proc.returncode, capture.output(), capture.dropped)


def _pump(
    proc: subprocess.Popen[bytes],
    selector: selectors.BaseSelector,
    capture: _Capture,
    deadline: float,
    cancel: threading.Event,
) -> bool:
    """Read output until the shell has exited and the output ended (or a moment after
    the exit, when a background child holds the pipe); True on the time limit."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    ended = False  # the output's EOF: the shell may still be exiting, or running on
    exited_at: float | None = None
    while True:
        if cancel.is_set():
            _kill_group(proc)
            raise TaskCancelled("the task was cancelled while Bash ran; its processes were killed")
        now = time.monotonic()
        if now >= deadline:
            return True
        wait = min(POLL_SECONDS, deadline - now)
        if ended:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
        elif selector.select(wait):
            chunk = os.read(fd, 65536)
            ended = not chunk
            capture.add(chunk)
        if proc.poll() is not None:
            exited_at = exited_at or now
            if ended or now - exited_at > EXIT_GRACE_SECONDS:
                return False  # a background child still holding the pipe dies with the group


def _rlimits(limits: Limits) -> list[str]:
    """util-linux's prlimit before the shell: a fork bomb, a runaway file or a runaway
    allocation stops at its limit (processes count per user across the machine; memory
    per process: many processes together need a cgroup, which is not here)."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        return []
    nproc, fsize = limits.bash_max_processes, limits.bash_max_file_bytes
    data = limits.bash_max_memory_bytes
    memory = [f"--data={data}"] if data > 0 else []
    return [prlimit, f"--nproc={nproc}", f"--fsize={fsize}", *memory, "--"]


class Bash(BuiltinTool):
    name = "Bash"
    description = (
        "Run a bash command in the workspace (the working directory) and return its output "
        "(stdout and stderr together) and exit code. Each call is a fresh shell. It runs in a "
        "sandbox: the system is read-only, only the workspace and /tmp are writable, there is "
        "no network unless the role allows it, and processes it leaves behind are killed."
    )
    input_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": "The command to run"},
            "timeout": {
                "type": "number",
                "description": "Time limit in milliseconds (default 120000, at most 600000)",
            },
            "description": {
                "type": "string",
                "description": "What the command does, in 5-10 words",
            },
        },
        "required": ["command"],
        "additionalProperties": False,
    }
    idempotent = False
    waits = True

    def execute(self, args: Args, ctx: ToolContext) -> ToolOutput:
        command = args.text("command")
        wanted_ms = args.integer("timeout", None, least=1)
        limits = ctx.limits
        wanted = limits.bash_timeout if wanted_ms is None else wanted_ms / 1000
        timeout = ctx.remaining(min(wanted, limits.bash_max_timeout))
        if timeout <= 0:
            return error("Bash: the task's time is up; the command was not run")
        executable = bwrap() if ctx.sandbox is not Sandbox.NONE else None
        if executable is None and ctx.sandbox is Sandbox.BWRAP:
            return error(
                "Bash is refused: it runs only in a bubblewrap sandbox and bwrap is not "
                "installed — install Debian's bubblewrap (apt-get install bubblewrap), or let "
                "the role run Bash unsandboxed (sandbox: {mode: auto} or {mode: none})"
            )
        sandboxed = executable is not None
        argv = [*_rlimits(limits), "bash" if shutil.which("bash") else "sh", "-c", command]
        if executable is not None:
            sandbox = sandbox_argv(
                executable, ctx.workspace, network=ctx.network, hidden=ctx.hidden
            )
            argv = [*sandbox, *argv]
        env = clean_env(os.environ, ctx.secrets, home="/tmp" if sandboxed else None)
        done = run_command(
            argv,
            cwd=ctx.workspace,
            env=env,
            timeout=timeout,
            cancel=ctx.cancel,
            max_bytes=limits.max_output_chars,
        )
        text = done.output.decode("utf-8", errors="replace").rstrip("\n")
        if done.exit_code is None:
            return error(f"{text}\n[killed: the command ran past its {timeout:g} s time limit]")
        if done.exit_code != 0:
            return error(f"{text}\n[exit code {done.exit_code}]".lstrip("\n"))
        return ToolOutput(text or "(no output)")
