"""Webhook notifications: a signed JSON event when something waits for a person, or a
tree fails.

`orchestra run` follows the event log (from its end when it starts) and POSTs to
``notify.webhook_url``: ``inbox`` when a tool call waits for approval or a tree
is paused, ``tree_failed`` when a root task fails. Each body is signed with
HMAC-SHA256 of the secret ``ORCHESTRA_WEBHOOK_SECRET`` (Vault, env or .env) in
``X-Orchestra-Signature: sha256=<hex>``; ``X-Orchestra-Event`` names the type.
Delivery is retried with backoff (``MAX_WEBHOOK_ATTEMPTS``) on a thread of its
own, so a slow or dead receiver never holds the orchestrator up.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import urllib.error
import urllib.request
from typing import Any

from orchestra_cli.backends import Backends
from orchestra_cli.backoff import Backoff, log_retry
from orchestra_cli.logs import redact
from orchestra_cli.models import Event
from orchestra_cli.util import iso, now

log = logging.getLogger(__name__)

SECRET_NAME = "ORCHESTRA_WEBHOOK_SECRET"
MAX_WEBHOOK_ATTEMPTS = 5
WEBHOOK_BACKOFF = Backoff(first=0.5, cap=30.0)
FOLLOW_WAIT_SECONDS = 1.0
MAX_PENDING = 1000  # undelivered notifications kept; older ones are dropped with a warning


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def notification(event: Event, title: str) -> dict[str, Any] | None:
    """The webhook body an event calls for, if any."""
    d = event.data
    base: dict[str, Any] = {"task_id": event.task_id, "root_id": event.root_id, "title": title}
    base["time"] = iso(event.time)
    if event.type == "blocked" or d.get("to") == "blocked":
        kind = "paused" if d.get("reason") == "paused" else "approval"
        waits = d.get("waits_for") or []
        return {"type": "inbox", "kind": kind, "waits_for": waits, "hint": d.get("hint"), **base}
    if event.type == "step" and d.get("kind") == "pause":
        return {"type": "inbox", "kind": "paused", "hint": "orchestra task resume", **base}
    if d.get("to") == "failed" and event.task_id == event.root_id:
        return {"type": "tree_failed", "error": d.get("error"), **base}
    return None


class Notifier:
    """Follows the event log and delivers webhook notifications (a runtime component)."""

    name = "notifier"

    def __init__(self, backends: Backends, url: str, secret: str | None, timeout: float) -> None:
        self.b = backends
        self.url = url
        self.secret = secret or ""
        self.timeout = timeout
        self._out: queue.Queue[dict[str, Any]] = queue.Queue(MAX_PENDING)
        self.delivered = 0

    def run(self, stop: threading.Event) -> None:
        sender = threading.Thread(target=self._send_loop, args=(stop,), name="webhook", daemon=True)
        sender.start()
        seq = self._last_seq()
        while not stop.is_set():
            try:
                events = self.b.state.events(after=seq, wait=FOLLOW_WAIT_SECONDS)
            except Exception as exc:  # the store is down: the orchestrator says so too
                log.warning("notifier: cannot read events (%s); retrying", exc)
                stop.wait(FOLLOW_WAIT_SECONDS)
                continue
            for event in events:
                seq = event.seq
                self._consider(event)
        sender.join(timeout=5)

    def _last_seq(self) -> int:
        last = 0
        while True:  # to the end of the log: only what happens from now on is sent
            batch = self.b.state.events(after=last, limit=1000)
            if not batch:
                return last
            last = batch[-1].seq

    def _consider(self, event: Event) -> None:
        if not (event.type in ("step", "blocked") or "to" in event.data):
            return
        try:
            title = self.b.state.get_task(event.task_id).title
        except Exception:
            title = ""
        body = notification(event, title)
        if body is None:
            return
        try:
            self._out.put_nowait(body)
        except queue.Full:
            log.warning("notifier: %d notifications waiting; dropping one", MAX_PENDING)

    def _send_loop(self, stop: threading.Event) -> None:
        while not stop.is_set() or not self._out.empty():
            try:
                body = self._out.get(timeout=0.5)
            except queue.Empty:
                continue
            self._deliver(body, stop)

    def _deliver(self, body: dict[str, Any], stop: threading.Event) -> None:
        data = json.dumps(body, default=str).encode()
        headers = {
            "content-type": "application/json",
            "x-orchestra-event": str(body["type"]),
            "x-orchestra-signature": sign(self.secret, data),
            "x-orchestra-delivery": f"{body['task_id']}:{now():.6f}",
        }
        for attempt in range(1, MAX_WEBHOOK_ATTEMPTS + 1):
            try:
                request = urllib.request.Request(self.url, data=data, headers=headers)
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    if 200 <= reply.status < 300:
                        self.delivered += 1
                        return
                    problem = f"HTTP {reply.status}"
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code}"
            except (OSError, ValueError) as exc:
                problem = type(exc).__name__
            left = MAX_WEBHOOK_ATTEMPTS - attempt
            if not left:
                log.warning(
                    "webhook %s: %s for %s; giving up", redact(self.url), problem, body["type"]
                )
                return
            delay = WEBHOOK_BACKOFF.next_delay(attempt)
            log_retry(log, "webhook", redact(self.url), problem, delay, left, during=body["type"])
            if stop.wait(delay):
                return
