"""MCP servers through the official ``mcp`` SDK, behind a synchronous facade.

The agent is threaded, the SDK is async: one asyncio loop in a background
thread owns every client session (an anyio context must be entered and left
by the same task, so each server has one long-lived task that connects,
serves and reconnects). ``McpServers.call`` may be called from any thread.

A server that dies — its stdout ends, or a call finds the connection closed —
is started again with a backoff; calls made meanwhile wait for it up to their
time limit. ``close`` stops every server (the SDK closes stdin, then
terminates and kills the process), so none outlives the toolbox.

Only this module imports ``mcp``, and only a role with ``mcp_servers`` imports it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import anyio

from orchestra_cli.errors import OrchestraError, TaskCancelled
from orchestra_cli.tools.base import ToolOutput, error
from orchestra_cli.tools.config import McpServerConfig

if TYPE_CHECKING:
    from mcp import ClientSession
    from mcp.types import CallToolResult

log = logging.getLogger(__name__)
PREFIX = "mcp__"
RESTART_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)  # backoff between restarts, then the last
STOP_TIMEOUT = 15.0  # the SDK gives a server 2 s after stdin closes, then 2 s after SIGTERM
MAX_TOOL_PAGES = 50
MODEL_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")  # the Messages API's rule
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class McpServerError(OrchestraError):
    """An MCP server could not be started or listed its tools badly."""


def expand(text: str, environ: Mapping[str, str]) -> str:
    """``${NAME}`` and ``${NAME:-default}`` from the environment, as Claude Code reads them."""
    return _VAR.sub(lambda m: environ.get(m[1], m[2] or ""), text)


def tool_name(server: str, tool: str) -> str:
    return f"{PREFIX}{server}__{tool}"


@dataclass(frozen=True)
class McpTool:
    """One tool of one server, as offered to the model."""

    server: str
    tool: str  # the server's own name for it
    description: str
    input_schema: dict[str, Any]
    idempotent: bool  # the server's read-only or idempotent hint

    @property
    def name(self) -> str:
        return tool_name(self.server, self.tool)


def render(result: CallToolResult) -> ToolOutput:
    """A tool result's content blocks as text (non-text blocks are described, not shown)."""
    parts = []
    for block in result.content:
        text = getattr(block, "text", None)
        if isinstance(text, str):
            parts.append(text)
        else:
            kind = getattr(block, "mime_type", None) or getattr(block, "type", "content")
            parts.append(f"[{kind} content, not shown]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return ToolOutput("\n".join(parts) or "(no content)", is_error=result.is_error)


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


class _Watched:
    """A transport's read stream that notes when it ends (the server went away)."""

    def __init__(self, stream: Any, ended: anyio.Event) -> None:
        self._stream = stream
        self._ended = ended

    async def receive(self) -> Any:
        try:
            return await self._stream.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._ended.set()
            raise

    def __aiter__(self) -> _Watched:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self) -> _Watched:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Server:
    """One server's connection, owned by one task on the background loop."""

    def __init__(self, name: str, config: McpServerConfig, environ: Mapping[str, str]) -> None:
        self.name = name
        self.config = config
        self.environ = environ
        self.session: ClientSession | None = None
        self.tools: list[McpTool] = []
        self.failure: str | None = None
        self.restarts = 0
        self.started = threading.Event()  # set at the first success or failure
        self._stopping = False
        self._down: anyio.Event | None = None
        self._stopped: anyio.Event | None = None

    async def run(self) -> None:
        """Connect, serve until the connection ends, and start again until stopped."""
        attempt = 0
        self._stopped = anyio.Event()
        while not self._stopping:
            self._down = anyio.Event()
            errlog = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115
            try:
                await self._serve(errlog)
                attempt = 0
            except Exception as exc:
                self.failure = f"{_describe(exc)}{_tail(errlog)}"
                attempt += 1
            finally:
                self.session = None
                errlog.close()
                self.started.set()
            if self._stopping:
                return
            self.restarts += 1
            delay = RESTART_DELAYS[min(attempt, len(RESTART_DELAYS) - 1)]
            log.warning(
                "MCP server %s stopped (%s); starting it again in %.1f s",
                self.name,
                self.failure or "its connection ended",
                delay,
            )
            with anyio.move_on_after(delay):
                await self._stopped.wait()

    async def _serve(self, errlog: TextIO) -> None:
        from mcp import ClientSession

        assert self._down is not None
        async with contextlib.AsyncExitStack() as stack:
            read, write = await stack.enter_async_context(self._transport(stack, errlog))
            session = await stack.enter_async_context(
                ClientSession(_Watched(read, self._down), write)
            )
            with anyio.fail_after(self.config.startup_timeout):
                await session.initialize()
                self.tools = await self._list_tools(session)
            self.session, self.failure = session, None
            self.started.set()
            await self._down.wait()

    def _transport(self, stack: contextlib.AsyncExitStack, errlog: TextIO) -> Any:
        config, env = self.config, self.environ
        if config.type == "http":
            import httpx2  # the mcp SDK's own HTTP client
            from mcp.client.streamable_http import streamable_http_client

            headers = {key: expand(value, env) for key, value in config.headers.items()}
            client = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0))
            stack.push_async_callback(client.aclose)
            return streamable_http_client(expand(config.url or "", env), http_client=client)
        from mcp.client.stdio import StdioServerParameters, stdio_client

        params = StdioServerParameters(
            command=expand(config.command or "", env),
            args=[expand(arg, env) for arg in config.args],
            env={key: expand(value, env) for key, value in config.env.items()},
            cwd=config.cwd,
        )
        return stdio_client(params, errlog=errlog)

    async def _list_tools(self, session: ClientSession) -> list[McpTool]:
        from mcp.types import PaginatedRequestParams

        tools: list[McpTool] = []
        cursor: str | None = None
        for _ in range(MAX_TOOL_PAGES):
            params = PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await session.list_tools(params=params)
            for tool in page.tools:
                if not MODEL_TOOL_NAME.match(tool_name(self.name, tool.name)):
                    log.warning(
                        "MCP server %s: tool %r is not offered (the model API takes names of "
                        "1-64 letters, digits, '_' and '-', prefix included)",
                        self.name,
                        tool.name,
                    )
                    continue
                hints = tool.annotations
                idempotent = bool(hints and (hints.read_only_hint or hints.idempotent_hint))
                schema = dict(tool.input_schema or {"type": "object"})
                tools.append(
                    McpTool(self.name, tool.name, tool.description or "", schema, idempotent)
                )
            cursor = page.next_cursor
            if not cursor:
                break
        return tools

    def _up(self) -> bool:
        return self.session is not None and self._down is not None and not self._down.is_set()

    def went_down(self) -> None:
        if self._down is not None:
            self._down.set()

    def stop(self) -> None:
        self._stopping = True
        self.went_down()
        if self._stopped is not None:
            self._stopped.set()

    async def call(self, tool: str, arguments: dict[str, Any], timeout: float) -> ToolOutput:
        """Call a tool; when the connection was lost, an idempotent tool is called once more
        on the restarted server (the server may have died before the call reached it)."""
        deadline = time.monotonic() + timeout
        output, lost = await self._attempt(tool, arguments, deadline, timeout)
        if lost and any(t.tool == tool and t.idempotent for t in self.tools):
            output, lost = await self._attempt(tool, arguments, deadline, timeout)
        return output

    async def _attempt(
        self, tool: str, arguments: dict[str, Any], deadline: float, timeout: float
    ) -> tuple[ToolOutput, bool]:
        """(the output, whether the connection was lost during the call)."""
        from mcp import MCPError
        from mcp.types import CONNECTION_CLOSED

        while not self._up() and not self._stopping and time.monotonic() < deadline:
            await anyio.sleep(0.05)  # restarting: wait for it
        session = self.session if self._up() else None
        if session is None:
            why = f" (last failure: {self.failure})" if self.failure else ""
            return error(f"MCP server {self.name} is not running{why}; try again later"), False
        try:
            with anyio.fail_after(max(0.0, deadline - time.monotonic())):
                return render(await session.call_tool(tool, arguments)), False
        except TimeoutError:
            return error(f"{tool_name(self.name, tool)} timed out after {timeout:g} s"), False
        except MCPError as exc:
            if exc.code != CONNECTION_CLOSED:
                return error(f"{tool_name(self.name, tool)}: {exc.message}"), False
            self.went_down()
            return error(f"MCP server {self.name} closed the connection; it is restarting"), True
        except Exception as exc:
            self.went_down()  # a transport failure: connect afresh
            return error(f"MCP server {self.name} failed: {_describe(exc)}"), True


