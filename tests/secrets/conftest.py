"""A real OpenBao dev server per test module, on a free port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.bao_server import ROOT_TOKEN, Bao, running_bao

__all__ = ["ROOT_TOKEN", "Bao", "bao"]


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    with running_bao(tmp_path_factory) as server:
        yield server
