"""Structured JSON logs with rotation, and JSONL writers safe for concurrent processes.

Each process writes its own rotating log (``logs/<component>.log``), because
rotating one file from several processes loses lines. The shared JSONL files
(metrics, decisions, agent memory) are appended to with one ``write`` call per
line on an ``O_APPEND`` descriptor, which Linux applies atomically on a local
file system: lines from many processes and threads never interleave (not so
on NFS: keep the data dir local). The descriptor stays open; once a second a
writer checks that the path still names its file, so a rotated or deleted
journal is reopened.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from orchestra_cli.util import dumps, iso, json_default, now, text_lines

# Values that look like credentials are replaced before a line is written.
_SECRET_PATTERNS = [
    re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)\b(hvs|s|b)\.[A-Za-z0-9]{20,}"),
    # (no quote in a user or password: in JSON text, with msgspec's compact separators,
    # the match ran on from one field's URL into the next field's "@")
    re.compile(r'(?<=://)([^:/@\s"]+):([^@/\s"]+)@'),
]
# A cheap necessary condition for pattern 1 (a dot, then 20 alphanumerics).
_TOKEN_HINT = re.compile(r"\.[A-Za-z0-9]{20}", re.IGNORECASE)  # as loose as pattern 1
_known_secrets: set[str] = set()
TAIL_BYTES = 256_000  # how far back from the end a tail read starts


def register_secret(value: str) -> None:
    """Remember a resolved secret value so no log line or error ever prints it."""
    if value and len(value) >= 6:
        _known_secrets.add(value)


def known_secrets() -> frozenset[str]:
    """Every secret value registered so far (tools strip them from a command's environment)."""
    return frozenset(_known_secrets)


def redact(text: str) -> str:
    """Mask known secret values, API-key-like strings and URL passwords."""
    for value in _known_secrets:
        if value in text:
            text = text.replace(value, "***")
    text = _SECRET_PATTERNS[0].sub("sk-ant-***", text)
    if _TOKEN_HINT.search(text):  # the token pattern is slow; most lines have no candidate
        text = _SECRET_PATTERNS[1].sub(r"\1.***", text)
    return _SECRET_PATTERNS[2].sub(r"\1:***@", text) if "://" in text else text


class RedactingFormatter(logging.Formatter):
    """Plain text for people (stderr), with secrets masked like every other output."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extra fields."""

    _skip = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in self._skip and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc"] = redact(self.formatException(record.exc_info))
        return dumps(data)


class _RotatingOnFirstRecord(logging.Handler):
    """``logging.handlers.RotatingFileHandler``, built at the first record: a one-shot
    command that logs nothing neither imports logging.handlers (it brings socket and
    pickle: ~4 ms of `task submit`, -X importtime) nor creates an empty log file."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__()
        self._path, self._max_bytes, self._backups = path, max_bytes, backups
        self._file: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:  # under this handler's lock
        if self._file is None:
            import logging.handlers

            self._file = logging.handlers.RotatingFileHandler(
                self._path, maxBytes=self._max_bytes, backupCount=self._backups, encoding="utf-8"
            )
            self._file.setFormatter(self.formatter)
        self._file.emit(record)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


def setup_logging(
    logs_dir: Path | None,
    component: str,
    *,
    level: str = "INFO",
    max_bytes: int = 10_000_000,
    backups: int = 5,
    stderr_level: str | None = None,
) -> None:
    """Send this process's logs to ``logs/<component>.log`` (JSON, rotated)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    if logs_dir is not None:
        logs_dir.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = _RotatingOnFirstRecord(
            logs_dir / f"{component}.log", max_bytes, backups
        )
        handler.setFormatter(JsonFormatter())
        handler.setLevel(level)
        root.addHandler(handler)
    if stderr_level:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
        console.setLevel(stderr_level)
        root.addHandler(console)
    # The root takes what the most talkative handler keeps, no more: below that, every
    # library's debug() call would build a record (a stack walk to find its caller) for
    # the handlers to drop. Profiled: ~7% of an agent's CPU at 256 calls in flight went
    # to the HTTP client's debug lines.
    root.setLevel(min((h.level for h in root.handlers), default=logging.WARNING))
    for noisy in ("httpx", "httpcore", "httpx2", "httpcore2", "anthropic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pika logs every failed connect as ERROR with a traceback; our link logs one line
    logging.getLogger("pika").setLevel(logging.CRITICAL)


RETIRED_GRACE_SECONDS = 10.0


_encode_line: Any = None  # msgspec's encoder, built on the first line


def json_line(record: dict[str, Any]) -> str:
    """A journal line's JSON. msgspec's encoder (profiled on a no-op agent: the stdlib's
    took ~6% of its CPU for a task's two lines, msgspec's a third of that); what it
    cannot encode (an int beyond 64 bits, a key that is not text) goes through ``dumps``.
    Its output is compact (no spaces after separators), a datetime ends in Z rather than
    +00:00 and a set keeps its own order: a JSON reader reads the same data either way."""
    global _encode_line
    if _encode_line is None:
        import msgspec

        _encode_line = msgspec.json.Encoder(enc_hook=json_default).encode
    try:
        return str(_encode_line(record), "utf-8")
    except (TypeError, ValueError, OverflowError):
        return dumps(record)


class JsonlWriter:
    """Appends one JSON object per line; safe with many writer processes."""

    REOPEN_CHECK_SECONDS = 1.0

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._checked = 0.0
        self._retired: list[tuple[int, float]] = []  # replaced descriptors, and when
        self._open_lock = threading.Lock()
        self._tail_lock = threading.Lock()
        self._tail: _Tail | None = None

    def write(self, record: dict[str, Any]) -> None:
        self._append((redact(json_line({"time": iso(now()), **record})) + "\n").encode("utf-8"))

    def write_many(self, records: list[dict[str, Any]]) -> None:
        """Every record, one line each, in one append (a bulk submit's decisions)."""
        if records:
            stamp = iso(now())
            lines = [redact(json_line({"time": stamp, **r})) + "\n" for r in records]
            self._append("".join(lines).encode("utf-8"))

    def _append(self, data: bytes) -> None:
        try:
            written = os.write(self._file(), data)
        except OSError:  # e.g. its file system went away: open the path afresh, once
            written = os.write(self._file(reopen=True), data)
        while written < len(data):  # (a regular file takes it all, short of a full disk)
            data = data[written:]
            written = os.write(self._file(), data)

    def _file(self, *, reopen: bool = False) -> int:
        """The open descriptor; reopened when the path names another file (or none)."""
        fd = self._fd
        if (
            fd is not None
            and not reopen
            and time.monotonic() - self._checked < (self.REOPEN_CHECK_SECONDS)
        ):
            return fd
        with self._open_lock:
            # a replaced descriptor is closed only once no write can still be using it
            # (another thread may have taken it just before it was replaced)
            now_ = time.monotonic()
            for old, since in [r for r in self._retired if now_ - r[1] > RETIRED_GRACE_SECONDS]:
                os.close(old)
                self._retired.remove((old, since))
            fd = self._fd
            if fd is not None and not reopen:
                try:
                    if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                        self._checked = now_
                        return fd
                except FileNotFoundError:
                    pass
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            if fd is not None:
                self._retired.append((fd, now_))
            self._fd, self._checked = new, now_
            return new

    def close(self) -> None:
        """Close the descriptors (the owner's shutdown: no write is under way)."""
        with self._open_lock:
            for fd in [*(r[0] for r in self._retired), *([] if self._fd is None else [self._fd])]:
                os.close(fd)
            self._fd, self._retired = None, []

    def tail(self, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` records, reading only what was appended since the last call.

        For readers that look at the tail often (an agent's memory, once per
        task): the file is parsed once, then followed like ``tail -f``.
        """
        with self._tail_lock:
            try:
                with open(self.path, "rb") as fh:
                    st = os.fstat(fh.fileno())
                    tail = self._tail
                    if tail is None or tail.stale(st, limit):
                        self._tail = tail = _Tail(st.st_ino, limit)
                        tail.offset = fh.seek(max(0, st.st_size - TAIL_BYTES))
                        if tail.offset > 0:
                            tail.offset += len(fh.readline())  # drop the partial first line
                    if st.st_size > tail.offset:
                        fh.seek(tail.offset)
                        tail.feed(fh.read(st.st_size - tail.offset))
            except FileNotFoundError:
                self._tail = None
                return []
            return list(tail.records)

    def read(self, limit: int | None = None, tail_bytes: int = 256_000) -> list[dict[str, Any]]:
        """Every line, or the last ``limit`` (read from the file's tail), skipping bad lines."""
        try:
            with open(self.path, "rb") as fh:
                if limit is not None:
                    size = fh.seek(0, os.SEEK_END)
                    fh.seek(max(0, size - tail_bytes))
                    if size > tail_bytes:
                        fh.readline()  # drop the partial first line
                data = fh.read()
        except FileNotFoundError:
            return []
        lines = text_lines(data.decode("utf-8", "replace"))
        if limit is not None:
            lines = lines[-limit:]
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


class _Tail:
    """The parsed last lines of a JSONL file and how far it has been read."""

    def __init__(self, inode: int, limit: int) -> None:
        self.inode = inode
        self.limit = limit
        self.offset = 0
        self.partial = b""
        self.records: deque[dict[str, Any]] = deque(maxlen=limit)

    def stale(self, st: os.stat_result, limit: int) -> bool:
        """Replaced, truncated, or read for a different limit: parse it again."""
        return st.st_ino != self.inode or st.st_size < self.offset or limit != self.limit

    def feed(self, data: bytes) -> None:
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            try:
                self.records.append(json.loads(line))
            except ValueError:
                continue


class Journals:
    """The JSONL files under the data dir."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.metrics = JsonlWriter(home / "metrics.jsonl")
        self.decisions = JsonlWriter(home / "decisions.jsonl")
        self._memory: dict[str, JsonlWriter] = {}

    def close(self) -> None:
        """Close the open descriptors (a later write opens them again)."""
        for writer in [self.metrics, self.decisions, *self._memory.values()]:
            writer.close()

    def memory(self, agent_role: str) -> JsonlWriter:
        # one writer per role, so its tail cache lives as long as the process
        writer = self._memory.get(agent_role)
        if writer is None:
            writer = self._memory.setdefault(
                agent_role, JsonlWriter(self.home / "memory" / f"{agent_role}.jsonl")
            )
        return writer
