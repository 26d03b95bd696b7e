"""Prometheus metrics: ``/metrics`` on the API, ``--metrics-port`` on run and agents.

Nothing here imports ``prometheus_client`` until a process asks for metrics
(``enable``): the hooks the engine calls (``llm_call``, ``tool_call``,
``recovered``) are a dict lookup and a return in every other process, the
one-shot CLI commands included.

Two kinds of metrics, by where the truth is:

- **this process's own work**, counted as it happens: model calls, tokens
  and cost by model and role; tool calls by tool and outcome; recovery
  sweep actions. Every process that does the work exports them (scrape each
  agent where it runs, as Prometheus expects).
- **the deployment's state**, read at scrape time by the processes started
  with ``state=True`` (the orchestrator and the API): tasks by status and
  capability, queue depths and dead letters, agents by role and state, each
  agent's tasks in hand and slots, items waiting for a person — and the task
  lifecycle counters and histograms (transitions, outcomes, duration, queue
  wait), counted from the shared event log from the moment the process
  started, so they cover every agent's tasks whichever machine ran them.

Labels are of low cardinality: never a task id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

    from orchestra_cli.backends import Backends

log = logging.getLogger(__name__)

PREFIX = "orchestra"
TOKEN_KINDS = ("input", "output", "cache_read", "cache_write")
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
OPEN_SCAN_LIMIT = 10_000  # open tasks read per scrape for the by-capability breakdown
EVENTS_PER_READ = 1000
INBOX_KINDS = ("approval", "plan", "pause")  # what waits for a person

_m: dict[str, Any] = {}  # the metric objects once enabled; empty: every hook is a no-op
_lock = threading.Lock()


def enabled() -> bool:
    return bool(_m)


def enable(backends: Backends | None = None, *, state: bool = False) -> CollectorRegistry:
    """Create this process's registry (once); ``state``: also export the deployment's."""
    from prometheus_client import CollectorRegistry, disable_created_metrics

    with _lock:
        if not _m:
            # no *_created series: half the text, and no use in PromQL
            disable_created_metrics()  # type: ignore[no-untyped-call]
            _m.update(_process_metrics(CollectorRegistry()))
        registry: CollectorRegistry = _m["registry"]
        if state and backends is not None:
            collector = _m.get("state")
            if collector is None:
                # registered before the lifecycle counters: a scrape reads the event log first
                collector = _m["state"] = StateCollector(backends)
                registry.register(collector)
                collector.lifecycle = _lifecycle(registry)
            else:  # a second API app in one process (tests): the newest backends
                collector.rebind(backends)
        return registry


def _process_metrics(registry: CollectorRegistry) -> dict[str, Any]:
    from prometheus_client import Counter, Histogram

    by = ["model", "role"]
    return dict(
        registry=registry,
        llm_calls=Counter(f"{PREFIX}_llm_calls", "Model calls.", by, registry=registry),
        llm_tokens=Counter(
            f"{PREFIX}_llm_tokens",
            "Tokens billed, by kind (input, output, cache_read, cache_write).",
            [*by, "kind"],
            registry=registry,
        ),
        llm_cost=Counter(
            f"{PREFIX}_llm_cost_usd", "Model spend in US dollars.", by, registry=registry
        ),
        llm_seconds=Histogram(
            f"{PREFIX}_llm_call_duration_seconds",
            "Model call duration.",
            by,
            buckets=DURATION_BUCKETS,
            registry=registry,
        ),
        tool_calls=Counter(
            f"{PREFIX}_tool_calls",
            "Tool calls by tool and outcome (ok, error).",
            ["tool", "outcome"],
            registry=registry,
        ),
        tool_seconds=Histogram(
            f"{PREFIX}_tool_call_duration_seconds",
            "Tool call duration.",
            ["tool"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        ),
        recovery=Counter(
            f"{PREFIX}_recovery_actions",
            "Recovery sweep actions (requeue, republish, resubmit, reaggregate) by result.",
            ["action", "result"],
            registry=registry,
        ),
    )


def disable() -> None:
    """Forget the registry (tests; a process enables it once)."""
    with _lock:
        _m.clear()


def _lifecycle(registry: CollectorRegistry) -> dict[str, Any]:
    from prometheus_client import Counter, Histogram

    return {
        "transitions": Counter(
            f"{PREFIX}_task_transitions",
            "Task status transitions (from the event log).",
            ["from_status", "to_status"],
            registry=registry,
        ),
        "outcomes": Counter(
            f"{PREFIX}_task_outcomes",
            "Tasks that ended, by capability and outcome.",
            ["capability", "outcome"],
            registry=registry,
        ),
        "duration": Histogram(
            f"{PREFIX}_task_duration_seconds",
            "Started → ended, for tasks that ended.",
            ["capability", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        ),
        "queue_wait": Histogram(
            f"{PREFIX}_task_queue_wait_seconds",
            "Queued → claimed by an agent.",
            ["capability"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        ),
    }


# -- hooks the engine calls -------------------------------------------------------------
def llm_call(line: dict[str, Any]) -> None:
    """One model call, as its ``metrics.jsonl`` line (engine/budget.py)."""
    if not _m:
        return
    labels = (str(line.get("model") or "-"), str(line.get("role") or "-"))
    _m["llm_calls"].labels(*labels).inc()
    for kind in TOKEN_KINDS:
        n = int(line.get(f"{kind}_tokens") or 0)
        if n:
            _m["llm_tokens"].labels(*labels, kind).inc(n)
    _m["llm_cost"].labels(*labels).inc(float(line.get("cost_usd") or 0.0))
    _m["llm_seconds"].labels(*labels).observe(float(line.get("duration_s") or 0.0))


def tool_call(tool: str, is_error: bool, seconds: float) -> None:
    """One tool call's outcome (tools/toolbox.py)."""
    if not _m:
        return
    _m["tool_calls"].labels(tool, "error" if is_error else "ok").inc()
    _m["tool_seconds"].labels(tool).observe(seconds)


