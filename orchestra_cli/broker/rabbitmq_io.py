"""How a RabbitMQ link does its I/O: the plain path (pika's public API) and the seam.

A link (``rabbitmq_link.Link``, ``rabbitmq_publisher.DirectLink``) gets an
``IOPath`` per connection: a ``Writer`` (how a handler's thread acks, and
whether a publish is written at once) and a ``Window`` (the publisher's
confirming channel). Two implement it:

- the fast path (``pika_fast``, the default): pika's internals, for speed;
- the plain path (here): only pika's documented API. A publish waits for its
  own confirm (``BlockingChannel.confirm_delivery``), nothing is coalesced,
  and an ack from a handler's thread is handed to the I/O thread through
  ``add_callback_threadsafe`` (pika's documented way). Slower, but an upgrade
  of pika cannot break it quietly. A publish waiting for its confirm is
  bounded by the connection's heartbeat and ``blocked_connection_timeout``
  rather than by its caller's timeout.

``rabbitmq.fast_path: false`` chooses the plain path; so does a pika that
lacks a private name the fast path needs (``rabbitmq_link.io_path``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pika
import pika.exceptions

from orchestra_cli.errors import BrokerError

Channel = Any  # pika.adapters.blocking_connection.BlockingChannel


@dataclass
class Outgoing:
    exchange: str
    routing_key: str
    body: bytes
    properties: pika.BasicProperties | None
    mandatory: bool


class Writer(Protocol):
    """A connection's output as a link uses it."""

    direct: bool  # publishes written at once (True) or left to coalesce (fast path only)

    def ack(self, channel: Channel, tag: int, multiple: bool = False) -> None:
        """Ack ``tag`` (with ``multiple``, every delivery up to it) on ``channel``, from
        any thread, in the order of the calls."""


class Window(Protocol):
    """The publisher's channel in confirm mode; commands get it as their channel."""

    @property
    def outstanding(self) -> int: ...
    @property
    def unwritten(self) -> int: ...
    @property
    def sent(self) -> int: ...

    def send(self, out: Outgoing) -> None: ...
    def pump(self) -> None: ...
    def wait(
        self, deadline: float, below: int = 1, *, report_returns: bool = True, batch: int = 1
    ) -> bool: ...
    def unconfirmed(self) -> list[Outgoing]: ...
    def on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None: ...


@dataclass(frozen=True)
class IOPath:
    """One way of doing a link's I/O (``rabbitmq.fast_path`` picks one)."""

    name: str
    writer: Callable[..., Writer]  # (connection, *, direct, owner=None)
    window: Callable[[Channel], Window]
    closed_reason: Callable[[Channel], BaseException]


def returned_text(method: Any, properties: Any) -> str:
    """One returned message, for the error that reports it."""
    return (
        f"{method.reply_text} for routing key {method.routing_key!r} "
        f"(message {getattr(properties, 'message_id', '?')})"
    )


class WindowBase:
    """What both windows share: the blocking channel's other methods (declare, purge,
    get…), ``basic_publish`` as ``send``, and returned messages reported once."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._returned: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.channel, name)

    def basic_publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties | None = None,
        mandatory: bool = False,
    ) -> None:
        """Publish and track the message (``send``)."""
        self.send(Outgoing(exchange, routing_key, body, properties, mandatory))

    def send(self, out: Outgoing) -> None:
        raise NotImplementedError

    def on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        """A returned message (unroutable), of this channel or the plain one beside it."""
        self._returned.append(returned_text(method, properties))

    def raise_returned(self) -> None:
        """BrokerError, once, for the messages RabbitMQ returned as unroutable so far."""
        if self._returned:
            returned, self._returned = self._returned, []
            raise BrokerError(
                f"RabbitMQ refused {len(returned)} message(s): {returned[0]} "
                "(its queue is missing; it is declared again on the next publish)"
            )


class PlainWriter:
    """Acks handed to the connection's own thread (``add_callback_threadsafe``)."""

    def __init__(self, conn: Any, *, direct: bool, owner: int | None = None) -> None:
        self._conn = conn
        self.direct = direct  # pika writes every frame when its loop runs: nothing to choose

    def ack(self, channel: Channel, tag: int, multiple: bool = False) -> None:
        # (from the I/O thread too: queued behind the acks handed over before it)
        def on_io_thread() -> None:
            if channel.is_open:  # closed since: RabbitMQ has requeued the message
                channel.basic_ack(tag, multiple)

        self._conn.add_callback_threadsafe(on_io_thread)


class PlainWindow(WindowBase):
    """A ``BlockingChannel`` in pika's own confirm mode: each publish waits for its confirm.

    The same contract as the fast path's ``ConfirmWindow``: a nacked message is
    published again, a returned one is an error the next ``wait`` raises, and
    the message being published when the connection dropped is ``unconfirmed``.
    """

    def __init__(self, channel: Channel) -> None:
        super().__init__(channel)
        channel.confirm_delivery()
        self._sent = 0
        self._inflight: Outgoing | None = None
        self._retry: list[Outgoing] = []

    @property
    def outstanding(self) -> int:
        return len(self._retry) + (self._inflight is not None)

    @property
    def unwritten(self) -> int:
        return 0  # every publish is written (and confirmed) before it returns

    @property
    def sent(self) -> int:
        return self._sent

    def send(self, out: Outgoing) -> None:
        """Publish ``out`` and wait for its confirm; a nack keeps it for ``wait``."""
        self._sent += 1
        self._inflight = out  # a drop meanwhile: the owner publishes it again
        try:
            self.channel.basic_publish(
                out.exchange,
                out.routing_key,
                out.body,
                properties=out.properties,
                mandatory=out.mandatory,
            )
        except pika.exceptions.UnroutableError as exc:
            self._returned += [returned_text(m.method, m.properties) for m in exc.messages]
        except pika.exceptions.NackError:
            self._retry.append(out)
        self._inflight = None

    def pump(self) -> None:
        """Answer heartbeats and read returns of the plain channel beside this one."""
        self.channel.connection.process_data_events(time_limit=0)
        self._resend_nacked()

    def _resend_nacked(self) -> None:
        for _ in range(len(self._retry)):
            out = self._retry[0]  # dropped from the list only once it is published again
            self._retry.pop(0)
            self.send(out)

    def wait(
        self, deadline: float, below: int = 1, *, report_returns: bool = True, batch: int = 1
    ) -> bool:
        """Publish nacked messages again until fewer than ``below`` are unconfirmed."""
        while self.outstanding >= below:
            if time.monotonic() >= deadline:
                return False
            self._resend_nacked()
        if report_returns:
            self.raise_returned()
        return True

    def unconfirmed(self) -> list[Outgoing]:
        inflight = [self._inflight] if self._inflight is not None else []
        return inflight + list(self._retry)


def _plain_closed_reason(channel: Channel) -> BaseException:
    closed: BaseException = pika.exceptions.ChannelClosed(0, "channel closed by the broker")
    return closed


PLAIN = IOPath("plain", PlainWriter, PlainWindow, _plain_closed_reason)
