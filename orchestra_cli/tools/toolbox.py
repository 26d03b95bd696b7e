"""A role's tools in one place: what the model is offered, what may run, and running it.

with Toolbox.for_role(role, hide=[settings.home]) as toolbox:  # MCP servers start
    ctx = toolbox.context(workspace, cancel=cancel, deadline=deadline)
    response = provider.complete(LLMRequest(..., tools=toolbox.specs()))
    calls = response.tool_calls
    if any(toolbox.decide(c.name, c.input, ctx) is Decision.ASK for c in calls):
        ...  # park the task for a person (human-in-the-loop); run() refuses them
    outputs = toolbox.run(calls, ctx)  # concurrently, results in call order
    results = [out.result(c.id) for c, out in zip(calls, outputs, strict=True)]
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import dataclasses
import logging
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, overload

from orchestra_cli import metrics, tracing
from orchestra_cli.blocking import waiting
from orchestra_cli.errors import TaskCancelled
from orchestra_cli.llm.base import ToolCall, ToolSpec
from orchestra_cli.logs import known_secrets
from orchestra_cli.tools import paths
from orchestra_cli.tools.base import (
    BuiltinTool,
    Limits,
    Tool,
    ToolContext,
    ToolInputError,
    ToolOutput,
    cap,
    error,
)
from orchestra_cli.tools.bash import Bash
from orchestra_cli.tools.config import McpServerConfig, PermissionsConfig, SandboxConfig
from orchestra_cli.tools.files import Edit, Read, Write
from orchestra_cli.tools.permissions import Decision, Permissions, Ruling
from orchestra_cli.tools.search import Glob, Grep
from orchestra_cli.tools.web import WebFetch

if TYPE_CHECKING:
    from types import TracebackType

    from orchestra_cli.tools.mcp import McpServers, McpTool

log = logging.getLogger(__name__)
BUILTINS: dict[str, type[BuiltinTool]] = {
    tool.name: tool for tool in (Read, Write, Edit, Glob, Grep, Bash, WebFetch)
}
MCP_TIMEOUT = 120.0  # an MCP call's time limit when the task has no deadline sooner
MAX_PARALLEL_CALLS = 8


class ToolRole(Protocol):
    """What a toolbox reads from a role (``engine.roles.RoleDefinition`` has it)."""

    @property
    def tools(self) -> Sequence[str]: ...
    @property
    def mcp_servers(self) -> Mapping[str, McpServerConfig]: ...
    @property
    def permissions(self) -> PermissionsConfig: ...
    @property
    def sandbox(self) -> SandboxConfig: ...


class Toolbox:
    """The built-in tools a role lists (plus ``extra`` tools of the caller's), its MCP
    servers (started here), and its permissions."""

    def __init__(
        self,
        tools: Sequence[str] = (),
        *,
        mcp_servers: Mapping[str, McpServerConfig] | None = None,
        permissions: PermissionsConfig | None = None,
        sandbox: SandboxConfig | None = None,
        limits: Limits | None = None,
        fetch_private: bool = False,
        hide: Sequence[Path] = (),
        extra: Sequence[Tool] = (),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        unknown = [name for name in tools if name not in BUILTINS]
        if unknown:
            raise ValueError(f"unknown built-in tools: {', '.join(unknown)}")
        self._local: dict[str, Tool] = {name: BUILTINS[name]() for name in tools}
        for tool in extra:  # the loop's own tools (delegate, spawn…), offered like built-ins
            if tool.name in self._local or tool.name.startswith("mcp__"):
                raise ValueError(f"tool name {tool.name!r} is taken")
            self._local[tool.name] = tool
        self._sandbox = sandbox or SandboxConfig()
        self._limits = limits or Limits()
        if self._sandbox.max_memory_mb is not None:
            memory = self._sandbox.max_memory_mb << 20
            self._limits = dataclasses.replace(self._limits, bash_max_memory_bytes=memory)
        self._fetch_private = fetch_private
        self._hidden = tuple(hide)  # e.g. orchestra's home and .env: not for the sandbox to read
        servers = dict(mcp_servers or {})
        rules = permissions or PermissionsConfig()
        allow = rules.allow
        if allow is None:  # by default the role's own tools are allowed
            allow = [*self._local, *(f"mcp__{name}__*" for name in servers)]
        self.permissions = Permissions(allow, rules.ask, rules.deny)
        self._mcp: McpServers | None = None
        self._mcp_tools: dict[str, McpTool] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        if servers:
            from orchestra_cli.tools.mcp import McpServers  # imports the mcp SDK

            self._mcp = McpServers(servers, environ)
            self._mcp.start()
            self._mcp_tools = {tool.name: tool for tool in self._mcp.tools()}

    @classmethod
    def for_role(cls, role: ToolRole, **options: Any) -> Toolbox:
        """The toolbox a role file describes (its MCP servers start now)."""
        return cls(
            role.tools,
            mcp_servers=role.mcp_servers,
            permissions=role.permissions,
            sandbox=role.sandbox,
            **options,
        )

    # -- what the model sees ----------------------------------------------------
    def names(self) -> list[str]:
        """Every tool the role has, permitted or not."""
        return [*self._local, *self._mcp_tools]

    def specs(self) -> list[ToolSpec]:
        """The tools offered to the model: those some ``allow`` or ``ask`` rule lets run."""
        specs = [
            ToolSpec(name, tool.description, tool.input_schema)
            for name, tool in self._local.items()
            if self._offered(name)
        ]
        for name, tool in self._mcp_tools.items():
            if self._offered(name):
                specs.append(ToolSpec(name, tool.description, tool.input_schema))
        return specs

    def _offered(self, name: str) -> bool:
        return self.permissions.offered(name)

    def decide(self, name: str, input: Any = None, ctx: ToolContext | None = None) -> Decision:
        """``allow``, ``ask`` or ``deny`` for a call (unknown tools are denied)."""
        return self.ruling(name, input, ctx).decision

    def ruling(self, name: str, input: Any = None, ctx: ToolContext | None = None) -> Ruling:
        """The decision and the rule that made it. With ``ctx``, a ``file_path`` is matched
        as the workspace-relative path it resolves to (so ``Write(docs/*)`` is not fooled by
        an absolute path, ``..`` or a symlink)."""
        if name not in self._local and name not in self._mcp_tools:
            return Ruling(Decision.DENY, None)
        if not isinstance(input, Mapping):
            return self.permissions.decide(name, None)
        path = input.get("file_path")
        if ctx is not None and isinstance(path, str):
            try:
                real = paths.resolve(ctx.workspace, path)
            except ToolInputError:
                pass  # outside the workspace: the tool refuses it whatever the rules say
            else:
                input = {**input, "file_path": paths.shown(ctx.workspace, real)}
        return self.permissions.decide(name, input)

    def idempotent(self, name: str) -> bool:
        """Whether a call that started but recorded no result may simply run again."""
        if name in self._local:
            return self._local[name].idempotent
        tool = self._mcp_tools.get(name)
        return tool.idempotent if tool is not None else False

    def context(
        self,
        workspace: Path,
        *,
        cancel: threading.Event | None = None,
        deadline: float | None = None,
        secrets: frozenset[str] | None = None,
    ) -> ToolContext:
        """A context for one task's calls with this role's sandbox, network and limits."""
        return ToolContext(
            workspace=workspace,
            cancel=cancel or threading.Event(),
            deadline=deadline,
            secrets=known_secrets() if secrets is None else secrets,
            network=self._sandbox.network,
            sandbox=self._sandbox.mode,
            fetch_private=self._fetch_private,
            hidden=self._hidden,
            limits=self._limits,
        )

    # -- running calls ------------------------------------------------------------
    @overload
    def run(
        self, call: ToolCall, ctx: ToolContext, *, approved: Collection[str] = ()
    ) -> ToolOutput: ...
    @overload
    def run(
        self, call: Sequence[ToolCall], ctx: ToolContext, *, approved: Collection[str] = ()
    ) -> list[ToolOutput]: ...
    def run(
        self,
        call: ToolCall | Sequence[ToolCall],
        ctx: ToolContext,
        *,
        approved: Collection[str] = (),
    ) -> ToolOutput | list[ToolOutput]:
        """Run one call, or several concurrently (results in call order). A refused or
        failed call is an error result; only cancellation raises (``TaskCancelled``).
        ``approved``: ids of calls a person approved (an ``ask`` rule lets them run)."""
        if isinstance(call, ToolCall):
            return self._observed(call, ctx, approved)
        calls = list(call)
        if len(calls) <= 1:
            return [self._observed(c, ctx, approved) for c in calls]
        # each call in a copy of this thread's context: its span's parent is the caller's
        futures = [
            self._executor().submit(
                contextvars.copy_context().run, self._observed, c, ctx, approved
            )
            for c in calls
        ]
        with waiting():  # on the calls' own threads
            concurrent.futures.wait(futures)
        for future in futures:
            failure = future.exception()
            if isinstance(failure, TaskCancelled):
                raise failure
        return [future.result() for future in futures]

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    MAX_PARALLEL_CALLS, thread_name_prefix="tool"
                )
            return self._pool

    def _observed(
        self, call: ToolCall, ctx: ToolContext, approved: Collection[str] = ()
    ) -> ToolOutput:
        """One call in its trace span, counted in the metrics."""
        started = time.monotonic()
        with tracing.span(f"execute_tool {call.name}", tracing.tool_attrs(call)) as span:
            out = self._run_one(call, ctx, approved)
            if out.is_error:
                tracing.failed(span, out.content)
        metrics.tool_call(call.name, out.is_error, time.monotonic() - started)
        return out

    def _run_one(
        self, call: ToolCall, ctx: ToolContext, approved: Collection[str] = ()
    ) -> ToolOutput:
        ruling = self.ruling(call.name, call.input, ctx)
        if ruling.decision is Decision.DENY:
            if call.name not in self._local and call.name not in self._mcp_tools:
                return error(
                    f"{call.name} is not a tool of this role; use one of the tools offered"
                )
            return error(f"{call.name} is not permitted for this role ({ruling.reason})")
        if ruling.decision is Decision.ASK and call.id not in approved:
            return error(
                f"{call.name} needs a person's approval ({ruling.reason}); it was not "
                "approved, so the call was not run"
            )
        ctx.check_cancel()
        try:
            return self._execute(call, ctx)
        except TaskCancelled:
            raise
        except Exception as exc:  # a bug in a tool must not end the task's loop
            log.exception("tool %s failed", call.name)
            return error(f"{call.name} failed: {type(exc).__name__}: {exc}")

    def _execute(self, call: ToolCall, ctx: ToolContext) -> ToolOutput:
        if not isinstance(call.input, Mapping):
            return error(f"{call.name}: the input must be a JSON object")
        tool = self._local.get(call.name)
        if tool is not None:
            with waiting() if getattr(tool, "waits", False) else nullcontext():
                out = tool.run(call.input, ctx)  # built-ins cap and redact; others may not
            return ToolOutput(cap(ctx.redact(out.content), ctx.limits), out.is_error)
        assert self._mcp is not None
        timeout = ctx.remaining(MCP_TIMEOUT)
        if timeout <= 0:
            return error(f"{call.name}: the task's time is up; the call was not made")
        with waiting():  # on the server
            out = self._mcp.call(call.name, call.input, timeout=timeout, cancel=ctx.cancel)
        return ToolOutput(cap(ctx.redact(out.content), ctx.limits), out.is_error)

    def close(self) -> None:
        """Stop the MCP servers and the worker threads."""
        if self._mcp is not None:
            self._mcp.close()
            self._mcp = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> Toolbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
