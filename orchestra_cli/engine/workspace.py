"""Task workspaces and their artifacts.

Each task that uses tools runs in ``<home>/workspaces/<task id>``. Its
starting content is the tree's base (``task submit --workspace DIR``, stored
as the artifacts of ``base:<root id>``), then the files of the tasks it
depends on, applied in dependency order, then its own files so far (a task
resumed on another machine gets its workspace back). The files a task
creates, changes or deletes are saved as its artifacts in the state store
when each step ends — content-addressed, capped per file and per tree. Two
dependencies that changed the same file differently are a conflict: the later
one in the plan's order wins, and an ``artifact_conflict`` event says so.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from orchestra_cli.errors import UsageError
from orchestra_cli.models import Task
from orchestra_cli.state.base import StateStore

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 2_000_000  # a larger file stays in the workspace but is not saved
MAX_TREE_BYTES = 50_000_000  # what one task saves at most, all its files together
MAX_FILES = 5_000


def base_key(root_id: str) -> str:
    """The pseudo task id under which a tree's uploaded base is stored."""
    return f"base:{root_id}"


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha: str | None  # None: deleted
    size: int
    task_id: str


# what tools leave behind that is no one's work: never saved as an artifact
CACHE_NAMES = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"})


# A file's identity for "unchanged since the last save": size, inode, mtime and ctime (a
# tool can set the mtime back, not the ctime).
Stamp = tuple[int, int, int, int]
# A file changed this close to a scan could change again within the same timestamp tick
# with the same size: it is read again next time, until its stamp is older than that.
# The scan's time is the file system's own (``Workspace._fs_now``): its timestamps can be
# coarser than the clock's (a few ms here; whole seconds on some file systems).
RACY_NS = 100_000_000


def scan(
    directory: Path, trusted: dict[str, Stamp] | None = None
) -> tuple[dict[str, bytes | None], set[str], dict[str, Stamp]]:
    """Every regular file under ``directory`` (symlinks are not followed) but caches
    (``CACHE_NAMES``: a Bash `python3 test_app.py` writes ``__pycache__/``), by relative
    path; the paths left out for the caps (kept in the workspace, not saved); and each
    file's stamp. A file whose stamp is the one ``trusted`` holds for it is not read
    (None): it has not changed since then."""
    files: dict[str, bytes | None] = {}
    stamps: dict[str, Stamp] = {}
    skipped: set[str] = set()
    total = 0
    for path in sorted(directory.rglob("*")):
        try:
            info = path.lstat()
        except OSError:  # gone meanwhile
            continue
        if not stat.S_ISREG(info.st_mode):  # symlinks are not followed
            continue
        relative = path.relative_to(directory)
        if CACHE_NAMES.intersection(relative.parts[:-1]):
            continue
        size = info.st_size
        rel = relative.as_posix()
        if size > MAX_FILE_BYTES or total + size > MAX_TREE_BYTES or len(files) >= MAX_FILES:
            log.warning("%s (%d bytes) is over the workspace's caps: not saved", rel, size)
            skipped.add(rel)
            continue
        total += size
        stamp = (size, info.st_ino, info.st_mtime_ns, info.st_ctime_ns)
        stamps[rel] = stamp
        if trusted is not None and trusted.get(rel) == stamp:
            files[rel] = None
            continue
        try:
            files[rel] = path.read_bytes()
        except OSError:  # gone meanwhile
            del files[rel], stamps[rel]
    return files, skipped, stamps


# never uploaded as a tree's base: secrets, version control, environments, caches
EXCLUDED_NAMES = frozenset({".git", ".venv", "venv", "__pycache__", "node_modules", ".mypy_cache"})


def _excluded(rel: Path, path: Path, hidden: tuple[Path, ...]) -> bool:
    if any(part in EXCLUDED_NAMES for part in rel.parts) or rel.name.startswith(".env"):
        return True
    real = path.resolve()
    return any(real == h or h in real.parents for h in hidden)


