"""The tool protocol: what a tool is, what it gets when it runs, what it returns.

A tool's failure — bad input, a refused path, a command that exits non-zero —
is an *error result* the model reads and can act on, never an exception out of
``run``. The one exception is cancellation: ``run`` raises ``TaskCancelled``
when the task's cancel event is set, so the loop stops between steps.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from orchestra_cli.errors import TaskCancelled
from orchestra_cli.llm.base import ToolResult, ToolSpec
from orchestra_cli.tools.config import Sandbox

__all__ = ["Sandbox"]  # defined with the role-file keys, used by every tool


CGROUP_MEMORY_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


def half_the_memory(limits: tuple[Path, ...] = CGROUP_MEMORY_LIMITS) -> int:
    """Half the memory this process may use, bytes: the machine's, or its cgroup's limit
    if that is lower (a container's ``SC_PHYS_PAGES`` is the host's); 4 GiB where neither
    can be read."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        memory = 8 << 30
    for path in limits:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < memory:  # "max", or v1's huge "unlimited"
            memory = int(text)
    return memory // 2


@dataclass(frozen=True)
class Limits:
    """Caps that keep one tool call from flooding the model's context or the disk."""

    max_file_bytes: int = 2_000_000  # Read and Write: a larger file is refused
    max_output_chars: int = 30_000  # any tool's result, cut in the middle beyond this
    read_lines: int = 2000  # Read's default ``limit``
    line_chars: int = 2000  # Read cuts longer lines
    bash_timeout: float = 120.0  # Bash's default time limit (seconds)
    bash_max_timeout: float = 600.0  # the most a call may ask for
    bash_max_processes: int = 8192  # RLIMIT_NPROC: counts the user's threads machine-wide
    bash_max_file_bytes: int = 1_000_000_000  # RLIMIT_FSIZE: the largest file it may write
    # RLIMIT_DATA: the private memory one of its processes may take (0: no limit), so a
    # runaway allocation fails in the command instead of sending the kernel's OOM killer
    # after the agent, Redis or the database; a role's sandbox.max_memory_mb sets it
    bash_max_memory_bytes: int = field(default_factory=half_the_memory)
    fetch_bytes: int = 1_000_000  # WebFetch stops reading beyond this
    fetch_timeout: float = 30.0
    search_results: int = 500  # Glob's and Grep's entries, before ``head_limit``


@dataclass(frozen=True)
class ToolContext:
    """What a tool call may touch: one task's workspace, its cancel and deadline."""

    workspace: Path
    cancel: threading.Event = field(default_factory=threading.Event)
    deadline: float | None = None  # time.monotonic() by which the call must end
    secrets: frozenset[str] = frozenset()  # values stripped from output and Bash's environment
    network: bool = False  # Bash's sandbox shares the host's network
    sandbox: Sandbox = Sandbox.BWRAP
    fetch_private: bool = False  # WebFetch may reach loopback and private addresses
    hidden: tuple[Path, ...] = ()  # not visible in Bash's sandbox (orchestra's home, .env)
    limits: Limits = Limits()

    def check_cancel(self) -> None:
        """Raise ``TaskCancelled`` once the task's cancel event is set."""
        if self.cancel.is_set():
            raise TaskCancelled("the task was cancelled while a tool ran")

    def remaining(self, wanted: float) -> float:
        """``wanted`` seconds, or less when the deadline comes first (never below 0)."""
        if self.deadline is None:
            return wanted
        return max(0.0, min(wanted, self.deadline - time.monotonic()))

    def redact(self, text: str) -> str:
        for value in self.secrets:
            if value and value in text:
                text = text.replace(value, "***")
        return text


@dataclass(frozen=True)
class ToolOutput:
    """A tool call's result as the model sees it."""

    content: str
    is_error: bool = False

    def result(self, call_id: str) -> ToolResult:
        """The provider-neutral shape the LLM layer sends back to the model."""
        return ToolResult(call_id=call_id, content=self.content, is_error=self.is_error)


def error(message: str) -> ToolOutput:
    return ToolOutput(message, is_error=True)


class Tool(Protocol):
    """One tool: a name the model calls, its input schema, and how to run it."""

    @property
    def name(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def input_schema(self) -> dict[str, Any]: ...
    @property
    def idempotent(self) -> bool:
        """Whether running it again after a crash mid-call cannot do harm."""
        ...

    def run(self, input: Mapping[str, Any], ctx: ToolContext) -> ToolOutput:
        """The result the model reads; raise only ``TaskCancelled``."""
        ...


class ToolInputError(ValueError):
    """Input that does not fit the tool's schema (becomes an error result)."""


class BuiltinTool:
    """Base of the built-in tools: the spec, input checks and the output cap."""

    name: ClassVar[str]
    description: ClassVar[str]
    input_schema: ClassVar[dict[str, Any]]
    idempotent: ClassVar[bool] = False
    # whether a call mostly waits on something outside the process (a command, a
    # server): it then frees its agent's share of threads meanwhile (blocking.waiting)
    waits: ClassVar[bool] = False

    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.input_schema)

    def run(self, input: Mapping[str, Any], ctx: ToolContext) -> ToolOutput:
        """Check the input, run, and cap and redact the output; errors become results."""
        if not isinstance(input, Mapping):
            return error(f"{self.name}: the input must be a JSON object")
        ctx.check_cancel()
        try:
            output = self.execute(Args(self.name, input), ctx)
        except ToolInputError as exc:
            return error(f"{self.name}: {exc}")
        return ToolOutput(cap(ctx.redact(output.content), ctx.limits), output.is_error)

    def execute(self, args: Args, ctx: ToolContext) -> ToolOutput:
        raise NotImplementedError


class Args:
    """Typed reads of a tool's JSON input; a wrong type is a ``ToolInputError``."""

    def __init__(self, tool: str, data: Mapping[str, Any]) -> None:
        self.tool = tool
        self.data = data

    def text(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str):
            wanted = "is required (a string)" if value is None else "must be a string"
            raise ToolInputError(f"{key} {wanted}")
        return value

    def optional_text(self, key: str) -> str | None:
        return None if self.data.get(key) is None else self.text(key)

    def integer(self, key: str, default: int | None = None, *, least: int = 0) -> int | None:
        value = self.data.get(key, default)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ToolInputError(f"{key} must be an integer")
        if value < least:
            raise ToolInputError(f"{key} must be at least {least}")
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise ToolInputError(f"{key} must be true or false")
        return value


def cap(text: str, limits: Limits) -> str:
    """``text``, or its head and tail with a ``[truncated …]`` marker between them."""
    most = limits.max_output_chars
    if len(text) <= most:
        return text
    half = most // 2
    cut = len(text) - 2 * half
    return f"{text[:half]}\n[truncated {cut} characters]\n{text[-half:]}"
