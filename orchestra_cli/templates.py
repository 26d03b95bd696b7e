"""Where the shipped templates live: the repo's ``templates/`` or the wheel's copy."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def templates_dir() -> Path:
    """``templates/`` (prompts, agent definitions, config templates)."""
    bundled = _PACKAGE / "_templates"
    if bundled.is_dir():
        return bundled
    return _PACKAGE.parent / "templates"