def _tail(errlog: TextIO, most: int = 2000) -> str:
    try:
        errlog.seek(0)
        text = errlog.read()[-most:].strip()
    except (OSError, ValueError):
        return ""
    return f"; its stderr: {text}" if text else ""


class McpServers:
    """The MCP servers of one toolbox; every method may be called from any thread."""

    def __init__(
        self, configs: Mapping[str, McpServerConfig], environ: Mapping[str, str] | None = None
    ) -> None:
        environ = dict(os.environ if environ is None else environ)
        self._servers = {name: _Server(name, cfg, environ) for name, cfg in configs.items()}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runs: list[concurrent.futures.Future[None]] = []

    def start(self) -> None:
        """Start every server and list its tools; ``McpServerError`` if one cannot start."""
        import mcp  # noqa: F401 - a missing SDK fails here, before a thread starts

        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="mcp-servers", daemon=True)
        self._thread.start()
        self._runs = [
            asyncio.run_coroutine_threadsafe(s.run(), loop) for s in self._servers.values()
        ]
        for server in self._servers.values():
            server.started.wait(server.config.startup_timeout + 5)
        failed = {
            s.name: s.failure or "no answer in time"
            for s in self._servers.values()
            if s.session is None
        }
        if failed:
            self.close()
            name, why = next(iter(failed.items()))
            raise McpServerError(
                f"MCP server {name!r} did not start: {why}",
                f"check mcp_servers.{name} in the role file (command, args, url)",
            )

    def tools(self) -> list[McpTool]:
        return [tool for server in self._servers.values() for tool in server.tools]

    def restarts(self, server: str) -> int:
        return self._servers[server].restarts

    def call(
        self,
        name: str,
        input: Mapping[str, Any],
        *,
        timeout: float,
        cancel: threading.Event | None = None,
    ) -> ToolOutput:
        """Call ``mcp__<server>__<tool>``; errors are results, cancel raises ``TaskCancelled``."""
        server, _, tool = name.removeprefix(PREFIX).partition("__")
        if not name.startswith(PREFIX) or server not in self._servers or not tool:
            return error(f"{name} is not a tool of this role's MCP servers")
        if self._loop is None:
            return error(f"MCP server {server} is not started")
        future = asyncio.run_coroutine_threadsafe(
            self._servers[server].call(tool, dict(input), timeout), self._loop
        )
        give_up = time.monotonic() + timeout + STOP_TIMEOUT  # the call itself ends at timeout
        try:
            while time.monotonic() < give_up:
                if cancel is not None and cancel.is_set():
                    raise TaskCancelled(f"the task was cancelled during {name}")
                try:
                    return future.result(timeout=0.05)
                except concurrent.futures.TimeoutError:
                    continue
            return error(f"{name} did not answer in {timeout:g} s")
        finally:
            future.cancel()

    def close(self) -> None:
        """Stop every server and the loop; wait until their processes are gone."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        for server in self._servers.values():
            loop.call_soon_threadsafe(server.stop)
        concurrent.futures.wait(self._runs, timeout=STOP_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not loop.is_running():
            loop.close()
