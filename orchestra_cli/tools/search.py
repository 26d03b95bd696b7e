"""The search tools: ``Glob`` (files by name) and ``Grep`` (files by content).

Pure Python (``os.walk`` and ``re``): no ripgrep to install. Symlinked
directories are not entered, ``.git`` is skipped, and a symlinked file is only
read when it resolves inside the workspace.
"""

from __future__ import annotations

import bisect
import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from orchestra_cli.tools import paths
from orchestra_cli.tools.base import Args, BuiltinTool, ToolContext, ToolInputError, ToolOutput
from orchestra_cli.tools.files import BINARY_SNIFF_BYTES

SKIPPED_DIRS = frozenset({".git", ".hg", ".svn"})
FILE_TYPES = {
    "py": (".py", ".pyi"),
    "js": (".js", ".jsx", ".mjs", ".cjs"),
    "ts": (".ts", ".tsx"),
    "go": (".go",),
    "rust": (".rs",),
    "java": (".java",),
    "c": (".c", ".h"),
    "cpp": (".cc", ".cpp", ".cxx", ".hpp", ".hh", ".h"),
    "sh": (".sh", ".bash"),
    "md": (".md", ".markdown"),
    "yaml": (".yaml", ".yml"),
    "json": (".json",),
    "toml": (".toml",),
    "html": (".html", ".htm"),
    "css": (".css",),
    "sql": (".sql",),
}


@functools.lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as a regex over '/'-separated relative paths: ``**``, ``*``, ``?``,
    ``[…]`` and ``{a,b}``, as ripgrep and Claude Code's Glob read them."""
    out, i, depth = [], 0, 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        i += 1
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        elif ch == "{":
            out.append("(?:")
            depth += 1
        elif ch == "}" and depth:
            out.append(")")
            depth -= 1
        elif ch == "," and depth:
            out.append("|")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out) + ")" * depth + r"\Z")


def _walk(root: Path, base: Path) -> Iterator[tuple[Path, str]]:
    """Every file under ``base`` as (path, path relative to ``base``), symlinked dirs not
    entered."""
    if base.is_file():
        yield base, base.name
        return
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
        here = Path(dirpath)
        for filename in filenames:
            path = here / filename
            yield path, path.relative_to(base).as_posix()


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def _base(args: Args, ctx: ToolContext) -> Path:
    base = paths.resolve(ctx.workspace, args.optional_text("path") or ".")
    if not base.exists():
        raise ToolInputError(f"{paths.shown(ctx.workspace, base)} does not exist")
    return base


def _listing(entries: list[str], limit: int, what: str) -> str:
    if not entries:
        return f"No {what} found"
    text = "\n".join(entries[:limit])
    if len(entries) > limit:
        text += f"\n[{len(entries) - limit} more {what} not shown; narrow the search]"
    return text


class Glob(BuiltinTool):
    name = "Glob"
    description = (
        "Find files in the workspace by name pattern, such as `**/*.py` or `src/**/test_*.py` "
        "(`*` stays within a directory, `**` spans directories, `{a,b}` alternates). "
        "Paths come back relative to the workspace, most recently modified first."
    )
    input_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "pattern": {"type": "string", "description": "The glob pattern to match files against"},
            "path": {
                "type": "string",
                "description": "The directory to search in (default: the workspace)",
            },
        },
        "required": ["pattern"],
        "additionalProperties": False,
    }
    idempotent = True

    def execute(self, args: Args, ctx: ToolContext) -> ToolOutput:
        base = _base(args, ctx)
        pattern = glob_regex(self._relative(args.text("pattern"), base))
        found = []
        for path, relative in _walk(ctx.workspace.resolve(), base):
            if pattern.match(relative):
                found.append(path)
                ctx.check_cancel()
        found.sort(key=_mtime, reverse=True)
        shown = [paths.shown(ctx.workspace, path) for path in found]
        return ToolOutput(_listing(shown, ctx.limits.search_results, "files"))

    @staticmethod
    def _relative(pattern: str, base: Path) -> str:
        """The pattern relative to the search directory (an absolute one must be inside it)."""
        if not pattern.startswith("/"):
            return pattern.removeprefix("./")
        prefix = f"{base}/"
        if not pattern.startswith(prefix):
            raise ToolInputError(f"pattern {pattern} is not under the searched directory {base}")
        return pattern[len(prefix) :]


