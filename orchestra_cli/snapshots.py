"""State snapshots and rollback (`orchestra snapshot create|list`, `orchestra rollback`).

Embedded: an online SQLite backup of the whole file (tasks, events, agents
and queued messages together, so a rollback is consistent). Services: every
Redis key of the deployment's prefix; RabbitMQ keeps its messages, so after
a rollback the queued and pending tasks are re-published (duplicates are
harmless: agents drop a message for a task that is no longer queued).
A rollback always takes a ``pre-rollback`` snapshot first.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestra_cli.backends import Backends, mode_of
from orchestra_cli.broker.base import publish_run, publish_submit
from orchestra_cli.errors import NotFoundError, UsageError
from orchestra_cli.settings import Settings, mask_url
from orchestra_cli.status import Status
from orchestra_cli.util import iso, now

REPUBLISH_LIMIT = 100_000


@dataclass
class Snapshot:
    name: str
    file: str
    created_at: str
    mode: str
    state_url: str
    size: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def snapshot_dir(settings: Settings) -> Path:
    return settings.home / "snapshots"


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")
    if not slug:
        raise UsageError(f"snapshot name {name!r} has no usable characters", "use letters, digits")
    return slug[:60]


def create(backends: Backends, name: str | None = None) -> Snapshot:
    """Snapshot the state store now."""
    settings = backends.settings
    directory = snapshot_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    mode = mode_of(settings)
    stamp = iso(now()) or ""
    label = _slug(name) if name else "manual"
    base = f"{stamp.replace(':', '').replace('-', '')[:15]}-{label}"
    path = directory / (base + (".db" if mode == "embedded" else ".redis.jsonl"))
    n = 1
    while path.exists():
        n += 1
        path = path.with_name(f"{base}-{n}" + "".join(path.suffixes))
    backends.state.export_snapshot(path)
    snap = Snapshot(
        name=label,
        file=path.name,
        created_at=stamp,
        mode=mode,
        state_url=mask_url(settings.effective_state_url),
        size=path.stat().st_size,
    )
    path.with_name(path.name + ".json").write_text(json.dumps(snap.as_dict(), indent=2))
    return snap


def list_snapshots(settings: Settings) -> list[Snapshot]:
    """Every snapshot in the data dir, oldest first."""
    found = []
    for meta in snapshot_dir(settings).glob("*.json"):
        try:
            snap = Snapshot(**json.loads(meta.read_text()))
            written = meta.stat().st_mtime_ns
        except (OSError, ValueError, TypeError):
            continue
        if (meta.parent / snap.file).exists():
            # by creation time (file names sort `x-2` before `x`), then by when written
            found.append((snap.created_at, written, snap))
    return [snap for *_, snap in sorted(found, key=lambda f: (f[0], f[1]))]


def find(settings: Settings, ref: str) -> Snapshot:
    """A snapshot by file name, name, unique prefix, or ``latest``."""
    snaps = list_snapshots(settings)
    if not snaps:
        raise NotFoundError("no snapshots yet", "create one with `orchestra snapshot create`")
    if ref == "latest":
        return snaps[-1]
    exact = [s for s in snaps if ref in (s.file, s.name)]
    matches = exact or [s for s in snaps if s.file.startswith(ref)]
    if len(matches) == 1 or (exact and len(exact) > 1):
        return matches[-1]  # the newest of several with the same name
    if not matches:
        raise NotFoundError(
            f"snapshot {ref!r} not found", "`orchestra snapshot list` shows the snapshots"
        )
    raise UsageError(f"snapshot {ref!r} is ambiguous", "give the file name from `snapshot list`")


def rollback(backends: Backends, snap: Snapshot, *, force: bool = False) -> dict[str, Any]:
    """Replace the state with ``snap`` (after a safety snapshot); re-publish open work."""
    settings = backends.settings
    if snap.mode != mode_of(settings):
        raise UsageError(
            f"snapshot {snap.file} is of {snap.mode} state, this deployment is {mode_of(settings)}",
            "roll back with the configuration the snapshot was taken with",
        )
    ttl = settings.agents.ttl_seconds
    live = [a.name for a in backends.state.list_agents() if a.is_alive(ttl)]
    if live and not force:
        raise UsageError(
            f"{len(live)} agent(s) are running ({', '.join(live[:3])})",
            "stop them first (`orchestra agent stop NAME`) or pass --force",
        )
    safety = create(backends, "pre-rollback")
    backends.state.import_snapshot(snapshot_dir(settings) / snap.file)
    republished = _republish(backends) if snap.mode == "services" else 0
    return {"restored": snap.as_dict(), "safety_snapshot": safety.file, "republished": republished}


def _republish(backends: Backends) -> int:
    """Messages for restored open work, which the broker may no longer hold."""
    state, broker = backends.state, backends.broker
    count = 0
    for task in state.list_tasks(status=[Status.QUEUED.value], limit=REPUBLISH_LIMIT):
        publish_run(broker, task)
        count += 1
    for task in state.list_tasks(status=[Status.PENDING.value], limit=REPUBLISH_LIMIT):
        publish_submit(broker, task)
        count += 1
    return count
