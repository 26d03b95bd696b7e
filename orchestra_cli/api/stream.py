"""The task event stream over a WebSocket: replay the tree's events, follow, then end.

The state stores are synchronous, so each poll runs in a worker thread; the
loop sleeps ``POLL_SECONDS`` between polls, like `orchestra task watch`.
Messages are the event log's entries as JSON (``seq``, ``task_id``,
``root_id``, ``type``, ``time``, ``data``) and, once the task has ended, one
``{"type": "end", "status": …, "task": …}``; the server then closes (1000).
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketDisconnect

from orchestra_cli.api.errors import error_body, hint_of, status_of
from orchestra_cli.engine.service import TaskService
from orchestra_cli.errors import OrchestraError
from orchestra_cli.models import Event, Task
from orchestra_cli.status import TERMINAL
from orchestra_cli.util import dumps, iso

POLL_SECONDS = 0.1
PAGE = 1000
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011


def event_json(event: Event) -> dict[str, Any]:
    """An event as `orchestra --json task watch` prints it."""
    data = event.model_dump(mode="json")
    data["time"] = iso(event.time)
    return data


@dataclass
class _Poll:
    events: list[Event]  # the ones to send
    last_seq: int  # the last one read, sent or not, so it is not read again
    task: Task
    full_page: bool


class _Follower:
    """The sync side: what changed in the tree since ``seq``."""

    def __init__(self, service: TaskService, task: Task) -> None:
        self.service = service
        self.task = task
        # a subtask's stream shows only its own subtree; the root's shows everything
        self.members: set[str] | None = None if task.id == task.root_id else self._subtree()

    def _subtree(self) -> set[str]:
        return {t.id for t in self.service.subtree(self.task.id)}

    def poll(self, after: int) -> _Poll:
        # the task first: if it had ended by now, its final events are in the read below
        current = self.service.get(self.task.id)
        events = self.service.state.events(root_id=self.task.root_id, after=after, limit=PAGE)
        last_seq = events[-1].seq if events else after
        shown = events
        if self.members is not None:
            if any(e.type == "created" for e in events):
                self.members = self._subtree()
            shown = [e for e in events if e.task_id in self.members]
        return _Poll(shown, last_seq, current, full_page=len(events) == PAGE)


# set in the connection's task when the handshake was refused on purpose: uvicorn then
# logs "ASGI callable returned without completing handshake" at ERROR, which
# api.server's filter drops for these connections (and keeps for any other)
DENIED: contextvars.ContextVar[bool] = contextvars.ContextVar("orchestra_ws_denied", default=False)


async def deny(websocket: WebSocket, status: int, message: str, hint: str | None) -> None:
    """Refuse the handshake with an HTTP error body (or a policy-violation close)."""
    DENIED.set(True)
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        from fastapi.responses import JSONResponse

        await websocket.send_denial_response(
            JSONResponse(error_body(message, hint), status_code=status)
        )
    else:  # a server without the denial extension can only close
        await websocket.close(CLOSE_POLICY_VIOLATION, message[:120])


async def _pump(websocket: WebSocket, follower: _Follower, after: int) -> dict[str, Any]:
    """Send events until the task has ended and a poll finds nothing new; the end message."""
    seq = after
    ended_seen = False
    while True:
        poll = await run_in_threadpool(follower.poll, seq)
        for event in poll.events:
            await websocket.send_text(dumps(event_json(event)))
        quiet = poll.last_seq == seq
        seq = poll.last_seq
        if poll.task.status in TERMINAL:
            # one quiet poll after the end: a cancel writes the subtasks' events just after
            if ended_seen and quiet:
                from orchestra_cli.cli.render import task_json

                return {
                    "type": "end",
                    "status": poll.task.status.value,
                    "task": task_json(poll.task),
                }
            ended_seen = True
        if not poll.full_page:
            await asyncio.sleep(POLL_SECONDS)


async def _until_disconnect(websocket: WebSocket) -> None:
    """Read (and ignore) client messages until the client goes away."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


async def _follow(websocket: WebSocket, follower: _Follower, after: int) -> dict[str, Any] | None:
    """The end message once the task has ended, or None if the client left first."""
    pump = asyncio.ensure_future(_pump(websocket, follower, after))
    gone = asyncio.ensure_future(_until_disconnect(websocket))
    try:
        done, _ = await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pump, gone):
            task.cancel()
        await asyncio.gather(pump, gone, return_exceptions=True)
    return pump.result() if pump in done else None  # result() re-raises what stopped it


async def stream_task_events(
    websocket: WebSocket, service: TaskService, task: Task, after: int
) -> None:
    """Stream ``task``'s tree events after ``after`` on an accepted WebSocket, then close."""
    try:
        follower = await run_in_threadpool(_Follower, service, task)
        end = await _follow(websocket, follower, after)
        if end is not None:
            await websocket.send_text(dumps(end))
            await websocket.close(1000)
    except WebSocketDisconnect:
        return  # the client left, or the server is shutting down
    except OrchestraError as exc:  # e.g. the state store went away mid-stream
        body = {"type": "error", "status": status_of(exc), **error_body(exc.message, hint_of(exc))}
        await websocket.send_text(dumps(body))
        await websocket.close(CLOSE_INTERNAL_ERROR, exc.message[:120])
