"""One AMQP connection driven by its own I/O thread, reconnecting with backoff.

pika's ``BlockingConnection`` is not thread-safe, so every channel operation
of a link runs on the link's thread: other threads submit commands (``call``)
and wait on a future. The thread loops over ``process_data_events`` (which
also answers heartbeats), runs queued commands and the owner's ``on_tick``
hook. When the connection drops it reconnects with bounded, jittered backoff
and calls ``on_connect`` again, which re-declares topology and re-subscribes,
so a consumer resumes after a server-side close instead of silently stopping.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pika
import pika.exceptions
from pika.adapters.utils.io_services_utils import _AsyncPlaintextTransport as _PlainTransport

from orchestra_cli.errors import BrokerError, BrokerUnavailable
from orchestra_cli.settings import RabbitMQSettings, mask_url

log = logging.getLogger(__name__)

MAX_CONNECT_ATTEMPTS = 3  # before the first connection: fail fast with a hint
MAX_RECONNECT_ATTEMPTS = 30  # a publish after a drop (bounded by its caller's timeout too)
# A consumer's link (a long-running process) retries after a drop for as long as
# rabbitmq.max_outage_seconds allows: forever by default, every MAX_BACKOFF_SECONDS at most.
MAX_COMMAND_ATTEMPTS = 5  # a command that keeps breaking the connection fails
FIRST_BACKOFF_SECONDS = 0.2
MAX_BACKOFF_SECONDS = 5.0
IO_TICK_SECONDS = 0.05
CLOSE_TIMEOUT_SECONDS = 5.0

# Errors after which the connection (or its channel) is unusable: reconnect.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.ChannelClosed,
    OSError,
)
# Errors that belong to one command: reported to its caller, the link goes on.
COMMAND_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.UnroutableError,
    pika.exceptions.NackError,
)

Channel = Any  # pika.adapters.blocking_connection.BlockingChannel
Command = Callable[[Channel], Any]


def unavailable(url: str, detail: str = "") -> BrokerUnavailable:
    """The one wording for an unreachable RabbitMQ."""
    extra = f" ({detail})" if detail else ""
    return BrokerUnavailable(
        f"cannot reach RabbitMQ at {mask_url(url)}{extra}",
        "start it with `orchestra up` or set ORCHESTRA_BROKER_URL",
    )


def backoff(attempt: int) -> float:
    """Seconds to wait before reconnect ``attempt`` (1, 2, …): doubling, capped, jittered."""
    delay = min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2.0 ** (attempt - 1))
    return float(delay * random.uniform(0.5, 1.0))


def log_reconnect(host: str, name: str, exc: BaseException, delay: float, left: int) -> None:
    log.warning(
        "RabbitMQ at %s (%s): %s; reconnecting in %.1fs (%d attempts left)",
        host,
        name,
        type(exc).__name__,
        delay,
        left,
    )


def close_quietly(conn: Any) -> None:
    """Close a connection that may be broken already."""
    if conn is not None and conn.is_open:
        try:
            conn.close()
        except Exception:  # already broken; nothing to release
            pass


def connection_parameters(url: str, settings: RabbitMQSettings, name: str) -> pika.URLParameters:
    """pika parameters from the URL plus heartbeat, blocked-connection timeout and a name."""
    params = pika.URLParameters(url)
    params.heartbeat = settings.heartbeat
    params.blocked_connection_timeout = settings.blocked_connection_timeout
    params.socket_timeout = settings.connect_timeout
    params.connection_attempts = 1  # the link does its own, logged, retries
    params.client_properties = {
        "connection_name": f"{settings.queue_prefix}/{name}",
        "product": "orchestra",
    }
    return params


@dataclass
class _Pending:
    command: Command
    future: Future[Any] = field(default_factory=Future)
    attempts: int = 0


class Link:
    """A connection + channel owned by one thread; ``call`` runs a command on it."""

    def __init__(
        self,
        url: str,
        settings: RabbitMQSettings,
        name: str,
        on_connect: Callable[[Channel, int], None],
        on_tick: Callable[[Channel], None] | None = None,
    ) -> None:
        self.url = url
        self.settings = settings
        self.name = name
        self.host = urlsplit(url).hostname or "?"
        self.on_connect = on_connect
        self.on_tick = on_tick
        self.generation = 0  # bumped on every (re)connect; stale delivery tags are ignored
        self.failure: BrokerUnavailable | None = None
        self._pending: collections.deque[_Pending] = collections.deque()
        self._lock = threading.Lock()
        self._conn: Any = None
        self._channel: Channel = None
        self.writer: FrameWriter | None = None  # the current connection's (acks go through it)
        self._closing = threading.Event()
        self._ready = threading.Event()  # first connection made (or given up)
        self._thread = threading.Thread(target=self._run, name=f"amqp-{name}", daemon=True)

    # -- other threads -------------------------------------------------------
    def start(self) -> None:
        """Start the I/O thread and wait for the first connection; BrokerUnavailable if none."""
        self._thread.start()
        self._ready.wait()
        if self.failure is not None:
            raise self.failure

    @property
    def alive(self) -> bool:
        return self.failure is None and self._thread.is_alive()

    @property
    def connected(self) -> bool:
        conn = self._conn
        return bool(conn is not None and conn.is_open)

    def call(self, command: Command, timeout: float) -> Any:
        """Run ``command(channel)`` on the link's thread; its result or its exception.

        During an outage the command waits for the reconnect (up to ``timeout``).
        """
        item = self._enqueue(command)
        try:
            return item.future.result(timeout)
        except FutureTimeout:
            with self._lock:
                if item in self._pending:
                    self._pending.remove(item)
            raise unavailable(self.url, f"no connection for {timeout:g}s") from None

    def _enqueue(self, command: Command) -> _Pending:
        if self.failure is not None:
            raise self.failure
        item = _Pending(command)
        with self._lock:
            # the link thread drains the whole queue once woken: one wake per batch
            wake = not self._pending
            self._pending.append(item)
        if wake:
            self._wake()
        return item

    def close(self) -> None:
        """Run what is queued, then close the connection (the broker requeues unacked)."""
        self._closing.set()
        self._wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(CLOSE_TIMEOUT_SECONDS)

    def _wake(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            conn.add_callback_threadsafe(_noop)
        except Exception:  # closed meanwhile: the loop notices on its next tick
            pass

    # -- the link's own thread -----------------------------------------------
    def _run(self) -> None:
        attempts = 0
        ever_connected = False
        down_since = 0.0
        while not self._closing.is_set():
            try:
                self._connect()
                ever_connected = True
                attempts = 0
                self._ready.set()
                self._loop()
            except CONNECTION_ERRORS as exc:
                self._teardown()
                attempts += 1
                down_since = time.monotonic() if attempts == 1 else down_since
                if self._closing.is_set():
                    break
                if self._out_of_attempts(ever_connected, attempts, down_since):
                    limit = self.settings.max_outage_seconds
                    outage = f"unreachable for {limit:g}s, rabbitmq.max_outage_seconds"
                    self._give_up(exc, outage if ever_connected else "")
                    return
                delay = backoff(attempts)
                self._log_retry(ever_connected, exc, delay, attempts, down_since)
                self._closing.wait(delay)
            except Exception as exc:  # a bug in a hook: fail loudly rather than hang callers
                log.exception("RabbitMQ link %s crashed", self.name)
                self._teardown()
                self._give_up(exc)
                return
        self._flush_on_close()
        self._teardown()
        self._ready.set()

    def _out_of_attempts(self, ever_connected: bool, attempts: int, down_since: float) -> bool:
        """Before a first connection: MAX_CONNECT_ATTEMPTS; after a drop: the outage limit."""
        if not ever_connected:
            return attempts >= MAX_CONNECT_ATTEMPTS
        limit = self.settings.max_outage_seconds
        return limit > 0 and time.monotonic() - down_since >= limit

    def _log_retry(
        self, ever_connected: bool, exc: BaseException, delay: float, attempts: int, since: float
    ) -> None:
        if not ever_connected:
            log_reconnect(self.host, self.name, exc, delay, MAX_CONNECT_ATTEMPTS - attempts)
            return
        limit = self.settings.max_outage_seconds
        log.warning(
            "RabbitMQ at %s (%s): %s; reconnecting in %.1fs (attempt %d, down %.0fs, %s)",
            self.host,
            self.name,
            type(exc).__name__,
            delay,
            attempts,
            time.monotonic() - since,
            f"giving up after {limit:g}s" if limit > 0 else "no limit",
        )

    def _connect(self) -> None:
        params = connection_parameters(self.url, self.settings, self.name)
        self._conn = pika.BlockingConnection(params)
        self.writer = FrameWriter(self._conn, direct=True, owner=threading.get_ident())
        self._channel = self._conn.channel()
        self.generation += 1
        self.on_connect(self._channel, self.generation)
        if self.generation > 1:
            log.info("RabbitMQ at %s (%s): reconnected", self.host, self.name)

    def _loop(self) -> None:
        while not self._closing.is_set():
            self._conn.process_data_events(time_limit=IO_TICK_SECONDS)
            if not self._channel.is_open:
                # closed by the broker with the connection left open (a channel error,
                # e.g. RabbitMQ's consumer_timeout): pika raises nothing, so open afresh
                raise self._channel._closing_reason or pika.exceptions.ChannelClosed(
                    0, "channel closed"
                )
            self._run_pending()
            if self.on_tick is not None:
                self.on_tick(self._channel)

    def _run_pending(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    return
                item = self._pending[0]
            item.attempts += 1
            try:
                result = item.command(self._channel)
            except COMMAND_ERRORS as exc:
                self._finish(item, exc=BrokerError(f"RabbitMQ refused the message: {exc!r}"))
            except CONNECTION_ERRORS as exc:
                if item.attempts >= MAX_COMMAND_ATTEMPTS:
                    self._finish(item, exc=BrokerError(f"RabbitMQ command failed: {exc!r}"))
                raise  # the command stays queued and runs again after the reconnect
            except Exception as exc:
                self._finish(item, exc=exc)
            else:
                self._finish(item, result=result)

    def _finish(
        self, item: _Pending, *, result: Any = None, exc: BaseException | None = None
    ) -> None:
        with self._lock:
            if self._pending and self._pending[0] is item:
                self._pending.popleft()
        if item.future.done():
            return
        if exc is not None:
            item.future.set_exception(exc)
        else:
            item.future.set_result(result)

    def _flush_on_close(self) -> None:
        if self.connected:
            try:
                self._run_pending()
            except Exception:  # closing: whatever is unsent fails below
                pass
        self._fail_pending(unavailable(self.url, "connection closed"))

    def _give_up(self, exc: BaseException, detail: str = "") -> None:
        detail = detail or f"{type(exc).__name__}, gave up reconnecting"
        self.failure = unavailable(self.url, detail)
        log.error("RabbitMQ at %s (%s): giving up: %r", self.host, self.name, exc)
        self._fail_pending(self.failure)
        self._ready.set()

    def _fail_pending(self, exc: BaseException) -> None:
        with self._lock:
            items = list(self._pending)
            self._pending.clear()
        for item in items:
            if not item.future.done():
                item.future.set_exception(exc)

    def _teardown(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        close_quietly(conn)


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
            type(transport) is not _PlainTransport  # TLS frames its own records
            # the loop is writing: only it takes queued bytes out, and the count (unlike
            # the buffer list, briefly empty while a partly sent chunk is put back) only
            # drops once they are sent
            or transport.get_write_buffer_size()
            or transport._state != _PlainTransport._STATE_ACTIVE
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


def _noop() -> None:
    """Wakes ``process_data_events`` so queued commands run at once."""
