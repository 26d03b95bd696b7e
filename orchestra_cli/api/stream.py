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
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketDisconnect

from orchestra_cli.api.errors import error_body, hint_of, status_of
from orchestra_cli.engine.follow import Follower
from orchestra_cli.engine.service import TaskService
from orchestra_cli.errors import OrchestraError
from orchestra_cli.models import Task
from orchestra_cli.shapes import event_json, task_json
from orchestra_cli.util import dumps

POLL_SECONDS = 0.1
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011


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


async def _pump(websocket: WebSocket, follower: Follower) -> dict[str, Any]:
    """Send events until the follow has ended (engine/follow.py); the end message."""
    while True:
        update = await run_in_threadpool(follower.poll)
        for event in update.events:
            await websocket.send_text(dumps(event_json(event)))
        if update.ended:
            return {
                "type": "end",
                "status": update.task.status.value,
                "task": task_json(update.task),
            }
        if not update.full_page:
            await asyncio.sleep(POLL_SECONDS)


async def _until_disconnect(websocket: WebSocket) -> None:
    """Read (and ignore) client messages until the client goes away."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


async def _follow(websocket: WebSocket, follower: Follower) -> dict[str, Any] | None:
    """The end message once the task has ended, or None if the client left first."""
    pump = asyncio.ensure_future(_pump(websocket, follower))
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
        follower = await run_in_threadpool(service.follower, task, after)
        end = await _follow(websocket, follower)
        if end is not None:
            await websocket.send_text(dumps(end))
            await websocket.close(1000)
    except WebSocketDisconnect:
        return  # the client left, or the server is shutting down
    except OrchestraError as exc:  # e.g. the state store went away mid-stream
        body = {"type": "error", "status": status_of(exc), **error_body(exc.message, hint_of(exc))}
        await websocket.send_text(dumps(body))
        await websocket.close(CLOSE_INTERNAL_ERROR, exc.message[:120])
