"""The FastAPI app: REST routes and the task event WebSocket, as thin as the CLI.

Every route calls one ``TaskService`` (or state) function and returns the
CLI's ``--json`` shape (``cli.render``). Routes are plain ``def`` so FastAPI
runs them in its thread pool: the state stores and brokers are synchronous
and thread-safe. Errors are raised, never caught here: ``api.errors`` turns
them into ``{"error", "hint"}`` with the right status.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, WebSocket
from starlette.concurrency import run_in_threadpool

from orchestra_cli import __version__
from orchestra_cli.api import docs
from orchestra_cli.api.auth import TOKEN_HINT, bearer, check_token, token_ok
from orchestra_cli.api.errors import hint_of, install_error_handlers, status_of
from orchestra_cli.api.middleware import AccessLog, BodyLimit, body_limit
from orchestra_cli.api.people import people_routes
from orchestra_cli.api.schemas import SubmitBody
from orchestra_cli.api.stream import deny, stream_task_events
from orchestra_cli.backends import Backends
from orchestra_cli.engine.roles import RoleDefinition, known_capabilities
from orchestra_cli.engine.service import TaskService
from orchestra_cli.errors import OrchestraError, Undelivered, UsageError
from orchestra_cli.health import CHECKS
from orchestra_cli.shapes import LISTED_BY_DEFAULT, agent_json, agent_state, event_json, task_json
from orchestra_cli.state.base import MAX_EVENT_SEQ
from orchestra_cli.status import Status

MAX_LIST = 1000
HEALTH_CHECKS = tuple(CHECKS)


def create_app(
    backends: Backends, roles: dict[str, RoleDefinition], *, token: str | None
) -> FastAPI:
    """The API over ``backends``; ``token=None`` serves without auth (--insecure, loopback)."""
    service = TaskService(backends, roles)
    app = FastAPI(
        title="orchestra",
        version=__version__,
        docs_url=None,  # every route but health needs the token, the docs included
        redoc_url=None,
        openapi_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=body_limit(backends.settings.tasks.max_input_bytes))
    app.add_middleware(AccessLog)  # added last: outermost, it sees the 413s too

    def require_token(request: Request) -> None:
        check_token(token, request.headers.get("authorization"))

    guarded = APIRouter(prefix="/v1", dependencies=[Depends(require_token)], responses=docs.GUARDED)
    _task_routes(guarded, service)
    people_routes(guarded, service)  # transcripts, files, inbox, approvals, plans, pause
    _agent_routes(guarded, service)

    @guarded.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return docs.with_capabilities(app.openapi(), sorted(known_capabilities(roles)))

    from orchestra_cli import metrics

    metrics.enable(backends, state=True)

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(require_token)])
    def prometheus() -> Response:
        """Prometheus text format (scrape with the API token as a bearer token)."""
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    app.include_router(guarded)
    app.include_router(_health_router(backends, roles, token))
    app.include_router(_stream_router(service, token))
    return app


def _statuses(values: list[str] | None) -> list[str] | None:
    """``?status=a&status=b`` or ``?status=a,b``, checked like `task list --status`."""
    statuses = [s.strip() for item in values or [] for s in item.split(",") if s.strip()]
    valid = {s.value for s in Status}
    bad = [s for s in statuses if s not in valid]
    if bad:
        raise UsageError(f"unknown status {bad[0]!r}", f"choose from {', '.join(sorted(valid))}")
    return statuses or None


def _task_routes(router: APIRouter, service: TaskService) -> None:
    @router.post(
        "/tasks",
        status_code=201,
        responses={
            200: {"description": "an idempotency key already used: that task"},
            202: {"description": "stored, but its message could not be sent yet"},
            **docs.errors(400),
        },
    )
    def submit(body: SubmitBody, response: Response) -> dict[str, Any]:
        """Submit a task: 201 when created, 200 for an idempotency key already used,
        202 when it is stored but its message could not be sent yet (it runs once the
        broker is back: the recovery sweep sends it; do not submit it again)."""
        try:
            task, created = service.submit(body.to_request())
        except Undelivered as exc:
            response.status_code = 202
            stored = service.get(exc.task_id)
            return {"created": True, "delivered": False, "task": task_json(stored)}
        if not created:
            response.status_code = 200
        return {"created": created, "task": task_json(task)}

    @router.get("/tasks")
    def list_tasks(
        status: Annotated[list[str] | None, Query(json_schema_extra=docs.STATUS_LIST)] = None,
        agent: str | None = None,
        since: Annotated[
            str | None,
            Query(description="30m, 2h, 7d or an ISO time", json_schema_extra=docs.SINCE),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 50,
        roots: bool = False,
    ) -> list[dict[str, Any]]:
        """Tasks, newest first."""
        from orchestra_cli.util import parse_since

        tasks = service.list_tasks(
            status=_statuses(status),
            agent=agent,
            since=parse_since(since) if since else None,
            limit=limit,
            roots_only=roots,
        )
        return [task_json(t) for t in tasks]

    @router.get("/tasks/{task_id}", responses=docs.BY_ID)
    def get_task(task_id: str) -> dict[str, Any]:
        """A task with its subtasks and the usage of its whole subtree."""
        task = service.get(task_id)
        tree = service.subtree(task.id)
        data = task_json(task)
        data["subtasks"] = [task_json(t) for t in tree if t.id != task.id]
        data["tree_usage"] = service.tree_usage(tree).model_dump()
        return data

    @router.post("/tasks/{task_id}/cancel", responses=docs.CHANGES)
    def cancel(task_id: str) -> dict[str, Any]:
        """Cancel a task and its unfinished subtasks."""
        return {"cancelled": [t.id for t in service.cancel(task_id)]}

    @router.get("/events")
    def events(
        after: Annotated[int, Query(ge=0, le=MAX_EVENT_SEQ)] = 0,
        root_id: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = MAX_LIST,
    ) -> dict[str, Any]:
        """Events after sequence ``after``, oldest first; poll again with ``last_seq``."""
        found = service.events(root_id, after, limit)
        return {
            "events": [event_json(e) for e in found],
            "last_seq": found[-1].seq if found else after,
        }


def _agent_routes(router: APIRouter, service: TaskService) -> None:
    ttl = service.b.settings.agents.ttl_seconds

    @router.get("/agents")
    def list_agents(
        all_: Annotated[bool, Query(alias="all")] = False,
    ) -> list[dict[str, Any]]:
        """Agents in the registry; dead and stopped ones only with ``?all=true``. Each
        one's liveness is ``state``: init, starting, running, draining, stopping,
        stopped or dead."""
        agents = service.agents()
        return [
            agent_json(a, ttl) for a in agents if all_ or agent_state(a, ttl) in LISTED_BY_DEFAULT
        ]

    @router.get("/agents/{name}", responses=docs.BY_ID)
    def get_agent(name: str) -> dict[str, Any]:
        """One agent's registry record."""
        return agent_json(service.agent(name), ttl)

    @router.post("/agents/{name}/stop", status_code=202, responses=docs.CHANGES)
    def stop_agent(name: str) -> dict[str, Any]:
        """Ask an agent to drain and stop; 202, as it finishes the tasks in hand first."""
        service.stop_agent(name)  # NotFoundError (404) for a name not in the registry
        return agent_json(service.agent(name), ttl)


