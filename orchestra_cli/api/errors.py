"""The one place API errors become HTTP: orchestra's error hierarchy mapped to status codes.

Every error body is ``{"error": "<what failed>", "hint": "<what to do>"}``, the
two halves of the CLI's one-line error, with secrets redacted the same way.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestra_cli import ids
from orchestra_cli.api.auth import Unauthorized
from orchestra_cli.errors import (
    ConfigError,
    ConflictError,
    ExitStatus,
    NotFoundError,
    OrchestraError,
    TransitionRejected,
    UsageError,
)

log = logging.getLogger(__name__)

# Most specific first: the first matching class wins.
STATUS_BY_ERROR: tuple[tuple[type[OrchestraError], int], ...] = (
    (Unauthorized, 401),
    (NotFoundError, 404),
    (TransitionRejected, 409),  # the task changed under the request; re-read and retry
    (ConflictError, 409),  # the request does not fit the task's state (retry a success)
    (UsageError, 422),
    (ConfigError, 422),
)
SCHEMA_HINT = "see the request schema at /v1/openapi.json"
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def status_of(exc: OrchestraError) -> int:
    """The HTTP status for an orchestra error: 4xx for the caller's, 503 for a service."""
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    if exc.exit_status == ExitStatus.UNAVAILABLE:  # StateUnavailable, BrokerUnavailable, …
        return 503
    return 500


def error_body(message: str, hint: str | None) -> dict[str, str | None]:
    """``{"error", "hint"}`` with known secrets masked."""
    from orchestra_cli.logs import redact

    return {"error": redact(message), "hint": redact(hint) if hint else None}


def _response(
    status: int, message: str, hint: str | None, headers: dict[str, str] | None = None
) -> JSONResponse:
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return JSONResponse(error_body(message, hint), status_code=status, headers=headers)


# hints the stores and the id resolver give, as the API words them
API_HINTS = {
    ids.NOT_FOUND_HINT: "GET /v1/tasks lists known ids",
    ids.AMBIGUOUS_HINT: "give more characters, or the short id (the last 8) of the id",
    "`orchestra agent list` shows agents": "GET /v1/agents?all=true lists agents",
}


def hint_of(exc: OrchestraError) -> str | None:
    """The hint worded for the API (routes and fields, not CLI commands and flags)."""
    if exc.api_hint:
        return exc.api_hint
    return API_HINTS.get(exc.hint, exc.hint) if exc.hint else None


async def _orchestra_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OrchestraError)
    status = status_of(exc)
    if status >= 500:
        log.warning("%s %s failed: %s", request.method, request.url.path, exc)
    return _response(status, exc.message, hint_of(exc))


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if part != "body") or "body"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    message = f"{_where(tuple(first.get('loc', ())))}: {first.get('msg', 'invalid')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return _response(422, message, SCHEMA_HINT)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    hint = "the API lives under /v1; see /v1/openapi.json" if exc.status_code == 404 else None
    hint = getattr(exc, "hint", None) or hint  # BodyTooLarge says the limit
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:  # which methods the path does answer (all its routes')
        headers = {**(headers or {}), "Allow": ", ".join(_allowed(request))}
    return _response(exc.status_code, str(exc.detail), hint, headers)


def _allowed(request: Request) -> list[str]:
    """Every method some route of this path answers (Starlette names only the first
    route's, and GET and POST /v1/tasks are two routes): asked of each route with
    Starlette's own matching, one method at a time."""
    from starlette.routing import Match

    return [
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.routes
        )
    ]


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s: internal error", request.method, request.url.path)
    return _response(
        500, f"internal error: {type(exc).__name__}", "see the API log (logs/api.log) and report it"
    )


def install_error_handlers(app: FastAPI) -> None:
    """Route every error (orchestra's, validation, routing, unexpected) to one JSON shape."""
    app.add_exception_handler(OrchestraError, _orchestra_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
