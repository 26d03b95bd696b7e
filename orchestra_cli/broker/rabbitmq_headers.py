"""The AMQP headers orchestra reads, checked like a message body is.

A header is anyone's to set (another client, a shovel, an operator with the
management UI), so every value read from one is checked: a delivery count
that is not a small non-negative integer makes its message malformed
(dead-lettered with the reason) instead of an exception in the consumer's
connection thread, which stopped every consumer of that queue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestra_cli.broker.base import describe_letter
from orchestra_cli.errors import MalformedMessage

if TYPE_CHECKING:
    from orchestra_cli.broker.rabbitmq_topology import Topology

H_DELIVERIES = "x-orchestra-deliveries"
H_REASON = "x-orchestra-reason"
H_ORIGIN = "x-orchestra-origin"
H_QUORUM_COUNT = "x-delivery-count"  # quorum queues count returns themselves
MAX_HEADER_COUNT = 1_000_000  # far above any max_deliveries; a bigger count is not ours
MAX_HEADER_TEXT = 500  # a reason or origin longer than this is cut when listed


def header_count(headers: dict[str, Any], name: str) -> int:
    """A delivery-count header's value (0 when absent); MalformedMessage when it is not
    an integer from 0 to MAX_HEADER_COUNT."""
    value = headers.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedMessage(
            f"header {name} is {_shown(value)}, not a delivery count (an integer)"
        )
    if not 0 <= value <= MAX_HEADER_COUNT:
        raise MalformedMessage(f"header {name} is {value}, not from 0 to {MAX_HEADER_COUNT}")
    return value


def delivery_count(headers: Any, *, redelivered: bool) -> int:
    """How often a message has been delivered, this delivery included."""
    headers = _table(headers)
    count = header_count(headers, H_DELIVERIES) + 1
    if H_QUORUM_COUNT in headers:
        count += header_count(headers, H_QUORUM_COUNT)
    elif redelivered:
        count += 1  # the previous consumer died holding it
    return count


def dead_record(topo: Topology, method: Any, props: Any, body: bytes) -> dict[str, Any]:
    """One dead letter as `dlq list` shows it, whatever its headers hold."""
    headers = _table(props.headers)
    deaths = headers.get("x-death")
    death = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
    origin = headers.get(H_ORIGIN) or topo.logical(_text(death.get("queue", "")))
    reason = headers.get(H_REASON) or _text(death.get("reason", "dead-lettered"))
    try:
        deliveries: int | None = header_count(headers, H_DELIVERIES)
    except MalformedMessage:
        deliveries = None  # shown as unknown; the reason says why it was dead-lettered
    return {
        # a message without an id (another client's) is known by its body, which stays
        "id": _text(props.message_id) if props.message_id else _body_id(body),
        "queue": _text(origin)[:MAX_HEADER_TEXT],
        "reason": _text(reason)[:MAX_HEADER_TEXT],
        "deliveries": deliveries,
        "enqueued_at": float(props.timestamp) if isinstance(props.timestamp, int) else 0.0,
        "headers": {_text(k)[:MAX_HEADER_TEXT]: _shown_header(v) for k, v in headers.items()},
        **describe_letter(body),
    }


def _body_id(body: bytes) -> str:
    import hashlib

    return "sha1-" + hashlib.sha1(body, usedforsecurity=False).hexdigest()[:16]


def _shown_header(value: Any) -> Any:
    """A header value as `dlq show --json` can print it (JSON scalars kept, the rest text)."""
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, str | bytes):
        return _text(value)[:MAX_HEADER_TEXT]
    return _shown(value)


def republishable(headers: Any) -> dict[str, Any]:
    """The headers of a received message as they can be sent on: pika decodes values it
    cannot encode again (floats from other clients, unsigned 64-bit integers), and one
    such value made every re-publish (requeue, dead letter) fail; those become text."""
    import pika.data

    out: dict[str, Any] = {}
    for key, value in _table(headers).items():
        try:
            pika.data.encode_table([], {key: value})
        except Exception:  # UnsupportedAMQPFieldException, struct.error, …: not sendable
            value = _shown(value)
        out[key] = value
    return out


def _table(headers: Any) -> dict[str, Any]:
    return headers if isinstance(headers, dict) else {}


def _text(value: Any) -> str:
    """Header text as str: bytes decoded leniently, a lone surrogate replaced."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value).encode("utf-8", "replace").decode("utf-8")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
