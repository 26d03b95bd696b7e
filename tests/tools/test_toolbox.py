"""The Toolbox: what a role's model is offered, what runs, concurrency, MCP, closing."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from orchestra_cli.engine.roles import load_roles
from orchestra_cli.errors import TaskCancelled
from orchestra_cli.llm.base import ToolCall, ToolResult
from orchestra_cli.tools.base import Limits, Sandbox, ToolContext, ToolOutput
from orchestra_cli.tools.config import McpServerConfig, PermissionsConfig, SandboxConfig
from orchestra_cli.tools.permissions import Decision
from orchestra_cli.tools.toolbox import Toolbox
from tests.tools.conftest import CancelLater
from tests.tools.test_mcp_servers import TEST_SERVER, alive

UNSANDBOXED = SandboxConfig(mode=Sandbox.NONE)


class Remember:
    """A tool of the caller's own (as the loop's delegate will be), on the Tool protocol."""

    name = "remember"
    description = "Remember a fact."
    input_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"fact": {"type": "string"}},
        "required": ["fact"],
    }
    idempotent = True

    def __init__(self) -> None:
        self.facts: list[str] = []

    def run(self, input: Mapping[str, Any], ctx: ToolContext) -> ToolOutput:
        if input.get("fact") == "crash":
            raise RuntimeError("a bug in the tool")
        self.facts.append(str(input["fact"]))
        return ToolOutput(f"remembered {input['fact']} " + "!" * 500)


def call(name: str, **input: object) -> ToolCall:
    return ToolCall(id=f"call-{name}", name=name, input=input)


def names(toolbox: Toolbox) -> list[str]:
    return [spec.name for spec in toolbox.specs()]


def test_without_permissions_the_roles_own_tools_are_offered() -> None:
    toolbox = Toolbox(["Read", "Grep", "Bash"])
    assert names(toolbox) == ["Read", "Grep", "Bash"]
    spec = toolbox.specs()[0]
    assert spec.input_schema["required"] == ["file_path"] and "cat -n" in spec.description


def test_only_permitted_tools_are_offered() -> None:
    rules = PermissionsConfig(allow=["Read"], ask=["Write"], deny=["Edit"])
    toolbox = Toolbox(["Read", "Write", "Edit", "Bash"], permissions=rules)
    assert names(toolbox) == ["Read", "Write"]
    assert [toolbox.decide(n) for n in ("Read", "Write", "Edit", "Bash")] == [
        Decision.ALLOW,
        Decision.ASK,
        Decision.DENY,
        Decision.DENY,
    ]


def test_a_denied_call_is_an_error_result_and_does_not_run(workspace: Path) -> None:
    toolbox = Toolbox(["Read", "Write"], permissions=PermissionsConfig(allow=["Read"]))
    out = toolbox.run(call("Write", file_path="x.txt", content="x"), toolbox.context(workspace))
    assert out.is_error and "not permitted" in out.content and "no permissions rule" in out.content
    assert not (workspace / "x.txt").exists()


def test_a_call_that_needs_approval_fails_with_a_reason_and_does_not_run(
    workspace: Path,
) -> None:
    toolbox = Toolbox(["Write"], permissions=PermissionsConfig(ask=["Write"]))
    out = toolbox.run(call("Write", file_path="x.txt", content="x"), toolbox.context(workspace))
    assert out.is_error and "needs a person's approval" in out.content
    assert "permissions.ask has 'Write'" in out.content
    assert not (workspace / "x.txt").exists()


def test_a_tool_the_role_does_not_have_is_an_error_result(workspace: Path) -> None:
    toolbox = Toolbox(["Read"], permissions=PermissionsConfig(allow=["*"]))
    out = toolbox.run(call("Bash", command="id"), toolbox.context(workspace))
    assert out.is_error and "not a tool of this role" in out.content
    assert toolbox.decide("Bash") is Decision.DENY


def test_file_rules_match_the_resolved_workspace_path(workspace: Path) -> None:
    rules = PermissionsConfig(allow=["Read", "Write(docs/*)"])
    toolbox = Toolbox(["Read", "Write"], permissions=rules)
    ctx = toolbox.context(workspace)
    (workspace / "docs").mkdir()
    (workspace / "docs" / "src").symlink_to("../src")
    allowed = toolbox.run(call("Write", file_path=str(workspace / "docs/a.md"), content="x"), ctx)
    assert not allowed.is_error
    for sneaky in ("docs/../src/x.py", "docs/src/x.py"):
        out = toolbox.run(call("Write", file_path=sneaky, content="x"), ctx)
        assert out.is_error and "not permitted" in out.content, sneaky
    assert not (workspace / "src").exists()


def test_the_result_converts_to_the_llm_layers_tool_result(workspace: Path) -> None:
    toolbox = Toolbox(["Glob"])
    the_call = call("Glob", pattern="*")
    out = toolbox.run(the_call, toolbox.context(workspace))
    assert out.result(the_call.id) == ToolResult("call-Glob", "No files found", False)


@pytest.mark.integration
def test_several_calls_run_concurrently_and_come_back_in_call_order(workspace: Path) -> None:
    toolbox = Toolbox(["Bash"], sandbox=UNSANDBOXED)
    calls = [call("Bash", command=f"sleep 0.5; echo {i}") for i in range(4)]
    started = time.monotonic()
    outputs = toolbox.run(calls, toolbox.context(workspace))
    assert time.monotonic() - started < 1.5
    assert [out.content for out in outputs] == ["0", "1", "2", "3"]
    toolbox.close()


@pytest.mark.integration
def test_cancel_during_concurrent_calls_raises_task_cancelled(workspace: Path) -> None:
    toolbox = Toolbox(["Bash", "Read"], sandbox=UNSANDBOXED)
    cancel = CancelLater(0.2)
    ctx = toolbox.context(workspace, cancel=cancel.event)
    with pytest.raises(TaskCancelled):
        toolbox.run([call("Bash", command="sleep 20"), call("Read", file_path="x")], ctx)
    assert cancel.since() < 1.0
    toolbox.close()


def test_the_context_carries_the_roles_sandbox_network_and_limits(workspace: Path) -> None:
    limits = Limits(max_output_chars=100)
    sandbox = SandboxConfig(mode=Sandbox.AUTO, network=True)
    ctx = Toolbox(["Bash"], sandbox=sandbox, limits=limits).context(workspace, deadline=5.0)
    assert (ctx.sandbox, ctx.network, ctx.limits, ctx.deadline) == (Sandbox.AUTO, True, limits, 5.0)


def test_idempotency_is_reported_per_tool() -> None:
    toolbox = Toolbox(["Read", "Write", "Edit", "Bash"])
    assert [toolbox.idempotent(n) for n in ("Read", "Write", "Edit", "Bash", "Nope")] == [
        True,
        True,
        False,
        False,
        False,
    ]


def test_unknown_built_in_tool_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown built-in tools: Delete"):
        Toolbox(["Read", "Delete"])


def test_a_role_files_toolbox_has_its_tools(workspace: Path) -> None:
    roles = load_roles()
    assert names(Toolbox.for_role(roles["reviewer"])) == ["Read", "Glob", "Grep"]
    coder = Toolbox.for_role(roles["coder"])
    assert "Bash" in names(coder) and "Edit" in names(coder)
    assert coder.decide("Bash", {"command": "git push origin main"}) is Decision.DENY
    assert coder.decide("Bash", {"command": "pytest -q"}) is Decision.ALLOW
    architect = Toolbox.for_role(roles["architect"])
    ctx = architect.context(workspace)
    assert architect.decide("Write", {"file_path": "docs/design.md"}, ctx) is Decision.ALLOW
    assert architect.decide("Write", {"file_path": "src/app.py"}, ctx) is Decision.DENY


@pytest.mark.integration
def test_mcp_tools_are_offered_run_capped_and_stopped_with_the_toolbox(workspace: Path) -> None:
    servers = {"t": McpServerConfig(command=sys.executable, args=[TEST_SERVER])}
    rules = PermissionsConfig(allow=["Read", "mcp__t__*"], deny=["mcp__t__fail"])
    toolbox = Toolbox(
        ["Read"], mcp_servers=servers, permissions=rules, limits=Limits(max_output_chars=100)
    )
    try:
        offered = names(toolbox)
        assert "mcp__t__echo" in offered and "mcp__t__fail" not in offered
        ctx = toolbox.context(workspace, secrets=frozenset({"hunter2-value"}))
        echo = toolbox.run(call("mcp__t__echo", text="pass hunter2-value"), ctx)
        assert (echo.content, echo.is_error) == ("pass ***", False)
        long = toolbox.run(call("mcp__t__echo", text="x" * 500), ctx)
        assert "[truncated 400 characters]" in long.content
        assert toolbox.run(call("mcp__t__fail", reason="x"), ctx).is_error
        assert toolbox.idempotent("mcp__t__echo") and not toolbox.idempotent("mcp__t__add")
        pid = int(toolbox.run(call("mcp__t__pid"), ctx).content)
    finally:
        toolbox.close()
    assert not alive(pid)


@pytest.mark.integration
def test_the_toolbox_is_a_context_manager_that_closes_its_servers() -> None:
    servers = {"t": McpServerConfig(command=sys.executable, args=[TEST_SERVER])}
    with Toolbox(mcp_servers=servers) as toolbox:
        pid = int(toolbox.run(call("mcp__t__pid"), toolbox.context(Path("."))).content)
        assert alive(pid)
    assert not alive(pid)


def test_a_callers_own_tool_is_offered_run_capped_and_its_crash_is_an_error_result(
    workspace: Path,
) -> None:
    remember = Remember()
    toolbox = Toolbox(["Read"], extra=[remember], limits=Limits(max_output_chars=100))
    assert names(toolbox) == ["Read", "remember"] and toolbox.idempotent("remember")
    ctx = toolbox.context(workspace)
    out = toolbox.run(call("remember", fact="the sky is blue"), ctx)
    assert not out.is_error and "[truncated" in out.content and len(out.content) < 140
    crash = toolbox.run(call("remember", fact="crash"), ctx)
    assert crash.is_error and crash.content == "remember failed: RuntimeError: a bug in the tool"
    assert remember.facts == ["the sky is blue"]
    with pytest.raises(ValueError, match="'Read' is taken"):
        Toolbox(["Read"], extra=[type("Clash", (Remember,), {"name": "Read"})()])
