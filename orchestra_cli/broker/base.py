"""The Broker protocol: at-least-once queues with manual acks.

A consumer hands out ``Delivery`` objects; the receiver acks only after the
state change it caused is committed. Bodies that are not a valid envelope
never reach the receiver: the consumer dead-letters them and keeps going.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol

from orchestra_cli.errors import MalformedMessage
from orchestra_cli.models import (
    ENVELOPE_VERSION,
    MESSAGE_TYPES,
    MSG_RUN,
    MSG_SUBMIT,
    Q_INTAKE,
    Envelope,
    Task,
    work_queue,
)
from orchestra_cli.records import RecordError


def decode_envelope(body: bytes) -> Envelope:
    """Parse and validate a message body; MalformedMessage with the reason otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage("message body is not UTF-8") from None
    try:
        env = Envelope.model_validate_json(text)
        if "\\u" in text:  # an escape may hold a lone surrogate, which cannot be sent on
            env.encode()
    except RecordError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise MalformedMessage(f"invalid envelope: {where}: {first['msg']}") from None
    except Exception as exc:  # whatever else a body can do, it is not a message to handle
        raise MalformedMessage(f"invalid envelope: {type(exc).__name__}: {exc}") from None
    if env.v != ENVELOPE_VERSION:
        raise MalformedMessage(f"unsupported envelope version {env.v}")
    if env.type not in MESSAGE_TYPES:
        raise MalformedMessage(f"unknown message type {env.type!r}")
    return env


MAX_LETTER_BODY_SHOWN = 2000  # characters of a dead letter's body that `dlq list` carries


def describe_letter(body: bytes) -> dict[str, Any]:
    """What `dlq list` shows of a dead letter's body: its task (when the body names
    one), its size, the body's start, why it cannot be decoded (None when it can), and
    the task's submission when the message carries it.

    Never raises: a letter is dead because something was wrong with it.
    """
    task_id: str | None = None
    problem: str | None = None
    spec: dict[str, Any] | None = None
    try:
        env = decode_envelope(body)
        task_id = env.task_id or None
        found = env.payload.get("task")
        spec = found if isinstance(found, dict) and found.get("id") == task_id else None
    except MalformedMessage as exc:
        problem = exc.message
        task_id = _named_task(body)
    return {
        "task_id": task_id,
        "size": len(body),
        "undecodable": problem,
        "body": body.decode("utf-8", "replace")[:MAX_LETTER_BODY_SHOWN],
        "spec": spec,  # the submission a root task's messages carry (`dlq resubmit`)
    }


def _named_task(body: bytes) -> str | None:
    """The ``task_id`` of a body that is JSON but not a valid envelope, if it is usable."""
    import json

    try:
        doc = json.loads(body)
        task_id = doc.get("task_id") if isinstance(doc, dict) else None
        if isinstance(task_id, str) and 0 < len(task_id) <= 100:
            task_id.encode("utf-8")  # a lone surrogate cannot be looked up (or printed)
            return task_id
    except (ValueError, RecursionError, UnicodeError):
        pass
    return None


MAX_CONTROL_BYTES = 1 << 20


def parse_control(body: bytes | str) -> dict[str, Any] | None:
    """A control message (cancel / stop / ping) as agents read it, or None when it is not
    one: anyone who can publish to the control exchange may send anything, and a hint
    that cannot be read is dropped (the state store stays authoritative)."""
    import json

    if len(body) > MAX_CONTROL_BYTES:
        return None
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return None
    if not isinstance(message.get("agent", ""), str | None):
        return None
    task_ids = message.get("task_ids", [])
    if not isinstance(task_ids, list) or not all(isinstance(t, str) for t in task_ids):
        return None
    return message


class Delivery(Protocol):
    """One received message; settle it exactly once with ack, nack or dead_letter."""

    envelope: Envelope
    queue: str
    delivery_count: int  # 1 on first delivery

    def ack(self) -> None: ...

    def nack(self, *, delay: float = 0.0) -> None:
        """Give the message back to its queue, visible again after ``delay`` seconds."""
        ...

    def defer(self, *, delay: float) -> None:
        """Put the message back for later without counting this delivery.

        For a message that is fine but cannot be handled yet (its task is
        running on another live agent): deferring never makes it poison.
        """
        ...

    def dead_letter(self, reason: str) -> None: ...


class Consumer(Protocol):
    """Receives from one or more queues with at most ``prefetch`` unsettled messages."""

    def get(self, timeout: float) -> Delivery | None:
        """The next message, or None after ``timeout``; several threads may call it at once."""
        ...

    def close(self) -> None: ...


