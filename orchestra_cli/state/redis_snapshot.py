"""Snapshots of a Redis namespace: every key under the prefix, DUMPed and RESTOREd.

A snapshot file is JSON lines: a header, then one line per key with its
remaining TTL and its DUMP payload (base64). Restoring replaces the whole
namespace, so a rollback never mixes old and new keys.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

FORMAT = "orchestra-redis-snapshot/1"
BATCH = 500


def _pattern(prefix: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + ":*"


def export(client: Any, prefix: str, path: Path) -> int:
    """Write every key under ``prefix`` to ``path``; returns the number of keys."""
    count = 0
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"format": FORMAT, "prefix": prefix}) + "\n")
        keys: list[str] = []
        for key in client.scan_iter(match=_pattern(prefix), count=1000):
            keys.append(key)
            if len(keys) >= BATCH:
                count += _write_batch(client, keys, fh)
                keys = []
        if keys:
            count += _write_batch(client, keys, fh)
    return count


def _write_batch(client: Any, keys: list[str], fh: Any) -> int:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.pttl(key)
        pipe.dump(key)
    results = pipe.execute()
    written = 0
    for i, key in enumerate(keys):
        ttl, payload = results[2 * i], results[2 * i + 1]
        if payload is None:  # expired meanwhile
            continue
        data = payload if isinstance(payload, bytes) else payload.encode("latin-1")
        fh.write(
            json.dumps(
                {
                    "k": key,
                    "ttl": max(0, int(ttl)) if ttl and ttl > 0 else 0,
                    "v": base64.b64encode(data).decode(),
                }
            )
            + "\n"
        )
        written += 1
    return written


def restore(client: Any, prefix: str, path: Path) -> int:
    """Replace every key under ``prefix`` with the snapshot's; returns keys restored."""
    with open(path, encoding="utf-8") as fh:
        header = json.loads(fh.readline())
        if header.get("format") != FORMAT:
            raise ValueError(f"{path} is not a Redis snapshot ({header.get('format')})")
        old = list(client.scan_iter(match=_pattern(prefix), count=1000))
        for i in range(0, len(old), BATCH):
            client.unlink(*old[i : i + BATCH])
        restored = 0
        pipe = client.pipeline(transaction=False)
        for line in fh:
            item = json.loads(line)
            key = (
                item["k"]
                if header["prefix"] == prefix
                else (prefix + item["k"][len(header["prefix"]) :])
            )
            pipe.restore(key, item["ttl"], base64.b64decode(item["v"]), replace=True)
            restored += 1
            if restored % BATCH == 0:
                pipe.execute()
        pipe.execute()
    return restored
