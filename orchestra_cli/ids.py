"""Short task ids: what tables show and what an operator types.

Task ids are UUIDv7s, time-ordered: ids made within a minute share their
first 8–13 characters, so the git-style prefix people type is nearly always
ambiguous. The *short id* is the id's last 8 characters, random bits, unique
in practice among thousands of tasks. Wherever an id is taken, a whole id, a
prefix of one, the short id or a prefix of it (4+ characters) works; the last
12 characters (the id's last group) too. An ambiguous one names its candidates.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from orchestra_cli.errors import NotFoundError, UsageError

ID_LENGTH = 36
SHORT_LENGTH = 8
TAIL_START = ID_LENGTH - SHORT_LENGTH  # 0-based; SQLite's substr() counts from 1
MIN_LOOKUP_LENGTH = 4
CANDIDATES = 6  # read at most this many matches; an error names up to 5
_HEX = re.compile(r"[0-9a-f]{4,12}")
NOT_FOUND_HINT = "`orchestra task list` shows known ids"
AMBIGUOUS_HINT = (
    "give more characters, or the short id (the last 8) that `orchestra task list` shows"
)


def short_id(task_id: str) -> str:
    """The last 8 characters of a task id: what tables and the live view show."""
    return task_id[TAIL_START:]


def tail_lookup(text: str) -> str | None:
    """The short-id prefix to look ``text`` up by (``None``: it cannot be one).

    Up to 8 characters it is a prefix of the short id; 9–12 are the id's last
    group, looked up by their last 8 (callers keep the ids that end in ``text``).
    """
    if not _HEX.fullmatch(text):
        return None
    return text if len(text) <= SHORT_LENGTH else text[-SHORT_LENGTH:]


def matches_tail(task_id: str, text: str) -> bool:
    return (
        short_id(task_id).startswith(text)
        if len(text) <= SHORT_LENGTH
        else (task_id.endswith(text))
    )


def resolve(
    text: str,
    by_prefix: Callable[[str, int], list[str]],
    by_tail: Callable[[str, int], list[str]],
    titles: Callable[[list[str]], dict[str, str]],
) -> str:
    """The one whole id ``text`` names (a whole id is taken as it is).

    ``by_prefix(p, n)`` / ``by_tail(t, n)``: up to ``n`` ids starting with
    ``p`` / whose short id starts with ``t``; ``titles`` reads the candidates'
    titles for the error naming them.
    """
    text = text.strip().lower()
    if len(text) == ID_LENGTH:
        return text
    if len(text) < MIN_LOOKUP_LENGTH:
        raise NotFoundError(f"task {text} not found", NOT_FOUND_HINT)
    found = list(by_prefix(text, CANDIDATES))
    tail = tail_lookup(text)
    if tail is not None:
        found += [i for i in by_tail(tail, CANDIDATES) if matches_tail(i, text)]
    found = list(dict.fromkeys(found))
    if not found:
        raise NotFoundError(f"task {text} not found", NOT_FOUND_HINT)
    if len(found) > 1:
        raise ambiguous(text, found, titles(found[: CANDIDATES - 1]))
    return found[0]


def ambiguous(text: str, ids: Iterable[str], titles: dict[str, str]) -> UsageError:
    """The error for an id matching several tasks, naming (up to 5 of) them."""
    ids = list(ids)
    named = [f"{i} ({_clip(titles.get(i, ''))})" for i in ids[: CANDIDATES - 1]]
    more = ", …" if len(ids) >= CANDIDATES else ""
    return UsageError(
        f"task id {text} is ambiguous: it matches {', '.join(named)}{more}",
        AMBIGUOUS_HINT,
    )


def _clip(title: str, width: int = 30) -> str:
    title = " ".join(title.split())
    return title if len(title) <= width else title[: width - 1] + "…"