class ControlConsumer(Protocol):
    """Receives broadcast control messages (cancel / stop / ping) published after it opened."""

    def get(self, timeout: float) -> dict[str, Any] | None: ...

    def close(self) -> None: ...


class Broker(Protocol):
    """Publishes and consumes envelopes on named queues."""

    url: str

    def publish(
        self,
        queue: str,
        envelope: Envelope,
        *,
        priority: int = 0,
        delay: float = 0.0,
        confirm: bool = True,
        awaited: bool = False,
    ) -> None:
        """Durable once it returns; with ``confirm=False`` a broker may confirm it
        later, in a window with others (``flush`` waits for that). ``awaited``: the
        caller waits for the task's end, which says more than a confirm: sent at
        once, without one (a message the broker loses, its task still queued in
        state, is sent again by the recovery sweep)."""
        ...

    def flush(self, timeout: float | None = None, *, reconnect: bool = True) -> None:
        """Wait until everything published so far is durable (at most ``timeout``
        seconds, if given; the broker's publish timeout otherwise). Without
        ``reconnect``, a connection that is down is left for later (nothing waits)."""
        ...

    def connect(self) -> None:
        """Open the publishing connection now: BrokerUnavailable before a caller
        stores something whose message it could not then send."""
        ...

    def publish_raw(self, queue: str, body: bytes) -> None:
        """Put arbitrary bytes on a queue (tests and tools; bypasses validation)."""
        ...

    def dead_letter(self, origin: str, envelope: Envelope, reason: str) -> None:
        """Put an envelope straight on the dead-letter queue (exhausted retries)."""
        ...

    def publish_control(self, message: dict[str, Any]) -> None:
        """Broadcast a control message to every agent (a hint; state stays authoritative)."""
        ...

    def control_consumer(self, name: str) -> ControlConsumer: ...

    def consumer(self, queues: list[str], *, prefetch: int, name: str) -> Consumer: ...

    def health(self, queues: list[str] | None = None) -> dict[str, Any]:
        """``{"ok", "url", "latency_ms", "queues": {name: {"messages", "consumers"}}}``

        or ``{"ok": False, "url", "error"}``; ``queues`` names extra queues to inspect.
        """
        ...

    def depths(self) -> dict[str, int]:
        """Messages per queue (ready + unacked)."""
        ...

    def dead_letters(self, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first: ``id``, ``queue`` (origin), ``reason``, ``deliveries`` (None when
        unknown), ``enqueued_at``, ``headers`` and ``describe_letter``'s fields of the body."""
        ...

    def remove_dead_letters(self, ids: Collection[str]) -> int:
        """Delete the dead letters with these ids (as ``dead_letters`` gives them), leaving
        the others where they are; how many went."""
        ...

    def purge(self, queue: str) -> int: ...

    def close(self) -> None: ...


# What a root task's messages carry of it, so a message whose task the state store
# lost (a Redis without persistence, restarted) can be submitted again (`dlq resubmit`).
SPEC_FIELDS = (
    "id",
    "title",
    "input",
    "capability",
    "priority",
    "timeout",
    "timeout_set",
    "max_attempts",
    "labels",
    "idempotency_key",
)


def task_spec(task: Task) -> dict[str, Any]:
    """The submission of a root task (``payload["task"]`` of its messages); {} for a subtask,
    which its root's resubmission plans again."""
    if not task.is_root:
        return {}
    return {"task": {name: getattr(task, name) for name in SPEC_FIELDS}}


def publish_run(
    broker: Broker, task: Task, *, delay: float = 0.0, confirm: bool = True, awaited: bool = False
) -> None:
    """Put ``task`` on its capability's work queue for its next attempt."""
    broker.publish(
        work_queue(task.capability or ""),
        Envelope(type=MSG_RUN, task_id=task.id, attempt=task.attempts + 1, payload=task_spec(task)),
        priority=task.priority,
        delay=delay,
        confirm=confirm,
        awaited=awaited,
    )


def publish_submit(
    broker: Broker, task: Task, *, confirm: bool = True, awaited: bool = False
) -> None:
    """Hand ``task`` to the orchestrator (intake) to plan and route."""
    broker.publish(
        Q_INTAKE,
        Envelope(type=MSG_SUBMIT, task_id=task.id, payload=task_spec(task)),
        priority=task.priority,
        confirm=confirm,
        awaited=awaited,
    )
