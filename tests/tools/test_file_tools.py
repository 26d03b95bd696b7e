"""Read, Write and Edit: their behaviour, and hostile paths and files."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from orchestra_cli.errors import TaskCancelled
from orchestra_cli.tools.base import Limits, ToolContext
from orchestra_cli.tools.files import Edit, Read, Write


def test_read_numbers_lines_like_cat_n(ctx: ToolContext, workspace: Path) -> None:
    (workspace / "a.txt").write_text("one\ntwo\nthree\n")
    out = Read().run({"file_path": "a.txt"}, ctx)
    assert not out.is_error
    assert out.content == "     1\tone\n     2\ttwo\n     3\tthree"


def test_read_takes_an_absolute_path_inside_the_workspace(
    ctx: ToolContext, workspace: Path
) -> None:
    (workspace / "a.txt").write_text("x\n")
    assert Read().run({"file_path": str(workspace / "a.txt")}, ctx).content == "     1\tx"


def test_read_offset_and_limit_choose_lines_and_say_where_to_go_on(
    ctx: ToolContext, workspace: Path
) -> None:
    (workspace / "a.txt").write_text("".join(f"line {i}\n" for i in range(1, 11)))
    out = Read().run({"file_path": "a.txt", "offset": 3, "limit": 2}, ctx)
    assert out.content.splitlines() == [
        "     3\tline 3",
        "     4\tline 4",
        "[6 more lines; read on with offset 5]",
    ]


def test_read_past_the_end_is_an_error_result(ctx: ToolContext, workspace: Path) -> None:
    (workspace / "a.txt").write_text("x\n")
    out = Read().run({"file_path": "a.txt", "offset": 5}, ctx)
    assert out.is_error and "past the end" in out.content


def test_read_cuts_very_long_lines(workspace: Path) -> None:
    ctx = ToolContext(workspace=workspace, limits=Limits(line_chars=10))
    (workspace / "a.txt").write_text("x" * 50 + "\n")
    assert Read().run({"file_path": "a.txt"}, ctx).content == "     1\t" + "x" * 10 + " [line cut]"


def test_read_of_a_missing_file_is_an_error_result(ctx: ToolContext) -> None:
    out = Read().run({"file_path": "nope.txt"}, ctx)
    assert out.is_error and "does not exist" in out.content


def test_read_without_file_path_is_an_error_result_naming_the_key(ctx: ToolContext) -> None:
    out = Read().run({}, ctx)
    assert out.is_error and out.content == "Read: file_path is required (a string)"


def test_read_input_that_is_not_an_object_is_an_error_result(ctx: ToolContext) -> None:
    out = Read().run("a.txt", ctx)  # type: ignore[arg-type]
    assert out.is_error and "JSON object" in out.content


def test_read_refuses_a_binary_file(ctx: ToolContext, workspace: Path) -> None:
    (workspace / "blob.bin").write_bytes(b"\x7fELF\x00\x01\x02" * 10)
    out = Read().run({"file_path": "blob.bin"}, ctx)
    assert out.is_error and "binary file" in out.content


def test_read_shows_non_utf8_bytes_as_replacement_characters(
    ctx: ToolContext, workspace: Path
) -> None:
    (workspace / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    out = Read().run({"file_path": "latin1.txt"}, ctx)
    assert not out.is_error and out.content == "     1\tcaf\ufffd"


def test_read_refuses_a_file_over_the_size_cap(ctx: ToolContext, workspace: Path) -> None:
    (workspace / "big.txt").write_text("x" * 20_000)
    out = Read().run({"file_path": "big.txt"}, ctx)
    assert out.is_error and "over the 10000-byte limit" in out.content


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "../outside.txt", "sub/../../outside.txt", "~/.bashrc", "/"],
)
def test_read_refuses_paths_outside_the_workspace(
    ctx: ToolContext, workspace: Path, path: str
) -> None:
    (workspace / "sub").mkdir()
    (workspace.parent / "outside.txt").write_text("secret")
    out = Read().run({"file_path": path}, ctx)
    assert out.is_error and "outside the workspace" in out.content
    assert "secret" not in out.content


def test_read_refuses_a_symlink_that_leads_out_of_the_workspace(
    ctx: ToolContext, workspace: Path
) -> None:
    (workspace.parent / "outside.txt").write_text("secret")
    (workspace / "link.txt").symlink_to(workspace.parent / "outside.txt")
    (workspace / "dirlink").symlink_to(workspace.parent)
    for path in ("link.txt", "dirlink/outside.txt"):
        out = Read().run({"file_path": path}, ctx)
        assert out.is_error and "outside the workspace" in out.content, path


def test_read_follows_a_symlink_that_stays_in_the_workspace(
    ctx: ToolContext, workspace: Path
) -> None:
    (workspace / "real.txt").write_text("ok\n")
    (workspace / "alias.txt").symlink_to("real.txt")
    assert Read().run({"file_path": "alias.txt"}, ctx).content == "     1\tok"


def test_read_refuses_a_fifo_instead_of_hanging(ctx: ToolContext, workspace: Path) -> None:
    os.mkfifo(workspace / "pipe")
    out = Read().run({"file_path": "pipe"}, ctx)
    assert out.is_error and "not a regular file" in out.content


def test_a_tool_raises_task_cancelled_once_the_cancel_event_is_set(workspace: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(TaskCancelled):
        Read().run({"file_path": "a.txt"}, ToolContext(workspace=workspace, cancel=cancel))


def test_write_creates_a_file_and_its_parent_directories(ctx: ToolContext, workspace: Path) -> None:
    out = Write().run({"file_path": "src/pkg/mod.py", "content": "x = 1\n"}, ctx)
    assert out.content == "Created src/pkg/mod.py (6 bytes)"
    assert (workspace / "src/pkg/mod.py").read_text() == "x = 1\n"


def test_write_replaces_a_file_and_keeps_its_mode(ctx: ToolContext, workspace: Path) -> None:
    script = workspace / "run.sh"
    script.write_text("old")
    script.chmod(0o755)
    out = Write().run({"file_path": "run.sh", "content": "new"}, ctx)
    assert out.content == "Wrote run.sh (3 bytes)"
    assert script.read_text() == "new" and script.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in workspace.iterdir()) == ["run.sh"]  # no temporary left


def test_write_refuses_content_over_the_size_cap(ctx: ToolContext, workspace: Path) -> None:
    out = Write().run({"file_path": "big.txt", "content": "x" * 20_000}, ctx)
    assert out.is_error and "over the 10000-byte limit" in out.content
    assert not (workspace / "big.txt").exists()


@pytest.mark.parametrize("path", ["../escape.txt", "/tmp/orchestra-escape.txt", "a/../../x"])
def test_write_refuses_paths_outside_the_workspace(
    ctx: ToolContext, workspace: Path, path: str
) -> None:
    out = Write().run({"file_path": path, "content": "pwned"}, ctx)
    assert out.is_error and "outside the workspace" in out.content
    assert not (workspace.parent / "escape.txt").exists()
    assert not Path("/tmp/orchestra-escape.txt").exists()


def test_write_through_a_symlinked_directory_out_of_the_workspace_is_refused(
    ctx: ToolContext, workspace: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (workspace / "out").symlink_to(outside)
    out = Write().run({"file_path": "out/x.txt", "content": "pwned"}, ctx)
    assert out.is_error and "outside the workspace" in out.content
    assert list(outside.iterdir()) == []


def test_write_through_a_symlink_inside_the_workspace_changes_its_target(
    ctx: ToolContext, workspace: Path
) -> None:
    target = workspace / "target.txt"
    target.write_text("old")
    (workspace / "link.txt").symlink_to("target.txt")
    out = Write().run({"file_path": "link.txt", "content": "new"}, ctx)
    assert out.content == "Wrote target.txt (3 bytes)"
    assert target.read_text() == "new" and (workspace / "link.txt").is_symlink()


def test_write_onto_a_directory_is_an_error_result(ctx: ToolContext, workspace: Path) -> None:
    (workspace / "d").mkdir()
    out = Write().run({"file_path": "d", "content": "x"}, ctx)
    assert out.is_error and "is a directory" in out.content


def test_edit_replaces_a_unique_string(ctx: ToolContext, workspace: Path) -> None:
    (workspace / "m.py").write_text("a = 1\nb = 2\n")
    out = Edit().run({"file_path": "m.py", "old_string": "b = 2", "new_string": "b = 3"}, ctx)
    assert out.content == "Edited m.py: 1 replacement (first at line 2)"
    assert (workspace / "m.py").read_text() == "a = 1\nb = 3\n"


def test_edit_refuses_a_string_that_is_not_unique(ctx: ToolContext, workspace: Path) -> None:
    (workspace / "m.py").write_text("x\nx\n")
    out = Edit().run({"file_path": "m.py", "old_string": "x", "new_string": "y"}, ctx)
    assert out.is_error and "occurs 2 times" in out.content
    assert (workspace / "m.py").read_text() == "x\nx\n"


def test_edit_replace_all_replaces_every_occurrence(ctx: ToolContext, workspace: Path) -> None:
    (workspace / "m.py").write_text("x\nx\n")
    edit = {"file_path": "m.py", "old_string": "x", "new_string": "y", "replace_all": True}
    assert Edit().run(edit, ctx).content == "Edited m.py: 2 replacements (first at line 1)"
    assert (workspace / "m.py").read_text() == "y\ny\n"


def test_edit_of_a_missing_string_is_an_error_result(ctx: ToolContext, workspace: Path) -> None:
    (workspace / "m.py").write_text("a\n")
    out = Edit().run({"file_path": "m.py", "old_string": "zzz", "new_string": "y"}, ctx)
    assert out.is_error and "was not found" in out.content


def test_edit_with_the_same_old_and_new_string_is_an_error_result(
    ctx: ToolContext, workspace: Path
) -> None:
    (workspace / "m.py").write_text("a\n")
    out = Edit().run({"file_path": "m.py", "old_string": "a", "new_string": "a"}, ctx)
    assert out.is_error and "the same" in out.content


def test_edit_with_an_empty_old_string_creates_a_new_file(
    ctx: ToolContext, workspace: Path
) -> None:
    out = Edit().run({"file_path": "new.txt", "old_string": "", "new_string": "hi"}, ctx)
    assert out.content == "Created new.txt (2 bytes)"
    again = Edit().run({"file_path": "new.txt", "old_string": "", "new_string": "hi!"}, ctx)
    assert again.is_error and "exists" in again.content


def test_edit_keeps_bytes_that_are_not_utf8(ctx: ToolContext, workspace: Path) -> None:
    (workspace / "l1.txt").write_bytes(b"caf\xe9 = 1\n")
    edit = {"file_path": "l1.txt", "old_string": "= 1", "new_string": "= 2"}
    assert not Edit().run(edit, ctx).is_error
    assert (workspace / "l1.txt").read_bytes() == b"caf\xe9 = 2\n"


def test_edit_refuses_a_symlink_out_of_the_workspace(
    ctx: ToolContext, workspace: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "victim.txt"
    outside.write_text("a = 1\n")
    (workspace / "v.txt").symlink_to(outside)
    out = Edit().run({"file_path": "v.txt", "old_string": "1", "new_string": "2"}, ctx)
    assert out.is_error and "outside the workspace" in out.content
    assert outside.read_text() == "a = 1\n"


def test_an_open_rechecks_a_path_swapped_for_a_symlink_after_its_check(
    workspace: Path, tmp_path: Path
) -> None:
    from orchestra_cli.tools import paths
    from orchestra_cli.tools.base import ToolInputError

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_text("secret")
    checked = paths.resolve(workspace, "d/f.txt")  # checked while d did not exist
    (workspace / "d").symlink_to(outside)  # then swapped in
    with pytest.raises(paths.PathRefused):
        paths.read_bytes(workspace, checked, 1000)
    with pytest.raises(paths.PathRefused):
        paths.write_bytes(workspace, checked, b"pwned")
    (workspace / "f.txt").symlink_to(outside / "f.txt")
    with pytest.raises(ToolInputError):  # a final symlink is never followed by an open
        paths.read_bytes(workspace, workspace / "f.txt", 1000)
    assert (outside / "f.txt").read_text() == "secret"


def test_read_of_a_directory_is_an_error_result(ctx: ToolContext, workspace: Path) -> None:
    (workspace / "d").mkdir()
    out = Read().run({"file_path": "d"}, ctx)
    assert out.is_error and "is a directory" in out.content
