"""Glob and Grep: patterns, output modes, and what they must never read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestra_cli.tools.base import Limits, ToolContext
from orchestra_cli.tools.search import Glob, Grep, glob_regex


@pytest.fixture
def tree(workspace: Path) -> Path:
    files = {
        "README.md": "# Title\nTODO: write\n",
        "src/app.py": "import os\n\ndef main():\n    return 1  # TODO\n",
        "src/util/helpers.py": "def helper():\n    pass\n",
        "src/web/index.js": "const x = 1; // todo\n",
        "tests/test_app.py": "def test_main():\n    assert True\n",
        ".git/config": "TODO in git\n",
    }
    for i, (name, text) in enumerate(files.items()):
        path = workspace / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.utime(path, (1_000_000 + i, 1_000_000 + i))  # later files are newer
    return workspace


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("*.py", "app.py", True),
        ("*.py", "src/app.py", False),
        ("**/*.py", "app.py", True),
        ("**/*.py", "src/util/helpers.py", True),
        ("src/**", "src/util/helpers.py", True),
        ("src/*/h?lpers.py", "src/util/helpers.py", True),
        ("*.{js,ts}", "index.ts", True),
        ("*.{js,ts}", "index.py", False),
        ("[!a]*.py", "app.py", False),
        ("file.txt", "file.txt", True),
        ("file.txt", "file_txt", False),
    ],
)
def test_glob_patterns_read_like_claude_code(pattern: str, path: str, matches: bool) -> None:
    assert bool(glob_regex(pattern).match(path)) is matches


def test_glob_lists_matching_files_newest_first_relative_to_the_workspace(
    ctx: ToolContext, tree: Path
) -> None:
    out = Glob().run({"pattern": "**/*.py"}, ctx)
    assert out.content.splitlines() == ["tests/test_app.py", "src/util/helpers.py", "src/app.py"]


def test_glob_in_a_subdirectory(ctx: ToolContext, tree: Path) -> None:
    out = Glob().run({"pattern": "*.py", "path": "src"}, ctx)
    assert out.content == "src/app.py"


def test_glob_with_no_match_says_so(ctx: ToolContext, tree: Path) -> None:
    assert Glob().run({"pattern": "**/*.rs"}, ctx).content == "No files found"


def test_glob_skips_git_and_never_enters_a_symlinked_directory(
    ctx: ToolContext, tree: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.py").write_text("x")
    (tree / "escape").symlink_to(outside)
    out = Glob().run({"pattern": "**/*"}, ctx)
    assert "secret.py" not in out.content and ".git" not in out.content


def test_glob_refuses_a_path_outside_the_workspace(ctx: ToolContext) -> None:
    out = Glob().run({"pattern": "*", "path": "/etc"}, ctx)
    assert out.is_error and "outside the workspace" in out.content


def test_glob_caps_its_listing(workspace: Path) -> None:
    for i in range(30):
        (workspace / f"f{i}.txt").write_text("")
    ctx = ToolContext(workspace=workspace, limits=Limits(search_results=10))
    lines = Glob().run({"pattern": "*.txt"}, ctx).content.splitlines()
    assert len(lines) == 11 and lines[-1] == "[20 more files not shown; narrow the search]"


def test_grep_lists_files_with_matches_by_default(ctx: ToolContext, tree: Path) -> None:
    out = Grep().run({"pattern": "TODO"}, ctx)
    assert out.content.splitlines() == ["src/app.py", "README.md"]  # not .git


def test_grep_case_insensitive_with_a_glob_filter(ctx: ToolContext, tree: Path) -> None:
    out = Grep().run({"pattern": "todo", "-i": True, "glob": "*.js"}, ctx)
    assert out.content == "src/web/index.js"


def test_grep_type_filter(ctx: ToolContext, tree: Path) -> None:
    out = Grep().run({"pattern": "def ", "type": "py", "output_mode": "count"}, ctx)
    assert out.content.splitlines() == [
        "tests/test_app.py:1",
        "src/util/helpers.py:1",
        "src/app.py:1",
    ]


def test_grep_content_mode_shows_numbered_lines_with_context(ctx: ToolContext, tree: Path) -> None:
    out = Grep().run({"pattern": "return", "output_mode": "content", "-B": 1}, ctx)
    assert out.content.splitlines() == [
        "src/app.py-3-def main():",
        "src/app.py:4:    return 1  # TODO",
    ]


def test_grep_content_mode_separates_distant_groups(ctx: ToolContext, workspace: Path) -> None:
    (workspace / "f.txt").write_text("hit\na\nb\nc\nhit\n")
    out = Grep().run({"pattern": "hit", "output_mode": "content", "-n": False}, ctx)
    assert out.content.splitlines() == ["f.txt:hit", "f.txt:hit"]
    out = Grep().run({"pattern": "hit", "output_mode": "content", "-A": 1}, ctx)
    assert out.content.splitlines() == ["f.txt:1:hit", "f.txt-2-a", "--", "f.txt:5:hit"]


def test_grep_multiline_matches_across_lines(ctx: ToolContext, workspace: Path) -> None:
    (workspace / "f.py").write_text("def a():\n    pass\n\ndef b():\n    return\n")
    args = {"pattern": r"def a\(\):.*?pass", "multiline": True, "output_mode": "content"}
    assert Grep().run(args, ctx).content.splitlines() == ["f.py:1:def a():", "f.py:2:    pass"]


def test_grep_head_limit_keeps_the_first_entries(ctx: ToolContext, tree: Path) -> None:
    out = Grep().run({"pattern": ".", "head_limit": 2}, ctx).content.splitlines()
    assert len(out) == 3 and out[-1].startswith("[")


def test_grep_skips_binary_files_and_symlinks_out_of_the_workspace(
    ctx: ToolContext, workspace: Path, tmp_path: Path
) -> None:
    (workspace / "blob.bin").write_bytes(b"needle\x00\x01")
    (tmp_path / "secret.txt").write_text("needle")
    (workspace / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (workspace / "ok.txt").write_text("needle")
    assert Grep().run({"pattern": "needle"}, ctx).content == "ok.txt"


def test_grep_with_a_bad_regex_is_an_error_result(ctx: ToolContext) -> None:
    out = Grep().run({"pattern": "(unclosed"}, ctx)
    assert out.is_error and "not a valid regular expression" in out.content


def test_grep_with_an_unknown_output_mode_is_an_error_result(ctx: ToolContext) -> None:
    out = Grep().run({"pattern": "x", "output_mode": "lines"}, ctx)
    assert out.is_error and "output_mode" in out.content


def test_glob_takes_an_absolute_pattern_inside_the_workspace(ctx: ToolContext, tree: Path) -> None:
    out = Glob().run({"pattern": f"{tree.resolve()}/src/*.py"}, ctx)
    assert out.content == "src/app.py"
    out = Glob().run({"pattern": "/etc/*"}, ctx)
    assert out.is_error and "not under the searched directory" in out.content
