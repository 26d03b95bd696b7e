"""allow / ask / deny rules: precedence, patterns, and what is offered."""

from __future__ import annotations

import pytest

from orchestra_cli.tools.permissions import Decision, Permissions, Rule, split_command


def test_deny_wins_over_ask_and_allow() -> None:
    rules = Permissions(allow=["Bash"], ask=["Bash"], deny=["Bash"])
    assert rules.decide("Bash").decision is Decision.DENY


def test_ask_wins_over_allow() -> None:
    ruling = Permissions(allow=["*"], ask=["Write"]).decide("Write")
    assert ruling.decision is Decision.ASK and ruling.reason == "permissions.ask has 'Write'"


def test_a_tool_matching_no_rule_is_denied() -> None:
    ruling = Permissions(allow=["Read"]).decide("Write")
    assert ruling.decision is Decision.DENY and ruling.reason == "no permissions rule allows it"


def test_patterns_match_tool_names_like_fnmatch() -> None:
    rules = Permissions(allow=["mcp__git__*", "Gr?p"], deny=["mcp__git__git_commit"])
    assert rules.decide("mcp__git__git_status").decision is Decision.ALLOW
    assert rules.decide("mcp__git__git_commit").decision is Decision.DENY
    assert rules.decide("mcp__github__list").decision is Decision.DENY
    assert rules.decide("Grep").decision is Decision.ALLOW
    assert rules.decide("grep").decision is Decision.DENY  # names are case-sensitive


def test_a_rule_with_an_argument_pattern_matches_the_calls_subject() -> None:
    rules = Permissions(allow=["Bash(git *)", "Write(docs/*)"], deny=["Bash(git push*)"])
    assert rules.decide("Bash", {"command": "git status"}).decision is Decision.ALLOW
    assert rules.decide("Bash", {"command": "git push origin"}).decision is Decision.DENY
    assert rules.decide("Bash", {"command": "rm -rf /"}).decision is Decision.DENY
    assert rules.decide("Write", {"file_path": "docs/design.md"}).decision is Decision.ALLOW
    assert rules.decide("Write", {"file_path": "src/x.py"}).decision is Decision.DENY
    assert rules.decide("Bash").decision is Decision.DENY  # no input: only bare rules match


def test_a_tool_is_offered_when_some_call_of_it_could_run() -> None:
    rules = Permissions(allow=["Bash(git *)", "Read"], ask=["Write"], deny=["Edit", "Read(x*)"])
    assert rules.offered("Bash") and rules.offered("Read") and rules.offered("Write")
    assert not rules.offered("Edit")  # denied outright
    assert not rules.offered("Glob")  # no rule


@pytest.mark.parametrize("text", ["", "Bash(", "has space", "Bash)(x"])
def test_a_malformed_rule_is_refused_with_examples(text: str) -> None:
    with pytest.raises(ValueError, match="is not a tool-name pattern"):
        Rule.parse(text)


@pytest.mark.parametrize(
    ("command", "parts"),
    [
        ("git status; rm -rf ~", ["git status", "rm -rf ~"]),
        ("a && b || c | d & e\nf", ["a", "b", "c", "d", "e", "f"]),
        ("echo 'a; b' \"c && d\"", ["echo 'a; b' \"c && d\""]),
        ("pytest -q 2>&1 | tail -5", ["pytest -q 2>&1", "tail -5"]),
        ("make &> log", ["make &> log"]),
        ("echo $(id)", None),
        ("echo `id`", None),
        ("diff <(ls a) <(ls b)", None),
        ("echo '$(not run)'", ["echo '$(not run)'"]),
    ],
)
def test_shell_commands_are_split_into_their_parts_outside_quotes(
    command: str, parts: list[str] | None
) -> None:
    assert split_command(command) == parts


def test_an_allow_pattern_must_match_every_part_of_a_command() -> None:
    rules = Permissions(allow=["Bash(git *)", "Bash(pytest*)"])
    assert rules.decide("Bash", {"command": "git add . && pytest -q"}).decision is Decision.ALLOW
    for sneaky in ("git status; rm -rf ~", "git log | sh", "git $(rm -rf ~)", "git `id`"):
        assert rules.decide("Bash", {"command": sneaky}).decision is Decision.DENY, sneaky


def test_a_deny_or_ask_pattern_matching_any_part_decides() -> None:
    rules = Permissions(allow=["Bash"], ask=["Bash(rm *)"], deny=["Bash(git push*)"])
    assert rules.decide("Bash", {"command": "make && git push"}).decision is Decision.DENY
    assert rules.decide("Bash", {"command": "ls; rm -rf build"}).decision is Decision.ASK
    assert rules.decide("Bash", {"command": "echo $(date)"}).decision is Decision.ALLOW
