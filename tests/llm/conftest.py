"""Fixtures for the LLM tests: the fake Messages API server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.llm.fake_anthropic import FakeAnthropic


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    server = FakeAnthropic().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _close_providers() -> Iterator[None]:
    """Close every AnthropicProvider a test made, so no socket outlives its test."""
    from orchestra_cli.llm.anthropic import AnthropicProvider

    made: list[AnthropicProvider] = []
    original = AnthropicProvider.__init__

    def tracking_init(self: AnthropicProvider, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        made.append(self)

    AnthropicProvider.__init__ = tracking_init  # type: ignore[method-assign]
    try:
        yield
    finally:
        AnthropicProvider.__init__ = original  # type: ignore[method-assign]
        for p in made:
            p.close()
