"""The bench's printed tables: a header of right-aligned columns, a rule, then the rows."""

from __future__ import annotations

from collections.abc import Iterable


def fmt(value: float | None, spec: str) -> str:
    """``value`` formatted, or ``-`` when there is none (a failed or skipped figure)."""
    return "-" if value is None else format(value, spec)


def print_rows(header: str, notes: str, lines: Iterable[str]) -> None:
    """A blank line, ``header`` with ``notes`` after it, a rule as wide as the header, ``lines``."""
    print()
    print(f"{header}  {notes}")
    print("-" * len(header))
    for line in lines:
        print(line)
