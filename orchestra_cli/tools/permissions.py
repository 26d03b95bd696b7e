"""Which tool calls may run: ``allow`` / ``ask`` / ``deny`` lists of tool-name patterns.

A rule is an fnmatch pattern over the tool's name (``Bash``, ``mcp__git__*``),
optionally with a pattern over the call's main argument in parentheses:
``Bash(git *)`` matches Bash calls whose command matches ``git *``,
``Write(docs/*)`` file tools by ``file_path``, ``WebFetch(https://docs.*)`` by
``url``. ``deny`` wins over everything, then ``ask``, then ``allow``; a call
that matches no rule is denied.

A shell command is judged by its parts (split at ``;``, ``&&``, ``||``, ``|``,
``&`` and newlines, outside quotes): a ``deny`` or ``ask`` rule matches when any
part matches, an ``allow`` rule with a pattern only when every part matches
one, so ``Bash(git *)`` does not allow ``git status; rm -rf ~``. A command with
``$(…)``, backticks or ``<(…)`` is allowed only by a bare ``Bash`` rule.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestra_cli.tools.config import parse_rule

# the input field a rule's "(…)" matches, by tool
SUBJECT_FIELDS = {
    "Bash": "command",
    "Read": "file_path",
    "Write": "file_path",
    "Edit": "file_path",
    "WebFetch": "url",
    "Glob": "pattern",
    "Grep": "pattern",
}


class Decision(enum.StrEnum):
    ALLOW = "allow"
    ASK = "ask"  # needs a person's approval first
    DENY = "deny"


@dataclass(frozen=True)
class Rule:
    name: str  # fnmatch pattern over the tool name
    arg: str | None  # fnmatch pattern over the call's subject, or None for any call
    text: str  # as written, for reasons

    @classmethod
    def parse(cls, text: str) -> Rule:
        """A rule from its text; ``ValueError`` names what is wrong."""
        name, arg = parse_rule(text)
        return cls(name, arg, text)

    def names(self, tool: str) -> bool:
        return fnmatch.fnmatchcase(tool, self.name)

    def matches(self, tool: str, input: Mapping[str, Any] | None) -> bool:
        """Whether a call matches; with no input, only rules without ``(…)`` match."""
        if not self.names(tool):
            return False
        if self.arg is None:
            return True
        field = SUBJECT_FIELDS.get(tool)
        subject = input.get(field) if input is not None and field else None
        return isinstance(subject, str) and fnmatch.fnmatchcase(subject, self.arg)


@dataclass(frozen=True)
class Ruling:
    decision: Decision
    rule: str | None  # the rule that decided, None when no rule matched

    @property
    def reason(self) -> str:
        if self.rule is None:
            return "no permissions rule allows it"
        return f"permissions.{self.decision.value} has {self.rule!r}"


class Permissions:
    """Decides tool calls from the three lists of rules."""

    def __init__(
        self, allow: Iterable[str] = (), ask: Iterable[str] = (), deny: Iterable[str] = ()
    ) -> None:
        self.allow = [Rule.parse(text) for text in allow]
        self.ask = [Rule.parse(text) for text in ask]
        self.deny = [Rule.parse(text) for text in deny]

    def decide(self, tool: str, input: Mapping[str, Any] | None = None) -> Ruling:
        """The ruling for one call (``deny`` before ``ask`` before ``allow``)."""
        command = input.get("command") if tool == "Bash" and input is not None else None
        if isinstance(command, str):
            return self._decide_command(command)
        for decision, rules in (
            (Decision.DENY, self.deny),
            (Decision.ASK, self.ask),
            (Decision.ALLOW, self.allow),
        ):
            for rule in rules:
                if rule.matches(tool, input):
                    return Ruling(decision, rule.text)
        return Ruling(Decision.DENY, None)

    def _decide_command(self, command: str) -> Ruling:
        parts = split_command(command)
        pieces = [{"command": part} for part in parts or [command]]
        for decision, rules in ((Decision.DENY, self.deny), (Decision.ASK, self.ask)):
            for rule in rules:
                if any(rule.matches("Bash", piece) for piece in pieces):
                    return Ruling(decision, rule.text)
        for rule in self.allow:
            if rule.arg is None and rule.names("Bash"):
                return Ruling(Decision.ALLOW, rule.text)
        if parts is None:
            return Ruling(Decision.DENY, None)
        deciding = []
        for piece in pieces:
            allowing = next((r for r in self.allow if r.matches("Bash", piece)), None)
            if allowing is None:
                return Ruling(Decision.DENY, None)
            deciding.append(allowing.text)
        return Ruling(Decision.ALLOW, ", ".join(dict.fromkeys(deciding)))

    def offered(self, tool: str) -> bool:
        """Whether the model is shown the tool at all: not denied outright, and some
        ``allow`` or ``ask`` rule could let a call of it run."""
        if any(rule.arg is None and rule.names(tool) for rule in self.deny):
            return False
        return any(rule.names(tool) for rule in (*self.ask, *self.allow))


_SEPARATORS = ("&&", "||", ";", "|", "&", "\n")


def split_command(command: str) -> list[str] | None:
    """The simple commands of a shell command line, split outside quotes; None when it
    substitutes commands (``$(…)``, backticks, ``<(…)``), whose parts cannot be judged."""
    parts, current, quote, i = [], [], "", 0
    while i < len(command):
        ch = command[i]
        if quote != "'" and (ch == "`" or command.startswith(("$(", "<(", ">("), i)):
            return None
        if ch == "\\" and quote != "'" and i + 1 < len(command):
            current.append(command[i : i + 2])
            i += 2
            continue
        if ch in "'\"" and quote in ("", ch):
            quote = "" if quote else ch
        elif not quote:
            sep = next((s for s in _SEPARATORS if command.startswith(s, i)), None)
            if sep == "&" and _redirect(command, i):
                sep = None
            if sep is not None:
                parts.append("".join(current))
                current = []
                i += len(sep)
                continue
        current.append(ch)
        i += 1
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def _redirect(command: str, i: int) -> bool:
    """Whether the ``&`` at ``i`` is part of a redirection (``2>&1``, ``&>``, ``<&0``)."""
    return (i > 0 and command[i - 1] in "<>") or command.startswith("&>", i)
