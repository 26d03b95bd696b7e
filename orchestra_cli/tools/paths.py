"""Keeping the file tools inside the task's workspace.

A path is resolved (symlinks followed) and must land in the workspace. Because
a command running beside a file tool can swap a directory for a symlink
between that check and the open, each open is checked again on the
descriptor itself (``/proc/self/fd``), and a write creates its file relative
to an open descriptor of the checked directory, never following a final
symlink (Linux).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from orchestra_cli.tools.base import ToolInputError


class PathRefused(ToolInputError):
    """A path outside the workspace, or one the tool may not use."""


def resolve(workspace: Path, path: str) -> Path:
    """The real path ``path`` names, relative to the workspace; refused outside it."""
    if not path or "\0" in path:
        raise PathRefused("file_path is empty or contains a NUL byte")
    root = workspace.resolve()
    given = Path(path).expanduser() if path.startswith("~") else Path(path)
    real = (given if given.is_absolute() else root / given).resolve()
    if not inside(root, real):
        raise PathRefused(
            f"{path} is outside the workspace ({root}); use a path inside it "
            "(relative paths start there)"
        )
    return real


def inside(root: Path, real: Path) -> bool:
    return real == root or root in real.parents


def shown(workspace: Path, real: Path) -> str:
    """A path as the model is shown it: relative to the workspace."""
    root = workspace.resolve()
    return "." if real == root else str(real.relative_to(root))


def _fd_path(fd: int) -> Path:
    return Path(os.readlink(f"/proc/self/fd/{fd}"))


def _check_fd(workspace: Path, fd: int, path: Path) -> None:
    try:
        real = _fd_path(fd)
    except OSError:  # no /proc: the path check above is all there is
        return
    if not inside(workspace.resolve(), real):
        os.close(fd)
        raise PathRefused(f"{path} left the workspace while it was opened")


def read_bytes(workspace: Path, path: Path, most: int) -> bytes:
    """The content of a regular file of at most ``most`` bytes inside the workspace."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ToolInputError(f"{shown(workspace, path)} does not exist") from None
    except IsADirectoryError:
        raise ToolInputError(f"{shown(workspace, path)} is a directory") from None
    except OSError as exc:
        raise ToolInputError(f"cannot open {shown(workspace, path)}: {exc.strerror}") from None
    _check_fd(workspace, fd, path)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        what = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise ToolInputError(f"{shown(workspace, path)} is {what}")
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > most:
            raise ToolInputError(
                f"{shown(workspace, path)} is {info.st_size} bytes, over the {most}-byte limit"
            )
        data = handle.read(most + 1)
    if len(data) > most:
        raise ToolInputError(f"{shown(workspace, path)} is over the {most}-byte limit")
    return data


def write_bytes(workspace: Path, path: Path, data: bytes) -> bool:
    """Replace (or create) ``path`` with ``data`` atomically; True if it was created.

    Parent directories are made as needed. The file is written under a temporary
    name in its (checked) directory and renamed over the old one, so a reader
    never sees half a file and a symlink at ``path`` is replaced, not followed.
    """
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToolInputError(f"cannot create {shown(workspace, parent)}: {exc.strerror}") from None
    resolve(workspace, str(parent))  # mkdir may have followed a symlink made meanwhile
    try:
        dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ToolInputError(f"cannot open {shown(workspace, parent)}: {exc.strerror}") from None
    _check_fd(workspace, dir_fd, parent)
    try:
        return _replace_in(dir_fd, path.name, data, workspace, path)
    finally:
        os.close(dir_fd)


def _replace_in(dir_fd: int, name: str, data: bytes, workspace: Path, path: Path) -> bool:
    try:
        old = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        old = None
    if old is not None and stat.S_ISDIR(old.st_mode):
        raise ToolInputError(f"{shown(workspace, path)} is a directory")
    mode = stat.S_IMODE(old.st_mode) if old is not None and stat.S_ISREG(old.st_mode) else 0o644
    temp = f".{name}.orchestra-{os.getpid()}-{id(data):x}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temp, mode, dir_fd=dir_fd)
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise ToolInputError(f"cannot write {shown(workspace, path)}: {exc.strerror}") from None
    return old is None
