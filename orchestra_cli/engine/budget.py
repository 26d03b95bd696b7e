"""Per-task-tree budgets and per-call metering.

Every model call made for a task goes through a ``MeteredProvider``. For a
tree with a budget it first *reserves* the call's worst case in the state
store's budget ledger (``state/ledger.py``): the input the provider counts
(``count_tokens``: the API's free count, or an upper bound) plus ``max_tokens``
of output at the model's dearest rates — atomically, so agents on many
machines can never together spend more than the budget — with ``max_tokens``
lowered to what is left. A call that cannot be granted one output token is
refused with ``BudgetExceeded`` and no request leaves the process. After the
call the hold is settled with what the call really used (a cancelled stream
included). Each call is priced, added to the task in state at once (so a
failed attempt's spend still counts) and written as one ``metrics.jsonl``
line. An agent defers the charge of its last call (``defer_last``) to the
transition that records the result, one state write instead of two, and
the call's line until then; any other outcome charges it on its own.

The budget is ``llm.budget_usd`` / ``llm.budget_tokens`` from the settings,
overridden per tree by the root task's labels ``budget_usd`` /
``budget_tokens`` (``orchestra task submit --label budget_usd=0.50``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace

from orchestra_cli import metrics, tracing
from orchestra_cli.blocking import STEPS
from orchestra_cli.errors import (
    BudgetExceeded,
    LLMError,
    OrchestraError,
    TaskCancelled,
    UsageError,
)
from orchestra_cli.llm.base import LLMProvider, LLMRequest, LLMResponse
from orchestra_cli.llm.pricing import PriceTable
from orchestra_cli.logs import Journals
from orchestra_cli.models import Task, Usage
from orchestra_cli.settings import LLMSettings
from orchestra_cli.state.base import StateStore
from orchestra_cli.state.ledger import Ask, Ledger, Limits
from orchestra_cli.util import iso, new_id, now

log = logging.getLogger(__name__)

LABEL_USD = "budget_usd"
LABEL_TOKENS = "budget_tokens"
HOLD_MARGIN_SECONDS = 60.0  # a hold outlives the longest its call can run by this
COUNT_MARGIN, COUNT_SLACK_TOKENS = 0.02, 8  # on top of count_tokens, which estimates


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
            api_hint='send e.g. "budget": {"usd": 0.5} or {"tokens": 20000}',
        ) from exc
    return Budget(usd=usd, tokens=tokens)


@dataclass(frozen=True)
class Hold:
    """A call's reservation in its tree's ledger, settled once the call is over."""

    root_id: str
    hold_id: str


class Meter:
    """Builds metered providers that share state, journals and the price table."""

    def __init__(self, state: StateStore, journals: Journals, settings: LLMSettings) -> None:
        self.state = state
        self.journals = journals
        self.settings = settings
        self.prices = PriceTable(settings.prices)

    def budget(self, task: Task) -> Budget:
        root = task if task.is_root else self.state.get_task(task.root_id)
        return budget_for(root, self.settings)

    def reserve(
        self, task: Task, request: LLMRequest, provider: LLMProvider
    ) -> tuple[LLMRequest, Hold | None]:
        """Hold ``request``'s worst case in the tree's ledger (or raise BudgetExceeded);
        the request comes back with ``max_tokens`` lowered to what the budget has left."""
        budget = self.budget(task)
        if budget.unlimited:
            return request, None
        ask = self._ask(request, provider, budget)
        hold = Hold(task.root_id, new_id())
        ttl = max(self.settings.timeout * (self.settings.max_retries + 1), task.timeout)
        ledger = self.state.reserve_budget(
            hold.root_id,
            hold.hold_id,
            ask,
            Limits(tokens=budget.tokens, usd=budget.usd),
            ttl=ttl + HOLD_MARGIN_SECONDS,
        )
        if ledger.granted < 1:
            raise BudgetExceeded(
                f"budget exceeded for task tree {task.root_id}: "
                f"{_exhausted(budget, ledger, ask)}; no further model calls",
                "submit the task again with a larger --budget; a task without a budget of "
                "its own follows llm.budget_usd / llm.budget_tokens (raise them, then "
                "`orchestra task retry`)",
            )
        if ledger.granted < request.max_tokens:
            log.info(
                "task %s: max_tokens %d lowered to %d, what the tree's budget has left",
                task.id,
                request.max_tokens,
                ledger.granted,
            )
            request = replace(request, max_tokens=ledger.granted)
        return request, hold

    def _ask(self, request: LLMRequest, provider: LLMProvider, budget: Budget) -> Ask:
        model = request.model if provider.name != "offline" else f"offline/{request.model}"
        try:
            in_price, out_price = self.prices.rates(model)
        except KeyError:
            if budget.usd is not None:
                error = LLMError(
                    f"model {model} has no price, so a USD budget cannot be kept",
                    "add the model to llm.prices, or give the tree a token budget",
                )
                error.retryable = False
                raise error from None
            in_price = out_price = 0.0
        # the API's count is an estimate ("may differ by a small amount"): reserve a margin
        counted = provider.count_tokens(request)
        margin = math.ceil(counted * COUNT_MARGIN) + COUNT_SLACK_TOKENS
        return Ask(counted + margin, request.max_tokens, in_price, out_price)

    def record(self, line: dict[str, object], also: dict[str, object] | None = None) -> None:
        """A call's ``metrics.jsonl`` line (and ``also``'s, in the same append), and its
        Prometheus counters."""
        if also is None:
            self.journals.metrics.write(line)
        else:
            self.journals.metrics.write_many([line, also])
        metrics.llm_call(line)

    def settle(self, hold: Hold | None, usage: Usage | None) -> None:
        """Release ``hold``, adding what the call used (nothing: it billed nothing)."""
        if hold is None:
            return
        used = usage or Usage()
        try:
            self.state.settle_budget(hold.root_id, hold.hold_id, tokens_of(used), used.cost_usd)
        except OrchestraError as exc:  # the hold expires; say so, the outcome stands
            log.warning("tree %s: could not settle a budget hold: %s", hold.root_id, exc)

    def wrap(
        self, provider: LLMProvider, task: Task, *, agent: str, defer_last: bool = False
    ) -> MeteredProvider:
        return MeteredProvider(self, provider, task, agent, defer_last=defer_last)


def _exhausted(budget: Budget, ledger: Ledger, ask: Ask) -> str:
    """Why a reservation was refused, in the budget's own unit."""
    held = ledger.held_tokens
    note = f" (+{held:,} held by calls in flight)" if held else ""
    if budget.tokens is not None and (
        ledger.spent_tokens + held + ask.input + 1 > budget.tokens or budget.usd is None
    ):
        spent = f"spent {ledger.spent_tokens:,} of {budget.tokens:,} budgeted tokens{note}"
        return f"{spent}; this call needs {ask.input:,} input tokens and at least 1 output"
    usd = budget.usd or 0.0
    held_usd = f" (+${ledger.held_usd:.4f} held by calls in flight)" if ledger.held_usd else ""
    return f"spent ${ledger.spent_usd:.4f} of the ${usd:.4f} budget{held_usd}"


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
        try:
            self._unbudgeted = task.is_root and budget_for(task, meter.settings).unlimited
        except OrchestraError:  # a bad budget label: the call's reserve raises it, and the
            self._unbudgeted = False  # task fails with it there, not here in its set-up

    @property
    def uncharged(self) -> Usage | None:
        """The deferred charge (the last call's usage), not yet added to the task."""
        return self._uncharged

    def take_uncharged(self, also: dict[str, object] | None = None) -> Usage | None:
        """The deferred charge, for the caller to add in its own transition (or
        once it has); the call's metrics line is written now, with ``also`` (the
        caller's own line, e.g. the task's) in the same append."""
        usage, self._uncharged = self._uncharged, None
        line, self._unwritten = self._unwritten, None
        try:
            if line is not None:
                self.meter.record(line, also)
            elif also is not None:
                self.meter.journals.metrics.write(also)
        except OSError as exc:  # the charge still goes with the caller's write
            log.warning("task %s: could not write a metrics line: %s", self.task.id, exc)
        return usage

    def count_tokens(self, request: LLMRequest) -> int:
        return self.inner.count_tokens(request)

    @tracing.traced(tracing.model_span, tracing.model_answered, kind="CLIENT")
    def complete(self, request: LLMRequest) -> LLMResponse:
        request, hold, started = self._before(request)
        try:
            response = self.inner.complete(request)
        except BaseException as exc:
            self._failed(request, hold, started, exc)
            raise
        return self._answered(request, hold, started, response)

    @tracing.traced_async(tracing.model_span, tracing.model_answered, kind="CLIENT")
    async def acomplete(self, request: LLMRequest) -> LLMResponse:
        """``complete`` as a coroutine: the inner provider's ``acomplete`` on the loop, the
        ledger's reads and writes (they block) on the process's ``blocking.STEPS``."""
        # a root task with no budget and nothing left to charge needs no ledger: no
        # blocking step, so no hand-over to a thread (each costs ~0.1-0.3 ms of CPU)
        plain = self._unbudgeted and self._uncharged is None
        if plain:
            request, hold, started = self._before(request)
        else:
            request, hold, started = await STEPS.run(self._before, request)
        try:
            response = await self.inner.acomplete(request)  # type: ignore[attr-defined]
        except BaseException as exc:
            await STEPS.run(self._failed, request, hold, started, exc)
            raise
        if hold is None and self.defer_last:  # settled and charged by the caller's write
            return self._answered(request, hold, started, response)
        return await STEPS.run(self._answered, request, hold, started, response)

    def _before(self, request: LLMRequest) -> tuple[LLMRequest, Hold | None, float]:
        earlier = self.take_uncharged()
        if earlier is not None:  # an earlier call counts before this call's reservation
            self.meter.state.add_usage(self.task.id, earlier)
        request, hold = self.meter.reserve(self.task, request, self.inner)
        return request, hold, time.monotonic()

    def _failed(
        self, request: LLMRequest, hold: Hold | None, started: float, exc: BaseException
    ) -> None:
        if not isinstance(exc, TaskCancelled | LLMError):
            self.meter.settle(hold, None)  # a failed request is not billed
            return
        used = exc.usage if isinstance(exc.usage, Usage) else None
        if used is not None:  # a stream stopped mid-answer: charge it
            used = self.meter.prices.charge(request.model, used)
            stop = "cancelled" if isinstance(exc, TaskCancelled) else "broken"
            line = self._line(request, used, request.model, stop, started)
            self.meter.state.add_usage(self.task.id, used)
            self.meter.record(line)
        self.meter.settle(hold, used)

    def _answered(
        self, request: LLMRequest, hold: Hold | None, started: float, response: LLMResponse
    ) -> LLMResponse:
        response.usage = self.meter.prices.charge(response.model, response.usage)
        self.meter.settle(hold, response.usage)
        line = self._line(request, response.usage, response.model, response.stop_reason, started)
        if self.defer_last:  # charged, and on record, with the caller's next write
            self._uncharged, self._unwritten = response.usage, line
        else:  # charged and on record now, whatever happens to the task
            self.meter.state.add_usage(self.task.id, response.usage)
            self.meter.record(line)
        return response

    def _line(
        self, request: LLMRequest, usage: Usage, model: str, stop: str, started: float
    ) -> dict[str, object]:
        return {
            "time": iso(now()),  # when the call ended, whenever the line is written
            "kind": "llm_call",
            "task_id": self.task.id,
            "root_id": self.task.root_id,
            "agent": self.agent,
            "role": request.role,
            "purpose": request.purpose,
            "provider": self.inner.name,
            "model": model,
            "stop_reason": stop,
            "duration_s": round(time.monotonic() - started, 4),
            **usage.model_dump(),
            **({"cost_usd": None} if usage.unpriced_calls else {}),
        }
