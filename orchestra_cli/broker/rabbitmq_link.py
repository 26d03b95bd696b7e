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

from orchestra_cli.backoff import Backoff, log_retry
from orchestra_cli.broker import pika_fast
from orchestra_cli.broker.rabbitmq_io import PLAIN, IOPath, Writer
from orchestra_cli.errors import BrokerError, BrokerUnavailable
from orchestra_cli.settings import RabbitMQSettings, mask_url

log = logging.getLogger(__name__)

MAX_CONNECT_ATTEMPTS = 3  # before the first connection: fail fast with a hint
MAX_RECONNECT_ATTEMPTS = 30  # a publish after a drop (bounded by its caller's timeout too)
# A consumer's link (a long-running process) retries after a drop for as long as
# rabbitmq.max_outage_seconds allows: forever by default, every RECONNECT.cap seconds at most.
MAX_COMMAND_ATTEMPTS = 5  # a command that keeps breaking the connection fails
RECONNECT = Backoff(first=0.2, cap=5.0)  # equal jitter: 0.1–0.2 s, 0.2–0.4 s, … 2.5–5 s
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


def log_reconnect(
    host: str, name: str, exc: BaseException, delay: float, left: int | None, note: str = ""
) -> None:
    """The one line a link logs before it tries to connect again."""
    where = f"{host} ({name})"
    log_retry(log, "RabbitMQ", where, exc, delay, left, action="reconnecting", note=note)


_fallback_told = threading.Event()


def io_path(settings: RabbitMQSettings, conn: Any, channel: Any) -> IOPath:
    """The fast path (pika's internals) unless ``rabbitmq.fast_path`` is off, or this pika
    lacks a name it needs: then the plain path, with a warning once per process."""
    if not settings.fast_path:
        return PLAIN
    problems = pika_fast.missing() or pika_fast.missing_live(conn, channel)
    if not problems:
        return pika_fast.FAST
    if not _fallback_told.is_set():
        _fallback_told.set()
        log.warning(
            "pika %s: %s; RabbitMQ I/O takes the plain path (slower) — "
            "set rabbitmq.fast_path: false to say so, or use a pika the fast path knows",
            pika_fast.version(),
            "; ".join(problems),
        )
    return PLAIN


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
        self.writer: Writer | None = None  # the current connection's (acks go through it)
        self.path: IOPath = PLAIN  # the current connection's (rabbitmq_io)
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
                delay = RECONNECT.next_delay(attempts)
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
        down = f"attempt {attempts}, down {time.monotonic() - since:.0f}s"
        until = f"giving up after {limit:g}s" if limit > 0 else "no limit"
        log_reconnect(self.host, self.name, exc, delay, None, f"{down}, {until}")

    def _connect(self) -> None:
        params = connection_parameters(self.url, self.settings, self.name)
        self._conn = pika.BlockingConnection(params)
        self._channel = self._conn.channel()
        self.path = io_path(self.settings, self._conn, self._channel)
        self.writer = self.path.writer(self._conn, direct=True, owner=threading.get_ident())
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
                raise self.path.closed_reason(self._channel)
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


def _noop() -> None:
    """Wakes ``process_data_events`` so queued commands run at once."""
