"""Read and follow plain log files (``orchestra logs [-f]`` for the native runtime)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from orchestra_cli.util import text_lines

FOLLOW_POLL_SECONDS = 0.25
TAIL_BYTES = 1_000_000  # `--tail N` reads at most this much from the end


def tail_lines(path: Path, count: int | None) -> list[str]:
    """The last ``count`` lines (all when None), without line endings; [] if missing."""
    try:
        with path.open("rb") as fh:
            if count is not None:
                fh.seek(0, 2)
                fh.seek(max(0, fh.tell() - TAIL_BYTES))
            data = fh.read()
    except OSError:
        return []
    lines = text_lines(data.decode("utf-8", errors="replace"))
    return lines if count is None else lines[-count:] if count else []


def follow_files(paths: Mapping[str, Path]) -> Iterator[tuple[str, str]]:
    """Yield ``(name, line)`` as lines are appended, forever (Ctrl-C ends it).

    Starts at each file's end as of this call; a file that shrinks (deleted and
    recreated by a new ``up``) is read again from the start.
    """
    # offsets are taken now, not at the first next(): nothing written in between is lost
    offsets = {name: _size(path) for name, path in paths.items()}
    return _follow(paths, offsets)


def _follow(paths: Mapping[str, Path], offsets: dict[str, int]) -> Iterator[tuple[str, str]]:
    partial = dict.fromkeys(paths, b"")
    while True:
        quiet = True
        for name, path in paths.items():
            size = _size(path)
            if size < offsets[name]:
                offsets[name], partial[name] = 0, b""
            if size == offsets[name]:
                continue
            try:
                with path.open("rb") as fh:
                    fh.seek(offsets[name])
                    chunk = fh.read()
            except OSError:  # removed between stat and open (`down --volumes`)
                continue
            offsets[name] += len(chunk)
            *complete, partial[name] = (partial[name] + chunk).split(b"\n")
            for raw in complete:
                quiet = False
                yield name, raw.decode("utf-8", errors="replace").rstrip("\r")
        if quiet:
            time.sleep(FOLLOW_POLL_SECONDS)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