def _health_router(
    backends: Backends, roles: dict[str, RoleDefinition], token: str | None
) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get(
        "/health",
        responses={503: {"description": "not healthy"}, **docs.errors(401, 413, 422)},
    )
    def health(
        request: Request,
        response: Response,
        check: Annotated[
            list[str] | None, Query(json_schema_extra=docs.check_list(list(HEALTH_CHECKS)))
        ] = None,
        strict: bool = False,
    ) -> dict[str, Any]:
        """`orchestra health` as JSON: 200 healthy, 503 otherwise. Without the token only
        ``{"healthy": …}``: the checks name paths, URLs, hosts, pids and which secrets are
        set, which are nobody's business but the operator's. ``check=llm`` (one call out
        to the model API, on the account's rate limits) needs the token: 401 without."""
        from orchestra_cli.health import HealthContext, exit_status, run_checks

        names = [n.strip() for item in check or [] for n in item.split(",") if n.strip()]
        if "llm" in names:  # a call out to the model API, on the account's rate limits
            check_token(token, request.headers.get("authorization"))
        unknown = [n for n in names if n not in HEALTH_CHECKS]
        if unknown:
            raise UsageError(
                f"unknown check {unknown[0]!r}", f"choose from {', '.join(HEALTH_CHECKS)}"
            )
        hctx = HealthContext(backends.settings, roles)
        try:
            checks = run_checks(hctx, names or None)
        finally:
            hctx.close()
        code = exit_status(checks, strict)
        response.status_code = 200 if code == 0 else 503
        # open to load balancers without a token: they learn healthy or not, nothing else
        if not token_ok(token, bearer(request.headers.get("authorization"))):
            return {"healthy": code == 0}
        return {
            "healthy": code == 0,
            "exit_code": int(code),
            "checks": [
                {"name": c.name, "level": c.level, "summary": c.summary, "details": c.details}
                for c in checks
            ],
        }

    return router


def _stream_router(service: TaskService, token: str | None) -> APIRouter:
    router = APIRouter(prefix="/v1")

    async def task_events(
        websocket: WebSocket,
        task_id: str,
        after: Annotated[int, Query(ge=0, le=MAX_EVENT_SEQ)] = 0,
        token_param: Annotated[str | None, Query(alias="token")] = None,
    ) -> None:
        """Replay the task tree's events (after ``after``), follow them, end with the task."""
        given = token_param or bearer(websocket.headers.get("authorization"))
        if not token_ok(token, given):
            await deny(websocket, 401, "missing or wrong API token", TOKEN_HINT)
            return
        try:
            task = await run_in_threadpool(service.get, task_id)
        except OrchestraError as exc:  # the HTTP error handlers do not cover WebSockets
            await deny(websocket, status_of(exc), exc.message, hint_of(exc))
            return
        await websocket.accept()
        await stream_task_events(websocket, service, task, after)

    router.add_api_websocket_route("/tasks/{task_id}/events", task_events)
    router.add_api_websocket_route("/ws/tasks/{task_id}", task_events)
    return router