class Grep(BuiltinTool):
    name = "Grep"
    description = (
        "Search file contents in the workspace with a regular expression (Python `re` "
        "syntax). output_mode: files_with_matches (default: the paths), content (matching "
        "lines, with -A/-B/-C context and -n line numbers) or count (matches per file)."
    )
    input_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "pattern": {"type": "string", "description": "The regular expression to search for"},
            "path": {"type": "string", "description": "File or directory to search in"},
            "glob": {"type": "string", "description": 'Only files matching this glob ("*.py")'},
            "type": {"type": "string", "description": "Only files of this type (py, js, md…)"},
            "output_mode": {
                "type": "string",
                "enum": ["content", "files_with_matches", "count"],
                "description": "What to show (default files_with_matches)",
            },
            "-i": {"type": "boolean", "description": "Case-insensitive search"},
            "-n": {"type": "boolean", "description": "Line numbers in content mode (default on)"},
            "-A": {"type": "integer", "description": "Lines of context after each match"},
            "-B": {"type": "integer", "description": "Lines of context before each match"},
            "-C": {"type": "integer", "description": "Lines of context around each match"},
            "multiline": {
                "type": "boolean",
                "description": "Let the pattern span lines (`.` matches newlines)",
            },
            "head_limit": {"type": "integer", "description": "Show only the first N entries"},
        },
        "required": ["pattern"],
        "additionalProperties": False,
    }
    idempotent = True

    def execute(self, args: Args, ctx: ToolContext) -> ToolOutput:
        mode = args.text("output_mode", "files_with_matches")
        if mode not in ("content", "files_with_matches", "count"):
            raise ToolInputError("output_mode must be content, files_with_matches or count")
        regex = self._regex(args)
        limit = args.integer("head_limit", ctx.limits.search_results, least=1)
        entries: list[str] = []
        for path, text in self._files(args, ctx):
            name = paths.shown(ctx.workspace, path)
            hits = _hit_lines(regex, text)
            if not hits:
                continue
            if mode == "files_with_matches":
                entries.append(name)
            elif mode == "count":
                entries.append(f"{name}:{len(hits)}")
            else:
                entries.extend(_content(name, text.splitlines(), hits, args))
        return ToolOutput(_listing(entries, limit or ctx.limits.search_results, "matches"))

    @staticmethod
    def _regex(args: Args) -> re.Pattern[str]:
        flags = re.IGNORECASE if args.flag("-i") else 0
        if args.flag("multiline"):
            flags |= re.MULTILINE | re.DOTALL
        try:
            return re.compile(args.text("pattern"), flags)
        except re.error as exc:
            raise ToolInputError(f"pattern is not a valid regular expression: {exc}") from None

    @staticmethod
    def _files(args: Args, ctx: ToolContext) -> Iterator[tuple[Path, str]]:
        """Text files to search, most recently modified first."""
        root = ctx.workspace.resolve()
        wanted = args.optional_text("glob")
        kind = args.optional_text("type")
        if kind is not None and kind not in FILE_TYPES:
            raise ToolInputError(f"unknown type {kind!r}; one of {', '.join(FILE_TYPES)}")
        chosen = []
        for path, relative in _walk(root, _base(args, ctx)):
            if wanted and not glob_regex(wanted).match(relative if "/" in wanted else path.name):
                continue
            if kind and not path.name.endswith(FILE_TYPES[kind]):
                continue
            chosen.append(path)
        chosen.sort(key=_mtime, reverse=True)
        for path in chosen:
            ctx.check_cancel()
            real = path.resolve()
            if not paths.inside(root, real):
                continue  # a symlink out of the workspace: never read
            try:
                data = paths.read_bytes(ctx.workspace, real, ctx.limits.max_file_bytes)
            except ToolInputError:
                continue  # too big, unreadable, vanished: not searched
            if b"\0" not in data[:BINARY_SNIFF_BYTES]:
                yield path, data.decode("utf-8", errors="replace")


def _hit_lines(regex: re.Pattern[str], text: str) -> list[int]:
    """0-based numbers of the lines a match touches (each line once)."""
    if not regex.flags & re.DOTALL:
        return [i for i, line in enumerate(text.splitlines()) if regex.search(line)]
    starts = [0] + [m.end() for m in re.finditer("\n", text)]
    hits: set[int] = set()
    for match in regex.finditer(text):
        first = _line_of(starts, match.start())
        last = _line_of(starts, max(match.start(), match.end() - 1))
        hits.update(range(first, last + 1))
    return sorted(hits)


def _line_of(starts: list[int], offset: int) -> int:
    return bisect.bisect_right(starts, offset) - 1


def _content(name: str, lines: list[str], hits: list[int], args: Args) -> list[str]:
    around = args.integer("-C", 0) or 0
    before = args.integer("-B", around) or 0
    after = args.integer("-A", around) or 0
    numbers = args.flag("-n", True)
    hit_set = set(hits)
    shown: list[int] = []
    for hit in hits:
        for i in range(max(0, hit - before), min(len(lines), hit + after + 1)):
            if not shown or i > shown[-1]:
                shown.append(i)
    out: list[str] = []
    for k, i in enumerate(shown):
        if k and (before or after) and i != shown[k - 1] + 1:
            out.append("--")
        sep = ":" if i in hit_set else "-"
        out.append(f"{name}{sep}{i + 1}{sep}{lines[i]}" if numbers else f"{name}{sep}{lines[i]}")
    return out
