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
import shutil
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


def scan(directory: Path) -> dict[str, bytes]:
    """Every regular file under ``directory`` (symlinks are not followed), by relative path."""
    files: dict[str, bytes] = {}
    total = 0
    for path in sorted(directory.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        size = path.stat().st_size
        rel = path.relative_to(directory).as_posix()
        if size > MAX_FILE_BYTES:
            log.warning("%s is %d bytes, over %d: not saved", rel, size, MAX_FILE_BYTES)
            continue
        if total + size > MAX_TREE_BYTES or len(files) >= MAX_FILES:
            log.warning(
                "workspace %s is over its cap: %s and later files not saved", directory, rel
            )
            break
        total += size
        files[rel] = path.read_bytes()
    return files


def read_base(directory: Path) -> dict[str, bytes]:
    """A directory's files as a tree's base (``task submit --workspace``), within the caps."""
    if not directory.is_dir():
        raise UsageError(f"--workspace {directory} is not a directory", "give a directory")
    files: dict[str, bytes] = {}
    total = 0
    for path in sorted(directory.rglob("*")):
        if path.is_symlink() or not path.is_file():
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


def layers(task: Task) -> list[str]:
    """The artifact sets a task starts from, in the order they apply."""
    return [base_key(task.root_id), *task.depends_on, task.id]


class Workspace:
    """One task's directory: laid out from its layers, saved after each step."""

    def __init__(self, state: StateStore, home: Path, task: Task) -> None:
        self.state = state
        self.task = task
        self.path = home / "workspaces" / task.id
        self._known: dict[str, str] = {}  # path → content hash as last saved or laid out

    def prepare(self) -> Path:
        """Lay the workspace out afresh from the base, the dependencies and its own files."""
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        owner: dict[str, tuple[str, str]] = {}  # path → (hash, task that wrote it)
        for layer in layers(self.task):
            for rel, (sha, _) in self.state.artifacts(layer).items():
                before = owner.get(rel)
                if before and sha and before[0] != sha and layer != self.task.id:
                    self._conflict(rel, before[1], layer)
                target = self.path / rel
                if sha is None:
                    target.unlink(missing_ok=True)
                    owner.pop(rel, None)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self.state.blob(sha))
                owner[rel] = (sha, layer)
        self._known = {rel: sha for rel, (sha, _) in owner.items()}
        return self.path

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
        now = {
            rel: (hashlib.sha256(data).hexdigest(), data) for rel, data in scan(self.path).items()
        }
        changes: dict[str, bytes | None] = {
            rel: data for rel, (sha, data) in now.items() if self._known.get(rel) != sha
        }
        changes.update({rel: None for rel in self._known if rel not in now})
        if changes:
            self.state.save_artifacts(self.task.id, changes)
            self._known = {rel: sha for rel, (sha, _) in now.items()}
        return len(changes)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


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
    for entry in files.values():
        target = (directory / entry.path).resolve()
        if base not in target.parents:  # a stored path never leaves the directory
            raise UsageError(f"artifact path {entry.path!r} leaves {directory}", "report it")
        target.parent.mkdir(parents=True, exist_ok=True)
        assert entry.sha is not None
        target.write_bytes(state.blob(entry.sha))
    return list(files.values())