def read_base(directory: Path, hide: tuple[Path, ...] = ()) -> dict[str, bytes]:
    """A directory's files as a tree's base (``task submit --workspace``), within the caps;
    ``.env*``, ``.git``, virtualenvs, caches and ``hide`` (orchestra's home) stay out."""
    if not directory.is_dir():
        raise UsageError(f"--workspace {directory} is not a directory", "give a directory")
    files: dict[str, bytes] = {}
    total = 0
    hidden = tuple(h.resolve() for h in hide)
    for path in sorted(directory.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        if _excluded(path.relative_to(directory), path, hidden):
            continue
        rel = path.relative_to(directory).as_posix()
        size = path.stat().st_size
        total += size
        if size > MAX_FILE_BYTES or total > MAX_TREE_BYTES or len(files) >= MAX_FILES:
            raise UsageError(
                f"--workspace {directory} is too large at {rel} (a file may have "
                f"{MAX_FILE_BYTES:,} bytes, the whole {MAX_TREE_BYTES:,} in {MAX_FILES:,} files)",
                "upload a smaller directory (leave out build output and dependencies)",
            )
        files[rel] = path.read_bytes()
    return files


def layers(state: StateStore, task: Task) -> list[str]:
    """The artifact sets a task starts from, in the order they apply: the tree's base,
    the files of its parent (one that delegated it has some), every task it depends on
    (directly or not) in the plan's order, then its own."""
    seen: dict[str, Task] = {}
    todo = list(task.depends_on)
    while todo:
        dep_id = todo.pop()
        if dep_id in seen:
            continue
        dep = state.get_task(dep_id)
        seen[dep_id] = dep
        todo.extend(dep.depends_on)
    ordered = [t.id for t in sorted(seen.values(), key=lambda t: t.created_at)]
    # a parent's own files (a delegating parent has some; a planned one none)
    parent = [task.parent_id] if task.parent_id and task.parent_id not in seen else []
    return [base_key(task.root_id), *parent, *ordered, task.id]


class Workspace:
    """One task's directory: laid out from its layers, saved after each step."""

    def __init__(self, state: StateStore, home: Path, task: Task) -> None:
        self.state = state
        self.task = task
        self.path = home / "workspaces" / task.id
        self._known: dict[str, str] = {}  # path → content hash as last saved or laid out
        # path → stamp of a file unchanged since it was last hashed (``scan``): not read
        # again. Saved after every tool call, a workspace is read once, not once a call.
        self._trusted: dict[str, Stamp] = {}
        self._clock = self.path.parent / f".{task.id}.clock"  # ``_fs_now``'s marker

    def prepare(self) -> Path:
        """Lay the workspace out afresh from the base, the dependencies and its own files."""
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        owner: dict[str, tuple[str, str]] = {}  # path → (hash, task that wrote it)
        for layer in layers(self.state, self.task):
            for rel, (sha, _) in self.state.artifacts(layer).items():
                before = owner.get(rel)
                if before and sha and before[0] != sha and layer != self.task.id:
                    self._conflict(rel, before[1], layer)
                if self._lay(rel, sha, layer, owner) is False:
                    self._conflict(rel, owner.get(rel, ("", "?"))[1], layer)
        self._known = {rel: sha for rel, (sha, _) in owner.items()}
        self._trusted = {}
        return self.path

    def _lay(
        self, rel: str, sha: str | None, layer: str, owner: dict[str, tuple[str, str]]
    ) -> bool:
        """Write one file of a layer; False when a file and a directory of one name clash."""
        target = self.path / rel
        try:
            if sha is None:
                target.unlink(missing_ok=True)
                owner.pop(rel, None)
                return True
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.state.blob(sha))
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            return False
        owner[rel] = (sha, layer)
        return True

    def _conflict(self, rel: str, first: str, second: str) -> None:
        if first.startswith("base:"):
            return  # a dependency changing a base file is an edit, not a conflict
        log.warning("task %s: %s changed by both %s and %s", self.task.id, rel, first, second)
        self.state.append_event(
            self.task.id,
            self.task.root_id,
            "artifact_conflict",
            {"path": rel, "tasks": [first, second], "kept": second},
        )

    def save(self) -> int:
        """Save what changed since the last save as the task's artifacts; how many files."""
        if not self.path.is_dir():
            return 0
        started = self._fs_now()
        found, skipped, stamps = scan(self.path, self._trusted)
        now = {
            rel: (self._known[rel], None) if data is None else (_sha(data), data)
            for rel, data in found.items()
        }
        changes: dict[str, bytes | None] = {
            rel: data
            for rel, (sha, data) in now.items()
            if data is not None and self._known.get(rel) != sha
        }
        # a file over the caps is still there: not a deletion
        gone = [rel for rel in self._known if rel not in now and rel not in skipped]
        changes.update(dict.fromkeys(gone))
        if changes:
            # fenced: an agent that lost the task (another took it over) saves nothing
            owner = (self.task.agent, self.task.attempts) if self.task.agent else None
            self.state.save_artifacts(self.task.id, changes, owner)
            kept = {rel: sha for rel, sha in self._known.items() if rel in skipped}
            self._known = {**kept, **{rel: sha for rel, (sha, _) in now.items()}}
        # saved (or unchanged): trusted next time, unless changed too near this scan
        settled = started - RACY_NS
        self._trusted = {
            rel: stamp for rel, stamp in stamps.items() if max(stamp[2], stamp[3]) < settled
        }
        return len(changes)

    def _fs_now(self) -> int:
        """Now by the workspace's file system (git's check for a "racily clean" index):
        a marker beside the workspace touched, its mtime read. 0 (nothing is trusted)
        if it cannot be."""
        marker = self._clock
        try:
            try:
                os.utime(marker)
            except FileNotFoundError:
                os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
                os.utime(marker)
            return os.stat(marker).st_mtime_ns
        except OSError:
            return 0

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._clock.unlink(missing_ok=True)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_files(state: StateStore, root_id: str) -> dict[str, FileEntry]:
    """A tree's final files: its base, then each task's changes in the order they were made."""
    tasks = sorted(state.tree(root_id), key=lambda t: t.created_at)
    out: dict[str, FileEntry] = {}
    for key in [base_key(root_id), *(t.id for t in tasks)]:
        for rel, (sha, size) in state.artifacts(key).items():
            if sha is None:
                out.pop(rel, None)
            else:
                out[rel] = FileEntry(rel, sha, size, key)
    return out


def task_files(state: StateStore, task_id: str) -> list[FileEntry]:
    """The files one task created, changed or deleted."""
    return [
        FileEntry(rel, sha, size, task_id) for rel, (sha, size) in state.artifacts(task_id).items()
    ]


def export(state: StateStore, root_id: str, directory: Path) -> list[FileEntry]:
    """Write a tree's final files under ``directory`` (created); returns what was written."""
    files = tree_files(state, root_id)
    directory.mkdir(parents=True, exist_ok=True)
    base = directory.resolve()
    written: list[FileEntry] = []
    for entry in files.values():
        target = (directory / entry.path).resolve()
        if base not in target.parents:  # a stored path never leaves the directory
            raise UsageError(f"artifact path {entry.path!r} leaves {directory}", "report it")
        assert entry.sha is not None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(state.blob(entry.sha))
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            log.warning(
                "%s clashes with a file or directory of the same name: left out", entry.path
            )
            continue
        written.append(entry)
    return written
