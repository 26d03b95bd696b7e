"""Small shared helpers: time-ordered ids, UTC time, JSON encoding, per-thread resources."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

R = TypeVar("R")


class _Held(Generic[R]):
    __slots__ = ("__weakref__", "pid", "resource")

    def __init__(self, resource: R, close: Callable[[R], None]) -> None:
        self.pid = os.getpid()
        self.resource = resource
        weakref.finalize(self, close, resource)  # when its thread (its threading.local) ends


class PerThread(Generic[R]):
    """One resource per thread, e.g. a connection: made on first use (again in a
    forked child, whose parent's is not its own), closed when its thread ends, when
    the thread drops it, or by ``close_all``."""

    def __init__(self, make: Callable[[], R], close: Callable[[R], None]) -> None:
        self._make = make
        self._close = close
        self._local = threading.local()
        self._held: weakref.WeakSet[_Held[R]] = weakref.WeakSet()
        self._lock = threading.Lock()

    def get(self) -> R:
        held: _Held[R] | None = getattr(self._local, "held", None)
        if held is None or held.pid != os.getpid():
            held = _Held(self._make(), self._close)
            self._local.held = held
            with self._lock:
                self._held.add(held)
        return held.resource

    def drop(self) -> None:
        """Close this thread's resource; the next ``get`` makes a new one."""
        held: _Held[R] | None = getattr(self._local, "held", None)
        self._local.held = None
        if held is not None:
            self._close(held.resource)

    def close_all(self) -> None:
        with self._lock:
            held = list(self._held)
        for h in held:
            self._close(h.resource)


# Ids need uniqueness, not secrecy: a generator seeded from the OS (again in
# every forked child) gives 74 random bits per millisecond without the system
# call ``secrets`` makes for each id.
_rng = random.Random()
os.register_at_fork(after_in_child=_rng.seed)


def new_id() -> str:
    """A UUIDv7 (RFC 9562): sortable by creation time, unique across processes."""
    ms = time.time_ns() // 1_000_000
    rand = _rng.getrandbits(80)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def now() -> float:
    """Seconds since the epoch (UTC); the one clock every timestamp uses."""
    return time.time()


def iso(ts: float | None) -> str | None:
    """An ISO-8601 UTC string for a timestamp, or None."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")


def parse_since(text: str) -> float:
    """Parse ``--since`` values: ``30m``, ``2h``, ``7d``, or an ISO date/time."""
    from orchestra_cli.errors import UsageError

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip()
    duration = re.fullmatch(r"([0-9]{1,9})([smhd])", t)  # ASCII digits, a sane count
    if duration:
        return now() - int(duration[1]) * units[duration[2]]
    try:
        parsed = dt.datetime.fromisoformat(t)
    except (ValueError, OverflowError):
        raise UsageError(
            f"cannot read time {text[:40]!r}", "use a duration like 30m, 2h, 7d or an ISO date"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def json_default(obj: Any) -> Any:
    """What ``dumps`` (and msgspec's encoders, as ``enc_hook``) write for other types."""
    if hasattr(obj, "model_dump"):  # a records.Record, or a pydantic model
        return obj.model_dump(mode="json")
    if isinstance(obj, dt.datetime):
        return obj.isoformat()
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


_ENCODER = json.JSONEncoder(default=json_default, ensure_ascii=False)  # built once: hot path


_encode_str = json.encoder.encode_basestring  # what ensure_ascii=False encodes strings with


def dumps(obj: Any, *, indent: int | None = None) -> str:
    """JSON-encode records (msgspec or pydantic), datetimes and paths as well as plain data."""
    if indent is None:
        # scalars (most of a task's fields, encoded one by one for Redis) skip the
        # encoder's machinery; the output is exactly what it would write
        kind = type(obj)
        if kind is str:
            return _encode_str(obj)
        if obj is None:
            return "null"
        if kind is int:
            return int.__repr__(obj)
        if kind is float and math.isfinite(obj):
            return float.__repr__(obj)
        if kind is bool:
            return "true" if obj else "false"
        return _ENCODER.encode(obj)
    return json.dumps(obj, default=json_default, ensure_ascii=False, indent=indent)


# Blank, as the API's documents say it (``"pattern": NOT_BLANK``): nothing but these
# characters, ECMA-262's ``\s`` spelled out. JSON Schema tools, pydantic (Rust's regex)
# and Python disagree on ``\s`` itself (Python's holds \x1c-\x1f and \x85, ECMA's
# \ufeff), so a key a schema calls valid was "empty" to ``str.strip`` (schemathesis).
NOT_BLANK = r"[^\t\n\x0b\x0c\r \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
_NOT_BLANK = re.compile(NOT_BLANK)


def blank(text: str) -> bool:
    """Whether ``text`` holds nothing but blanks (``NOT_BLANK`` finds nothing in it)."""
    return _NOT_BLANK.search(text) is None


def text_lines(text: str) -> list[str]:
    """``text``'s lines, split at newlines only (a CR before one dropped; no empty last
    line). ``str.splitlines`` also splits at U+2028, U+2029, U+0085, \\v, \\f and
    \\x1c-\\x1e, which JSON keeps raw inside a string: a JSON line holding one would
    come apart into two pieces that are neither JSON."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def loads(text: str | bytes) -> Any:
    """Decode JSON."""
    return json.loads(text)


def human_duration(seconds: float | None) -> str:
    """``1.2s``, ``3m04s``, ``1h02m`` — short durations for tables."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
