"""A small MCP server for the tests, on the SDK's MCPServer (FastMCP in mcp 1.x).

``python mcp_test_server.py`` serves stdio; ``--http PORT`` serves streamable
HTTP on 127.0.0.1:PORT/mcp.
"""

from __future__ import annotations

import argparse
import os
import time

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("orchestra-test")


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def fail(reason: str) -> str:
    """Always fails with the reason."""
    raise ValueError(f"failed on purpose: {reason}")


@server.tool()
def slow(seconds: float) -> str:
    """Sleep, then answer."""
    time.sleep(seconds)
    return "done"


@server.tool()
def environment(name: str) -> str:
    """The value of one environment variable of the server, or '(unset)'."""
    return os.environ.get(name, "(unset)")


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def pid() -> int:
    """The server's process id."""
    return os.getpid()


@server.tool(name="a_tool_name_far_too_long_for_the_messages_api_once_prefixed_by_mcp")
def long_name() -> str:
    """Never offered: its full name would be over 64 characters."""
    return "unreachable"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int)
    args = parser.parse_args()
    if args.http is None:
        server.run()
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.http)


if __name__ == "__main__":
    main()
