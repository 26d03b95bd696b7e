"""Budgeted tool loops as coroutines: a metered call's ledger steps (the budget's read, the
count_tokens round trip, waited for on the loop) run on ``blocking.STEPS``, never on the
loop's default executor — which the SDK's own requests need (anthropic's
asyncify(get_platform) on a client's first request, aiohttp's threaded resolver): 40 loops
holding its 32 threads in their ledger steps starved them for good (found in review).
Each case runs both ways: ``run`` on a thread a loop, ``arun`` on the loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any

import pytest

from orchestra_cli.aio import SHARED, SYNC_THREADS
from orchestra_cli.backends import Backends
from orchestra_cli.blocking import BlockingPool
from orchestra_cli.engine.budget import Meter
from orchestra_cli.engine.loop import AgentLoop
from orchestra_cli.engine.workspace import Workspace
from orchestra_cli.llm.anthropic import AnthropicProvider
from orchestra_cli.llm.base import LLMRequest, LLMResponse
from orchestra_cli.models import Task, Usage
from orchestra_cli.tools.toolbox import Toolbox
from tests.llm.fake_anthropic import FakeAnthropic, text


def _loops(backends: Backends, llm: Any, n: int) -> tuple[list[AgentLoop], list[threading.Event]]:
    meter = Meter(backends.state, backends.journals, backends.settings.llm)
    toolbox = Toolbox([])
    loops, cancels = [], []
    for i in range(n):
        task, _ = backends.state.create_task(
            Task(title=f"t{i}", input="x", labels={"budget_tokens": "10000000"})
        )
        cancel = threading.Event()
        request = LLMRequest(system="s", prompt="p", model="claude-sonnet-5-5", cancel=cancel)
        ws = Workspace(backends.state, backends.settings.home, task)
        loops.append(
            AgentLoop(
                backends.state,
                meter.wrap(llm, task, agent="a", defer_last=True),
                toolbox,
                task,
                request,
                workspace=ws.prepare(),
                max_turns=3,
                max_continuations=1,
            )
        )
        cancels.append(cancel)
    return loops, cancels


def _drive(path: str, loops: list[AgentLoop], cancels: list[threading.Event]) -> list[Any]:
    pool = BlockingPool("steps-test")  # as an agent's loops, beside STEPS

    async def arun_all() -> list[Any]:
        return list(await asyncio.gather(*(loop.arun(pool.run) for loop in loops)))

    with concurrent.futures.ThreadPoolExecutor(len(loops)) as ex:
        if path == "run":
            futures = [ex.submit(loop.run) for loop in loops]
        else:
            futures = [ex.submit(SHARED.call, arun_all)]
        try:
            done, _ = concurrent.futures.wait(futures, timeout=20)
            assert len(done) == len(futures), f"{path}: deadlocked, no answer in 20 s"
        finally:
            for cancel in cancels:  # frees the executor threads (SHARED.call watches it)
                cancel.set()
    answers = [f.result() for f in futures]
    return answers if path == "run" else answers[0]


@pytest.mark.parametrize("path", ["run", "arun"])
def test_budgeted_loops_first_calls_on_a_fresh_client(
    fake: FakeAnthropic, backends: Backends, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = SYNC_THREADS + 8
    fake.script(*[text("done") for _ in range(n)])
    llm = AnthropicProvider(fake.api_key, base_url=fake.url, backoff_seconds=0)
    loops, cancels = _loops(backends, llm, n)
    budget = Meter.budget

    def slow_budget(self: Meter, task: Task) -> Any:
        time.sleep(0.25)  # the ledger's read, slow for a moment (a Redis not on loopback)
        return budget(self, task)

    monkeypatch.setattr(Meter, "budget", slow_budget)
    answers = _drive(path, loops, cancels)
    assert [a.text for a in answers] == ["done"] * n


class _Api:
    """An awaitable provider whose count_tokens is an API round trip of 0.25 s."""

    name = "anthropic"

    def count_tokens(self, request: LLMRequest) -> int:
        time.sleep(0.25)
        return 10

    def complete(self, request: LLMRequest) -> LLMResponse:
        return LLMResponse(text="done", model=request.model, provider=self.name, usage=Usage())

    async def acomplete(self, request: LLMRequest) -> LLMResponse:
        return self.complete(request)


@pytest.mark.parametrize("path", ["run", "arun"])
def test_budgeted_loops_count_their_tokens_side_by_side(backends: Backends, path: str) -> None:
    n = 8 * SYNC_THREADS  # 32 at a time (the default executor) would take 2 s
    loops, cancels = _loops(backends, _Api(), n)
    started = time.monotonic()
    answers = _drive(path, loops, cancels)
    took = time.monotonic() - started
    assert [a.text for a in answers] == ["done"] * n
    assert took < 1.2, f"{path}: {n} loops' single turn took {took:.2f}s"
