"""The core data model: tasks, events, agents and the message envelope."""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta, field

from orchestra_cli import tracing
from orchestra_cli.records import Record
from orchestra_cli.status import Status
from orchestra_cli.util import new_id, now

ENVELOPE_VERSION = 1
MAX_PRIORITY = 9
DEFAULT_PRIORITY = 5


class Usage(Record):
    """Token usage and cost, summed per call, task, tree and agent."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_calls: int = 0  # calls to a model without a price: their cost is unknown

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            calls=self.calls + other.calls,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            cost_usd=round(self.cost_usd + other.cost_usd, 8),
            unpriced_calls=self.unpriced_calls + other.unpriced_calls,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Task(Record, kw_only=True):
    """One unit of work; a root task may own a tree of subtasks."""

    id: str = field(default_factory=new_id)
    root_id: str = ""
    parent_id: str | None = None
    title: str
    input: str
    capability: str | None = None
    priority: Annotated[int, Meta(ge=0, le=MAX_PRIORITY)] = DEFAULT_PRIORITY
    status: Status = Status.PENDING
    attempts: int = 0
    max_attempts: int = 3
    timeout: float = 600.0
    timeout_set: bool = False  # given (--timeout): a role file's timeout does not apply
    agent: str | None = None
    result: Any = None
    error: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None
    depends_on: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    version: int = 0

    def __post_init__(self) -> None:
        if not self.root_id:
            self.root_id = self.id

    @property
    def is_root(self) -> bool:
        return self.parent_id is None

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or now()) - self.started_at


class Event(Record):
    """One entry of the event log: every transition and notable decision."""

    seq: int
    task_id: str
    root_id: str
    type: str
    time: float
    data: dict[str, Any] = field(default_factory=dict)

    def detail(self) -> str:
        """``queued -> running agent=coder-1 attempt=1``: what the event says, one line."""
        d = self.data
        if self.type == "step":
            return step_detail(d)
        parts = [f"{d['from']} -> {d['to']}"] if "from" in d and "to" in d else []
        for key in ("agent", "attempt", "capability", "reason", "error", "why", "retry_in"):
            if d.get(key) not in (None, "", 0):
                parts.append(f"{key}={d[key]}")
        return " ".join(map(str, parts))


def step_detail(d: dict[str, Any]) -> str:
    """A ``step`` event in one line: ``turn 2/40 tool_use → Bash`` or ``Bash: ls -la``."""
    kind = d.get("kind")
    if kind == "model":
        tools = ", ".join(c.get("name", "?") for c in d.get("tool_calls") or [])
        turn = f"turn {d.get('turn')}/{d.get('max_turns')}" if d.get("turn") else "turn"
        return f"{turn} {d.get('stop_reason')}" + (f" → {tools}" if tools else "")
    if kind == "tool_start":
        return f"{d.get('tool')}: {d.get('input', '')}"
    if kind == "tool_result":
        return f"{d.get('tool')} {'error' if d.get('is_error') else 'ok'}"
    if kind == "prompt":
        return f"prompt; tools: {', '.join(d.get('tools') or []) or '-'}"
    return str(kind)


class AgentRecord(Record):
    """An agent in the live registry."""

    name: str
    role: str
    capabilities: list[str]
    status: str = "init"  # init → starting → running → draining → stopped
    concurrency: int = 1
    load: int = 0
    processed: int = 0
    failed: int = 0
    host: str = ""
    pid: int = 0
    version: str = ""
    started_at: float = field(default_factory=now)
    heartbeat_at: float = field(default_factory=now)
    stop_requested: bool = False
    current: list[str] = field(default_factory=list)
    applied: dict[str, str] = field(default_factory=dict)  # setting -> "value (source)"
    usage: Usage = field(default_factory=Usage)  # every model call this agent made

    def is_alive(self, ttl: float, at: float | None = None) -> bool:
        """Heartbeat fresher than ``ttl`` and not stopped."""
        return self.status != "stopped" and ((at or now()) - self.heartbeat_at) <= ttl


class Envelope(Record, kw_only=True, forbid_unknown_fields=True):
    """The versioned JSON envelope of every queued message."""

    v: int = ENVELOPE_VERSION
    id: str = field(default_factory=new_id)
    type: str
    task_id: str
    attempt: int = 0
    time: float = field(default_factory=now)
    payload: dict[str, Any] = field(default_factory=dict)
    trace: dict[str, str] | None = None  # W3C trace context (tracing.py); last: see encode

    def __post_init__(self) -> None:
        # A new message carries its sender's span. msgspec runs this for a decoded one
        # too: one that came without a context gets the receiver's current one, which
        # is none outside a span (and always none with tracing off), so it is handled
        # in the context it would have had anyway.
        if self.trace is None:
            self.trace = tracing.carrier(origin=self.type == MSG_RESULT)

    def encode(self) -> bytes:
        text = self.model_dump_json()
        if self.trace is None and text.endswith(_NO_TRACE):
            text = text[: -len(_NO_TRACE)] + "}"  # untraced: the envelope older agents read
        return text.encode()


_NO_TRACE = ',"trace":null}'


# message types
MSG_SUBMIT = "task.submit"  # intake: a new task to plan and route
MSG_RUN = "task.run"  # work.<capability>: a task for an agent
MSG_RESULT = "task.result"  # results: an agent finished (or gave up on) a task
MESSAGE_TYPES = frozenset({MSG_SUBMIT, MSG_RUN, MSG_RESULT})

# queue names
Q_INTAKE = "intake"
Q_RESULTS = "results"
Q_DEAD = "dead"


def work_queue(capability: str) -> str:
    return f"work.{capability}"
