"""FrameWriter: a connection's frames sent at once, from its I/O thread or another one."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pika.adapters.utils.io_services_utils import _AsyncPlaintextTransport

from orchestra_cli.broker.pika_fast import FrameWriter


class _Loop:
    """What the transport asks of pika's I/O services: watches, recorded."""

    def __init__(self) -> None:
        self.writer: Callable[[], None] | None = None

    def set_reader(self, fd: int, on_readable: Callable[[], None]) -> None:
        pass

    def set_writer(self, fd: int, on_writable: Callable[[], None]) -> None:
        self.writer = on_writable

    def remove_writer(self, fd: int) -> bool:
        self.writer = None
        return True


class _Impl:
    """pika's connection: counters, the transport, and the write FrameWriter wraps."""

    def __init__(self, transport: _AsyncPlaintextTransport) -> None:
        self._transport = transport
        self.bytes_sent = 0
        self.frames_sent = 0

    def _adapter_emit_data(self, data: bytes) -> None:
        self._transport.write(data)


class _Conn:
    def __init__(self, impl: _Impl) -> None:
        self._impl = impl
        self.callbacks: list[Callable[[], None]] = []

    def add_callback_threadsafe(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)


@pytest.fixture
def wired() -> Iterator[tuple[FrameWriter, _Conn, _Loop, socket.socket, socket.socket]]:
    ours, broker = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.setblocking(False)
    loop = _Loop()
    conn = _Conn(_Impl(_AsyncPlaintextTransport(ours, None, loop)))
    writer = FrameWriter(conn, direct=True, owner=threading.get_ident())
    try:
        yield writer, conn, loop, ours, broker
    finally:
        ours.close()
        broker.close()


def _read(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(5)
    data = b""
    while len(data) < size:
        data += sock.recv(65536)
    return data


def _from_thread(fn: Callable[[], Any]) -> None:
    thread = threading.Thread(target=fn)
    thread.start()
    thread.join()


def test_a_message_goes_out_as_one_write_at_once_from_any_thread(wired: Any) -> None:
    writer, conn, loop, _, broker = wired
    writer._impl._output_marshaled_frames([b"method|", b"header|", b"body"])  # pika's call
    _from_thread(lambda: writer.output([b"ack"]))
    assert _read(broker, 21) == b"method|header|bodyack"
    assert loop.writer is None and conn.callbacks == []  # no watch, no wake-up
    assert writer._impl.frames_sent == 4 and writer._impl.bytes_sent == 21


def test_another_threads_frames_wait_behind_queued_output_and_keep_their_order(
    wired: Any,
) -> None:
    writer, conn, loop, _, broker = wired
    big = bytes(range(256)) * 4096  # more than the socket takes: the rest is queued
    writer.output([big])
    transport = writer._impl._transport
    assert transport._tx_buffers and loop.writer is not None
    _from_thread(lambda: writer.output([b"ack-1"]))
    _from_thread(lambda: writer.output([b"ack-2"]))
    assert len(conn.callbacks) == 1  # the owner is woken once for the two
    received = b""
    while loop.writer is not None:  # the owner's I/O loop: writable, write the queue
        received += broker.recv(1 << 20)
        loop.writer()
    conn.callbacks.pop()()  # …then its wake-up: the handed-over frames
    writer.output([b"mine"])  # and its own next frame after them
    tail = len(big) + len(b"ack-1ack-2mine") - len(received)
    assert received + _read(broker, tail) == big + b"ack-1ack-2mine"


def test_a_chunk_the_loop_is_putting_back_still_holds_other_threads_frames(
    wired: Any,
) -> None:
    writer, conn, _, _, broker = wired
    transport = writer._impl._transport
    # pika's _produce after a partial send: the chunk is out of the list for a moment
    # (popleft, then appendleft of its rest) while its bytes still count as queued
    transport._tx_buffered_byte_count = 5
    _from_thread(lambda: writer.output([b"ack"]))
    assert len(conn.callbacks) == 1  # handed over, not written into the middle of a frame
    broker.setblocking(False)
    with pytest.raises(BlockingIOError):
        broker.recv(16)


def test_a_frame_from_another_thread_after_the_transport_closed_is_handed_over(
    wired: Any,
) -> None:
    writer, conn, _, _, _ = wired
    writer._impl._transport._sock = None  # what pika's close leaves, on the owner's thread
    _from_thread(lambda: writer.output([b"ack"]))
    assert len(conn.callbacks) == 1  # no AttributeError in the handler's thread
