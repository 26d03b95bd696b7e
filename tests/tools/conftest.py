"""Fixtures of the tool-layer tests: a workspace, a context, and the sandbox check."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from orchestra_cli.tools.base import Limits, Sandbox, ToolContext


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


@pytest.fixture
def ctx(workspace: Path) -> ToolContext:
    return ToolContext(workspace=workspace, limits=Limits(max_file_bytes=10_000))


def require_bwrap() -> None:
    """Skip on a laptop without bubblewrap; fail in CI, where the sandbox must be tested."""
    if shutil.which("bwrap"):
        return
    message = "bwrap (Debian's bubblewrap) is not installed"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must run the sandbox tests; see tests/ensure_services.py)")
    pytest.skip(message)


@pytest.fixture
def sandboxed(ctx: ToolContext) -> ToolContext:
    require_bwrap()
    return ToolContext(workspace=ctx.workspace, sandbox=Sandbox.BWRAP)


class CancelLater:
    """A cancel event set after ``delay`` seconds; ``since()`` is the time since it was set."""

    def __init__(self, delay: float) -> None:
        self.event = threading.Event()
        self.at: float | None = None
        threading.Timer(delay, self._fire).start()

    def _fire(self) -> None:
        self.at = time.monotonic()
        self.event.set()

    def since(self) -> float:
        assert self.at is not None, "the cancel event was never set"
        return time.monotonic() - self.at
