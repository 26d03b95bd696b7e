"""The tool layer of the agent loop: built-in tools, MCP servers, permissions.

``toolbox.Toolbox`` is the entry point; ``base`` holds the protocol
(``Tool``, ``ToolContext``, ``ToolOutput``). Nothing here is imported until a
role with tools runs, and ``mcp`` only when it has ``mcp_servers``.
"""
