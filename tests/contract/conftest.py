"""Backends for the contract suites: one test body, every implementation.

``BACKEND_KINDS`` lists the implementations; each kind's factory returns a
``Backends`` isolated for one test (its own SQLite file, or its own key
prefix and queue names on the shared services) and cleans up after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestra_cli.backends import Backends, open_backends
from orchestra_cli.settings import Settings

Factory = Callable[[Path], Iterator[Backends]]


def embedded(home: Path) -> Iterator[Backends]:
    settings = Settings(
        home=home,
        broker={"lease_seconds": 1.0, "max_deliveries": 3},  # type: ignore[arg-type]
    )
    b = open_backends(settings)
    yield b
    b.close()


FACTORIES: dict[str, Factory] = {"embedded": embedded}
BACKEND_KINDS = list(FACTORIES)


@pytest.fixture(params=BACKEND_KINDS)
def contract_backends(request: pytest.FixtureRequest, home: Path) -> Iterator[Backends]:
    """A fresh, isolated set of backends of each kind."""
    yield from FACTORIES[request.param](home)
