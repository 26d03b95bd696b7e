"""Per-task-tree budgets and per-call metering.

Every model call made for a task goes through a ``MeteredProvider``: it
checks the tree's budget before the call, prices the call, adds the usage
to the task in state at once (so a failed attempt's spend still counts) and
writes one ``metrics.jsonl`` line. An agent defers the charge of its last
call (``defer_last``) to the transition that records the result, one state
write instead of two, and the call's line until then (a file write fewer
before the result is stored); any other outcome charges it on its own. A tree over its budget raises
``BudgetExceeded`` and no request leaves the process.

The budget is ``llm.budget_usd`` / ``llm.budget_tokens`` from the settings,
overridden per tree by the root task's labels ``budget_usd`` /
``budget_tokens`` (``orchestra task submit --label budget_usd=0.50``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from orchestra_cli.errors import BudgetExceeded, UsageError
from orchestra_cli.llm.base import LLMProvider, LLMRequest, LLMResponse
from orchestra_cli.llm.pricing import PriceTable
from orchestra_cli.logs import Journals
from orchestra_cli.models import Task, Usage
from orchestra_cli.settings import LLMSettings
from orchestra_cli.state.base import StateStore
from orchestra_cli.util import iso, now

log = logging.getLogger(__name__)

LABEL_USD = "budget_usd"
LABEL_TOKENS = "budget_tokens"


def tokens_of(usage: Usage) -> int:
    """Every token a call was billed for, cache reads and writes included."""
    return (
        usage.input_tokens
        + usage.output_tokens
        + usage.cache_read_tokens
        + usage.cache_write_tokens
    )


@dataclass(frozen=True)
class Budget:
    usd: float | None = None
    tokens: int | None = None

    @property
    def unlimited(self) -> bool:
        return self.usd is None and self.tokens is None

    def overrun(self, spent: Usage) -> str | None:
        """Why ``spent`` is at or over this budget, or None while within it."""
        if self.tokens is not None and tokens_of(spent) >= self.tokens:
            return f"{tokens_of(spent):,} of {self.tokens:,} budgeted tokens"
        if self.usd is not None and spent.cost_usd >= self.usd:
            return f"${spent.cost_usd:.4f} of the ${self.usd:.4f} budget"
        return None


def _label(root: Task, key: str) -> str | None:
    value = root.labels.get(key)
    return value.strip() if value and value.strip() else None


def check_budget_labels(labels: dict[str, str]) -> None:
    """UsageError unless the budget labels are a positive, finite amount (as --budget is)."""
    usd, tokens = labels.get(LABEL_USD), labels.get(LABEL_TOKENS)
    hint = "use e.g. --budget 0.50 (USD) or --budget 20000tok, or budget {usd, tokens} in the API"
    try:
        amount = float(usd.strip().lstrip("$")) if usd and usd.strip() else None
        count = int(tokens.strip().replace("_", "").replace(",", "")) if tokens else None
    except ValueError:
        raise UsageError("the budget is not a number", hint) from None
    if amount is not None and not (math.isfinite(amount) and amount > 0):
        raise UsageError(f"a budget of {usd} USD is not a positive, finite amount", hint)
    if count is not None and count <= 0:
        raise UsageError(f"a budget of {tokens} tokens is not a positive number", hint)


def budget_for(root: Task, settings: LLMSettings) -> Budget:
    """The budget of ``root``'s tree: its labels, else the settings."""
    usd, tokens = settings.budget_usd, settings.budget_tokens
    try:
        raw_usd = _label(root, LABEL_USD)
        raw_tokens = _label(root, LABEL_TOKENS)
        if raw_usd is not None:
            usd = float(raw_usd.lstrip("$"))
        if raw_tokens is not None:
            tokens = int(raw_tokens.replace("_", "").replace(",", ""))
    except ValueError as exc:
        raise UsageError(
            f"task {root.id}: budget label is not a number ({exc})",
            "use e.g. --label budget_usd=0.50 or --label budget_tokens=20000",
        ) from exc
    return Budget(usd=usd, tokens=tokens)


class Meter:
    """Builds metered providers that share state, journals and the price table."""

    def __init__(self, state: StateStore, journals: Journals, settings: LLMSettings) -> None:
        self.state = state
        self.journals = journals
        self.settings = settings
        self.prices = PriceTable(settings.prices)

    def check(self, task: Task) -> None:
        """Raise BudgetExceeded when ``task``'s tree has spent its budget."""
        root = task if task.is_root else self.state.get_task(task.root_id)
        budget = budget_for(root, self.settings)
        if budget.unlimited:
            return
        spent = Usage()
        for t in self.state.tree(task.root_id):
            spent = spent + t.usage
        overrun = budget.overrun(spent)
        if overrun is not None:
            raise BudgetExceeded(
                f"budget exceeded for task tree {task.root_id}: spent {overrun}; "
                "no further model calls",
                "submit the task again with a larger --budget; a task without a budget of "
                "its own follows llm.budget_usd / llm.budget_tokens (raise them, then "
                "`orchestra task retry`)",
            )

    def wrap(
        self, provider: LLMProvider, task: Task, *, agent: str, defer_last: bool = False
    ) -> MeteredProvider:
        return MeteredProvider(self, provider, task, agent, defer_last=defer_last)


class MeteredProvider:
    """An ``LLMProvider`` that enforces the tree budget and charges each call to a task."""

    def __init__(
        self,
        meter: Meter,
        inner: LLMProvider,
        task: Task,
        agent: str,
        *,
        defer_last: bool = False,
    ) -> None:
        self.meter = meter
        self.inner = inner
        self.task = task
        self.agent = agent
        self.name = inner.name
        self.defer_last = defer_last
        self._uncharged: Usage | None = None
        self._unwritten: dict[str, object] | None = None  # its metrics line, written with it

    @property
    def uncharged(self) -> Usage | None:
        """The deferred charge (the last call's usage), not yet added to the task."""
        return self._uncharged

    def take_uncharged(self) -> Usage | None:
        """The deferred charge, for the caller to add in its own transition (or
        once it has); the call's metrics line is written now."""
        usage, self._uncharged = self._uncharged, None
        line, self._unwritten = self._unwritten, None
        if line is not None:
            try:
                self.meter.journals.metrics.write(line)
            except OSError as exc:  # the charge still goes with the caller's write
                log.warning("task %s: could not write a call's metrics line: %s", self.task.id, exc)
        return usage

    def complete(self, request: LLMRequest) -> LLMResponse:
        earlier = self.take_uncharged()
        if earlier is not None:  # an earlier call counts before this call's budget check
            self.meter.state.add_usage(self.task.id, earlier)
        self.meter.check(self.task)
        started = time.monotonic()
        response = self.inner.complete(request)
        response.usage = self.meter.prices.charge(response.model, response.usage)
        line = {
            "time": iso(now()),  # when the call ended, whenever the line is written
            "kind": "llm_call",
            "task_id": self.task.id,
            "root_id": self.task.root_id,
            "agent": self.agent,
            "role": request.role,
            "purpose": request.purpose,
            "provider": response.provider,
            "model": response.model,
            "stop_reason": response.stop_reason,
            "duration_s": round(time.monotonic() - started, 4),
            **response.usage.model_dump(),
        }
        if self.defer_last:  # charged, and on record, with the caller's next write
            self._uncharged, self._unwritten = response.usage, line
        else:  # charged and on record now, whatever happens to the task
            self.meter.state.add_usage(self.task.id, response.usage)
            self.meter.journals.metrics.write(line)
        return response