def recovered(findings: Iterable[Any]) -> None:
    """A recovery sweep's findings (engine/recovery.py): done or skipped, by action."""
    if not _m:
        return
    for f in findings:
        _m["recovery"].labels(f.action, "done" if f.done else "skipped").inc()


# -- serving -----------------------------------------------------------------------------
def exposition() -> tuple[bytes, str]:
    """The registry in the Prometheus text format, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(_m["registry"]), CONTENT_TYPE_LATEST


def serve(port: int, host: str = "127.0.0.1") -> Any:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread; returns the server."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=_m["registry"])
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server


class StateCollector:
    """Gauges read from state and broker at scrape time, and the lifecycle counters
    brought up to date from the event log."""

    def __init__(self, backends: Backends) -> None:
        self.b = backends
        self.lifecycle: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._seq = self._last_seq()

    def rebind(self, backends: Backends) -> None:
        with self._lock:
            self.b = backends
            self._seq = self._last_seq()

    def describe(self) -> list[Metric]:
        return []  # no fixed names: nothing collected at registration

    def _last_seq(self) -> int:
        """The log's last sequence number, in O(log n) reads (sequences only grow)."""
        try:
            return _last(lambda seq: bool(self.b.state.events(after=seq, limit=1)))
        except Exception:  # the store is down now; count from whatever comes first
            return 0

    def collect(self) -> Iterator[Metric]:
        try:
            self._follow_events()
            yield from self._gauges()
        except Exception as exc:  # a scrape must answer; the up metric tells the rest
            log.warning("metrics: could not read state: %s", exc)
            yield _gauge("state_up", "1 when the state store answered this scrape.", value=0)
            return
        yield _gauge("state_up", "1 when the state store answered this scrape.", value=1)

    def _follow_events(self) -> None:
        from orchestra_cli.status import TERMINAL, Status

        with self._lock:
            while batch := self.b.state.events(after=self._seq, limit=EVENTS_PER_READ):
                self._seq = batch[-1].seq
                moves = [e for e in batch if "from" in e.data and "to" in e.data]
                wanted = {e.task_id for e in moves if e.data["to"] in (*TERMINAL, Status.RUNNING)}
                tasks = self.b.state.get_tasks(wanted) if wanted else {}
                for e in moves:
                    self._count(e.data["from"], e.data["to"], tasks.get(e.task_id), e.time)

    def _count(self, src: str, dst: str, task: Any, at: float) -> None:
        from orchestra_cli.status import TERMINAL, Status

        lc = self.lifecycle
        lc["transitions"].labels(src, dst).inc()
        if task is None:
            return
        capability = task.capability or "-"
        if dst in TERMINAL:
            lc["outcomes"].labels(capability, dst).inc()
            if task.started_at is not None and src != Status.PENDING:
                lc["duration"].labels(capability, dst).observe(max(0.0, at - task.started_at))
        elif dst == Status.RUNNING and task.queued_at is not None and src == Status.QUEUED:
            lc["queue_wait"].labels(capability).observe(max(0.0, at - task.queued_at))

    def _gauges(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        from orchestra_cli.status import TERMINAL

        counts = self.b.state.status_counts()
        yield _gauge("tasks", "Tasks by status (all stored tasks).", ["status"], counts)
        open_statuses = [s for s in counts if s not in TERMINAL]
        by_cap: dict[tuple[str, str], int] = {}
        if open_statuses:
            for t in self.b.state.list_tasks(status=open_statuses, limit=OPEN_SCAN_LIMIT):
                key = (t.status.value, t.capability or "-")
                by_cap[key] = by_cap.get(key, 0) + 1
        yield _gauge(
            "open_tasks",
            "Unfinished tasks by status and capability.",
            ["status", "capability"],
            by_cap,
        )
        yield _gauge(
            "waiting_for_person",
            "Items waiting for a person (`orchestra inbox`): approval, plan, pause.",
            ["kind"],
            self._inbox(),
        )
        depths = self.b.broker.depths()
        yield _gauge("queue_messages", "Messages per queue (ready + unacked).", ["queue"], depths)
        yield _gauge(
            "dead_letters", "Messages on the dead-letter queue.", value=depths.get("dead", 0)
        )
        yield from self._agents(GaugeMetricFamily)

    def _inbox(self) -> dict[str, int]:
        from orchestra_cli.engine.approvals import inbox

        kinds = dict.fromkeys(INBOX_KINDS, 0)
        for item in inbox(self.b.state):
            kind = item.tool if item.tool in ("plan", "pause") else "approval"
            kinds[kind] += 1
        return kinds

    def _agents(self, family: Any) -> Iterator[Metric]:
        from orchestra_cli.util import now

        ttl = self.b.settings.agents.ttl_seconds
        at = now()
        states: dict[tuple[str, str], int] = {}
        inflight = family(
            f"{PREFIX}_agent_inflight_tasks",
            "Tasks in hand per live agent.",
            labels=["agent", "role"],
        )
        slots = family(
            f"{PREFIX}_agent_slots",
            "Task slots (concurrency) per live agent.",
            labels=["agent", "role"],
        )
        for a in self.b.state.list_agents():
            alive = a.is_alive(ttl, at)
            state = a.status if alive or a.status == "stopped" else "dead"
            states[(a.role, state)] = states.get((a.role, state), 0) + 1
            if alive:
                inflight.add_metric([a.name, a.role], a.load)
                slots.add_metric([a.name, a.role], a.concurrency)
        yield _gauge(
            "agents", "Agents in the registry by role and state.", ["role", "state"], states
        )
        yield inflight
        yield slots


def _last(after: Callable[[int], bool]) -> int:
    """The largest sequence number, where ``after(n)`` says whether one is above ``n``."""
    if not after(0):
        return 0
    lo, hi = 0, 1  # some above lo; find an hi with none above it
    while after(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if after(mid) else (lo, mid)
    return hi


def _gauge(
    name: str,
    doc: str,
    labels: list[str] | None = None,
    values: dict[Any, int] | None = None,
    *,
    value: float | None = None,
) -> Metric:
    from prometheus_client.core import GaugeMetricFamily

    if value is not None:
        return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)
    g = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels or [])
    for key, n in (values or {}).items():
        g.add_metric(list(key) if isinstance(key, tuple) else [str(key)], n)
    return g
