"""The RabbitMQ fast path: the one module that uses pika's private internals.

pika's blocking API waits for a confirm per publish and sends each frame
when its I/O loop gets round to it; the fast path reaches under it for speed
(measured: see ``rabbitmq_publisher``'s coalescing notes):

- ``FrameWriter`` replaces a connection's frame output (``_impl``,
  ``_output_marshaled_frames``, ``_adapter_emit_data``, the plaintext
  transport's ``_sock``/``_state``) to send a message's frames in one system
  call, at once, and to let a handler's thread write its own acks;
- ``ConfirmWindow`` publishes on the async channel under the blocking one
  (``BlockingChannel._impl``) with its own confirm bookkeeping, and waits on
  the blocking channel's I/O loop (``_flush_output``, ``_IoloopTimerContext``)
  for a condition of its own;
- ``closed_reason`` reads why the broker closed a channel (``_closing_reason``).

Nothing else in orchestra touches a private name of pika (a test scans the
package for it). ``rabbitmq_io`` is the same contract through pika's public
API only; ``rabbitmq.fast_path: false`` chooses it, and so does a pika that
lacks a name listed in ``NEEDS`` (with a warning): an upgrade that removes one
makes orchestra slower, not broken, and the canary test
(``tests/unit/test_pika_fast_canary.py``) fails naming it and pika's version.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pika
import pika.adapters.base_connection
import pika.adapters.blocking_connection
import pika.adapters.utils.io_services_utils
import pika.channel
import pika.connection
import pika.exceptions

from orchestra_cli.broker.rabbitmq_io import IOPath, Outgoing, WindowBase
from orchestra_cli.errors import BrokerError

SELECT_TIMEOUT_SECONDS = 10.0
# Looked up once, without failing the import when a pika lacks them (``missing`` says so,
# and the link takes the plain path): the hot path then reads a module global.
_PLAIN_TRANSPORT: Any = getattr(
    pika.adapters.utils.io_services_utils, "_AsyncPlaintextTransport", None
)
_STATE_ACTIVE: Any = getattr(_PLAIN_TRANSPORT, "_STATE_ACTIVE", None)
_TIMER_CONTEXT: Any = getattr(pika.adapters.blocking_connection, "_IoloopTimerContext", None)


@dataclass(frozen=True)
class Need:
    """A private name the fast path relies on, where to find it, and for what."""

    where: str  # a dotted path from ``pika``, or ``<object>.<attribute>`` on a live one
    why: str
    params: int | None = None  # a method's positional parameters (self excluded)


# On classes and modules: checked once per process, before the first connection.
NEEDS = (
    Need("adapters.blocking_connection._IoloopTimerContext", "waiting for confirms", 2),
    Need("adapters.blocking_connection.BlockingChannel._flush_output", "waiting for confirms"),
    Need("adapters.blocking_connection.BlockingConnection._flush_output", "waiting for confirms"),
    Need("adapters.utils.io_services_utils._AsyncPlaintextTransport", "sending frames at once"),
    Need(
        "adapters.utils.io_services_utils._AsyncPlaintextTransport._STATE_ACTIVE",
        "sending frames at once",
    ),
    Need(
        "adapters.utils.io_services_utils._AsyncPlaintextTransport.get_write_buffer_size",
        "sending frames at once",
        0,
    ),
    Need("connection.Connection._output_marshaled_frames", "joining a message's frames", 1),
    Need("adapters.base_connection.BaseConnection._adapter_emit_data", "queueing frames", 1),
    Need("channel.Channel.confirm_delivery", "confirm bookkeeping", 2),
    Need("channel.Channel.basic_publish", "publishing without waiting", 5),
    Need("channel.Channel.basic_ack", "acks from a handler's thread", 2),
)
# On a live connection and channel (instance attributes): checked on each connect.
LIVE_NEEDS = (
    Need("connection._impl", "every fast-path write"),
    Need("connection._impl._transport", "sending frames at once"),
    Need("connection._impl._transport._sock", "sending frames at once"),
    Need("connection._impl._transport._state", "sending frames at once"),
    Need("connection._impl.bytes_sent", "pika's byte count"),
    Need("connection._impl.frames_sent", "pika's frame count"),
    Need("channel._impl", "confirm bookkeeping and handler acks"),
    Need("channel._closing_reason", "why the broker closed a channel"),
)


def _resolve(root: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def _check(need: Need, root: Any, path: str) -> str | None:
    """What is wrong with ``need`` (missing, or called differently), or None."""
    try:
        found = _resolve(root, path)
    except AttributeError:
        return f"{need.where} is gone ({need.why})"
    if need.params is None:
        return None
    try:
        params = list(inspect.signature(found).parameters.values())
    except (TypeError, ValueError):
        return f"{need.where} is no longer a function ({need.why})"
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if positional and positional[0].name == "self":
        positional = positional[1:]
    if len(positional) < need.params:
        return f"{need.where} takes {len(positional)} arguments now, not {need.params} ({need.why})"
    return None


_static: list[str] | None = None


def missing() -> list[str]:
    """The private names (of classes and modules) this pika lacks; [] when all are there."""
    global _static
    if _static is None:
        _static = [p for n in NEEDS if (p := _check(n, pika, n.where)) is not None]
    return list(_static)


def missing_live(connection: Any, channel: Any) -> list[str]:
    """The instance attributes a live ``BlockingConnection`` and channel lack."""
    roots = {"connection": connection, "channel": channel}
    problems = []
    for need in LIVE_NEEDS:
        head, _, path = need.where.partition(".")
        problem = _check(need, roots[head], path)
        if problem is not None:
            problems.append(problem)
    return problems


def version() -> str:
    return str(getattr(pika, "__version__", "?"))


def closed_reason(channel: Any) -> BaseException:
    """Why the broker closed ``channel`` (pika raises nothing when only the channel went)."""
    reason: BaseException | None = channel._closing_reason
    fallback: BaseException = pika.exceptions.ChannelClosed(0, "channel closed")
    return reason or fallback


class FrameWriter:
    """Writes a connection's frames for pika (1.x internals): sooner, and from any thread.

    pika queues each frame of a message (method, header, body) as a buffer of
    its own and sends them once its I/O loop finds the socket writable: a
    writability watch turned on and off, a turn of the loop, a ``send()`` per
    frame. Here a message's frames are joined into one buffer (one system
    call, one TCP segment for the broker to read) and, with ``direct``, sent
    at once when nothing is queued before them; what the socket does not take
    is queued for the loop as before (so is everything on a TLS connection).

    ``owner``: the one thread that runs the connection's I/O loop (a ``Link``'s).
    Another thread may then write a frame too, through ``from_other_thread``
    (an ack: pika checks the channel's state and frames it without changing
    shared state; this output is what is shared, under a lock): sent at once
    when nothing is queued, or handed over to the owner, which writes it
    (woken through pika's thread-safe callback) before anything of its own.
    Without ``owner`` every caller drives the connection (``DirectLink``, under
    its own lock).
    """

    def __init__(self, conn: Any, *, direct: bool, owner: int | None = None) -> None:
        self._conn = conn
        self._impl = conn._impl
        self._emit = self._impl._adapter_emit_data
        self.direct = direct
        self._owner = owner
        self._lock = threading.RLock()  # an abort inside a write may write a close frame
        self._handover: list[bytes] = []  # other threads' frames, for the owner to write
        self._impl._output_marshaled_frames = self.output

    def ack(self, channel: Any, tag: int, multiple: bool = False) -> None:
        """Ack ``tag`` (``multiple``: every delivery up to it) on ``channel``, written at
        once (from the owner too: after what other threads handed over).

        An ack has no reply to wait for, and pika's async channel only frames it,
        so the handler's thread writes it itself instead of waking the I/O
        thread for it. A channel that closed since refuses it (pika raises).
        """
        self.from_other_thread(lambda: channel._impl.basic_ack(tag, multiple))

    def output(self, frames: list[bytes]) -> None:
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        with self._lock:
            self._impl.bytes_sent += len(data)
            self._impl.frames_sent += len(frames)
            if self._owner is not None and threading.get_ident() != self._owner:
                wake = self._from_other_thread(data)
            else:  # the owner: what was handed over first, then this
                wake = False
                self._handover.append(data)
                self._write_handover()
        if wake:
            try:
                self._conn.add_callback_threadsafe(self._write_handover)
            except Exception:  # the connection is closing: what was unsent goes with it
                pass

    def from_other_thread(self, frame: Callable[[], None]) -> None:
        """Run ``frame`` (e.g. a channel's ``basic_ack``: a state check, then a frame
        through ``output``) on a thread other than the owner, as one step for the
        owner: channels are closed through this output too, so the frame either
        goes out while its channel is open or is refused (pika raises) after.
        (pika's thread-safe wake-up, called with the lock held, takes none of the
        locks the owner holds when it writes.)"""
        with self._lock:
            frame()

    def _from_other_thread(self, data: bytes) -> bool:
        """Send ``data`` or hand it over; True when the owner must be woken for it."""
        if not self._handover:
            data = self._send_now(data)
            if not data:
                return False
        self._handover.append(data)
        return len(self._handover) == 1

    def _write_handover(self) -> None:
        """On the owner's thread: write what waits in ``_handover``, in order."""
        with self._lock:
            if not self._handover:
                return
            chunks = self._handover
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            if self.direct:
                data = self._send_now(data)
            if data:
                self._emit(data)

    def _send_now(self, data: bytes) -> bytes:
        """Send what the socket takes now, if nothing is queued before it; the rest."""
        transport = self._impl._transport
        if (
            type(transport) is not _PLAIN_TRANSPORT  # TLS frames its own records
            # the loop is writing: only it takes queued bytes out, and the count (unlike
            # the buffer list, briefly empty while a partly sent chunk is put back) only
            # drops once they are sent
            or transport.get_write_buffer_size()
            or transport._state != _STATE_ACTIVE
        ):
            return data
        sock = transport._sock  # None once the transport closed (on the owner's thread)
        if sock is None:
            return data
        try:
            sent = sock.send(data)
        except OSError:  # would block, or broken: the transport's own write deals with it
            return data
        return data[sent:]


class ConfirmWindow(WindowBase):
    """A ``BlockingChannel`` whose ``basic_publish`` returns before the confirm.

    pika's ``BlockingChannel.confirm_delivery()`` makes every ``basic_publish``
    wait for its own confirm (one round trip, and a persistent message's
    confirm waits for the broker's disk). This puts the channel in confirm
    mode itself and tracks each publish by delivery tag, so a caller can
    publish several messages and wait once (``wait``) — or wait on each:

    - ``Basic.Ack`` (possibly ``multiple``) settles messages;
    - ``Basic.Nack`` (the broker could not take them) republishes them;
    - ``Basic.Return`` (unroutable) is an error the next ``wait`` raises;
    - after a reconnect the owner republishes ``unconfirmed()`` on the new channel.

    Everything runs on the thread that owns the connection.
    """

    def __init__(self, channel: Any) -> None:
        super().__init__(channel)
        self._impl = channel._impl  # pika's async channel under the blocking one
        self._next_tag = 1
        self._unwritten = 0  # framed since the last write-out
        self._pending: dict[int, Outgoing] = {}
        self._retry: list[Outgoing] = []
        selected: list[bool] = []
        self._impl.add_on_return_callback(self.on_return)
        self._impl.confirm_delivery(
            ack_nack_callback=self._on_confirm, callback=lambda _frame: selected.append(True)
        )
        self._until(lambda: bool(selected), SELECT_TIMEOUT_SECONDS)
        if not selected:
            raise BrokerError("RabbitMQ did not put the channel in confirm mode")

    @property
    def outstanding(self) -> int:
        return len(self._pending) + len(self._retry)

    def send(self, out: Outgoing) -> None:
        """Publish ``out`` and track it (a new message, a nacked or a carried-over one)."""
        self._impl.basic_publish(
            out.exchange, out.routing_key, out.body, out.properties, out.mandatory
        )
        self._pending[self._next_tag] = out
        self._next_tag += 1
        self._unwritten += 1

    @property
    def unwritten(self) -> int:
        """Messages framed but not yet handed to the socket (coalescing)."""
        return self._unwritten

    def _until(self, done: Callable[[], bool], time_limit: float) -> None:
        """Do I/O until ``done()`` or ``time_limit`` seconds pass.

        pika's ``process_data_events`` would sit out its whole time limit (a
        confirm is not one of the events it returns for), so this drives the
        blocking channel's own I/O loop with our condition, as its
        ``basic_publish`` does when it waits for a confirm (pika 1.x).
        """
        if done():
            return
        with _TIMER_CONTEXT(time_limit, self.channel.connection._impl) as timer:
            self.channel._flush_output(timer.is_ready, done)
        self._unwritten = 0  # _flush_output returns with the output written

    def write_out(self) -> None:
        """Write everything framed (confirms come later)."""
        self.channel._flush_output(lambda: True)
        self._unwritten = 0

    def pump(self) -> None:
        """Write what is framed and read what has come (confirms), without waiting."""
        self.channel.connection.process_data_events(time_limit=0)
        self._unwritten = 0  # process_data_events returns with the output written
        self._resend_nacked()
        if self._unwritten:
            self.write_out()  # the nacked ones, sent again

    def _resend_nacked(self) -> None:
        while self._retry:  # the broker could not take them: once more
            self.send(self._retry[0])  # dropped from the list only once it is pending again
            self._retry.pop(0)

    @property
    def sent(self) -> int:
        """Messages published on this channel so far (a caller can tell if it published)."""
        return self._next_tag - 1

    def wait(
        self, deadline: float, below: int = 1, *, report_returns: bool = True, batch: int = 1
    ) -> bool:
        """Pump until fewer than ``below`` messages are unconfirmed; False at the deadline.

        Framed messages are written now once ``batch`` of them wait (1: always);
        fewer are left for the next call or the keep-alive's linger. With
        ``report_returns``, raises BrokerError once for messages RabbitMQ
        returned as unroutable (kept for a caller that published, otherwise).
        """
        if self.outstanding < below and self._unwritten >= batch:
            self.write_out()  # confirms come later
        while self.outstanding >= below:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._until(lambda: self.outstanding < below or bool(self._retry), left)
            self._resend_nacked()
        if report_returns:
            self.raise_returned()
        return True

    def unconfirmed(self) -> list[Outgoing]:
        """Messages without a confirm (for republishing after a reconnect), oldest first."""
        return [self._pending[tag] for tag in sorted(self._pending)] + list(self._retry)

    # -- pika callbacks (on this thread, inside process_data_events) -------------
    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tags = (
            [t for t in self._pending if t <= method.delivery_tag]
            if method.multiple
            else [method.delivery_tag]
        )
        nacked = isinstance(method, pika.spec.Basic.Nack)
        for tag in tags:
            out = self._pending.pop(tag, None)
            if out is not None and nacked:
                self._retry.append(out)


FAST = IOPath("fast", FrameWriter, ConfirmWindow, closed_reason)
