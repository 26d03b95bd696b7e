"""The file tools: ``Read``, ``Write`` and ``Edit``, shaped like Claude Code's."""

from __future__ import annotations

from typing import Any, ClassVar

from orchestra_cli.tools import paths
from orchestra_cli.tools.base import Args, BuiltinTool, ToolContext, ToolInputError, ToolOutput

_PATH_HELP = "absolute, or relative to the workspace (the working directory)"
BINARY_SNIFF_BYTES = 8192


def read_text(ctx: ToolContext, path: str, errors: str = "replace") -> tuple[str, str]:
    """(path as shown, text) of a text file in the workspace; binary files are refused.

    Bytes that are not UTF-8 are shown as U+FFFD, or kept (``surrogateescape``) by an edit.
    """
    real = paths.resolve(ctx.workspace, path)
    data = paths.read_bytes(ctx.workspace, real, ctx.limits.max_file_bytes)
    name = paths.shown(ctx.workspace, real)
    if b"\0" in data[:BINARY_SNIFF_BYTES]:
        raise ToolInputError(f"{name} is a binary file ({len(data)} bytes); it is not shown")
    return name, data.decode("utf-8", errors=errors)


class Read(BuiltinTool):
    name = "Read"
    description = (
        "Read a text file from the workspace. Output is numbered like `cat -n` (line number, "
        "tab, line). Reads up to 2000 lines from the start unless offset/limit say otherwise; "
        "long lines are cut. Binary files are refused."
    )
    input_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "file_path": {"type": "string", "description": f"The file to read: {_PATH_HELP}"},
            "offset": {
                "type": "integer",
                "minimum": 1,
                "description": "The line number to start reading from (1 is the first line)",
            },
            "limit": {"type": "integer", "minimum": 1, "description": "How many lines to read"},
        },
        "required": ["file_path"],
        "additionalProperties": False,
    }
    idempotent = True

    def execute(self, args: Args, ctx: ToolContext) -> ToolOutput:
        name, text = read_text(ctx, args.text("file_path"))
        offset = args.integer("offset", 1, least=1) or 1
        limit = args.integer("limit", ctx.limits.read_lines, least=1) or ctx.limits.read_lines
        lines = text.splitlines()
        if not lines:
            return ToolOutput(f"({name} is empty)")
        if offset > len(lines):
            raise ToolInputError(f"offset {offset} is past the end of {name} ({len(lines)} lines)")
        chosen = lines[offset - 1 : offset - 1 + limit]
        most = ctx.limits.line_chars
        body = "\n".join(
            f"{number:>6}\t{line if len(line) <= most else line[:most] + ' [line cut]'}"
            for number, line in enumerate(chosen, start=offset)
        )
        last = offset - 1 + len(chosen)
        if last < len(lines):
            body += f"\n[{len(lines) - last} more lines; read on with offset {last + 1}]"
        return ToolOutput(body)


class Write(BuiltinTool):
    name = "Write"
    description = (
        "Write a file in the workspace, replacing it if it exists (parent directories are "
        "created). Prefer Edit to change part of an existing file."
    )
    input_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "file_path": {"type": "string", "description": f"The file to write: {_PATH_HELP}"},
            "content": {"type": "string", "description": "The content to write to the file"},
        },
        "required": ["file_path", "content"],
        "additionalProperties": False,
    }
    idempotent = True  # the same content again leaves the same file

    def execute(self, args: Args, ctx: ToolContext) -> ToolOutput:
        path, content = args.text("file_path"), args.text("content")
        real = paths.resolve(ctx.workspace, path)
        data = content.encode("utf-8", errors="replace")
        if len(data) > ctx.limits.max_file_bytes:
            raise ToolInputError(
                f"content is {len(data)} bytes, over the {ctx.limits.max_file_bytes}-byte limit"
            )
        created = paths.write_bytes(ctx.workspace, real, data)
        verb = "Created" if created else "Wrote"
        return ToolOutput(f"{verb} {paths.shown(ctx.workspace, real)} ({len(data)} bytes)")


class Edit(BuiltinTool):
    name = "Edit"
    description = (
        "Replace an exact string in a file of the workspace. old_string must occur exactly "
        "once (include surrounding lines to make it unique) unless replace_all is true. "
        "An empty old_string creates a file that does not exist yet."
    )
    input_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "file_path": {"type": "string", "description": f"The file to change: {_PATH_HELP}"},
            "old_string": {"type": "string", "description": "The exact text to replace"},
            "new_string": {
                "type": "string",
                "description": "The text to replace it with (must differ from old_string)",
            },
            "replace_all": {
                "type": "boolean",
                "default": False,
                "description": "Replace every occurrence of old_string (default false)",
            },
        },
        "required": ["file_path", "old_string", "new_string"],
        "additionalProperties": False,
    }
    idempotent = False  # a second replace_all, or a second create, would change the outcome

    def execute(self, args: Args, ctx: ToolContext) -> ToolOutput:
        path, old, new = args.text("file_path"), args.text("old_string"), args.text("new_string")
        replace_all = args.flag("replace_all")
        if old == new:
            raise ToolInputError("old_string and new_string are the same; nothing to change")
        real = paths.resolve(ctx.workspace, path)
        if old == "" and not real.exists():
            return Write().execute(Args(self.name, {"file_path": path, "content": new}), ctx)
        name, text = read_text(ctx, path, errors="surrogateescape")
        if old == "":
            raise ToolInputError(f"old_string is empty but {name} exists; say what to replace")
        count = text.count(old)
        if count == 0:
            raise ToolInputError(f"old_string was not found in {name}; Read it and copy exactly")
        if count > 1 and not replace_all:
            raise ToolInputError(
                f"old_string occurs {count} times in {name}; include more surrounding text to "
                "make it unique, or set replace_all"
            )
        line = text[: text.index(old)].count("\n") + 1
        changed = text.replace(old, new) if replace_all else text.replace(old, new, 1)
        try:
            data = changed.encode("utf-8", errors="surrogateescape")
        except UnicodeEncodeError:
            raise ToolInputError("new_string contains text that is not valid Unicode") from None
        if len(data) > ctx.limits.max_file_bytes:
            raise ToolInputError(f"the edited {name} would be over the size limit")
        paths.write_bytes(ctx.workspace, real, data)
        done = f"{count} replacements" if replace_all and count > 1 else "1 replacement"
        return ToolOutput(f"Edited {name}: {done} (first at line {line})")
