"""The OpenAPI document describes the API: schemathesis generates requests from it
(a bounded number per operation, valid ones and invalid ones) and checks every response
against it: status codes, bodies, headers, and that valid input is taken and invalid refused.

(The operations are run from one test: schemathesis's pytest integration reaches
into pytest internals that pytest 9 no longer has.)
"""

from __future__ import annotations

import itertools
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection, not_a_server_error

from orchestra_cli.backends import Backends

TOKEN = "schema-test-token-" + "0123456789abcdef" * 2
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_EXAMPLES = 25  # per operation: the whole run stays within seconds


def _schema(backends: Backends) -> Any:
    from orchestra_cli.api.app import create_app
    from orchestra_cli.engine.roles import load_roles

    app = create_app(backends, load_roles(), token=TOKEN)
    return schemathesis.openapi.from_asgi("/v1/openapi.json", app, headers=AUTH)


def _run(operation: Any, mode: GenerationMode) -> None:
    # 503 is health's documented answer when the system is not healthy (work waits and
    # no orchestrator runs here), not a server error
    excluded = [not_a_server_error] if operation.path == "/v1/health" else []
    if mode == GenerationMode.NEGATIVE:
        # the API may take more than the document promises (a blank status item, say);
        # what invalid input must never get is a 5xx or an undocumented answer
        excluded.append(negative_data_rejection)

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        case.call_and_validate(headers=AUTH, excluded_checks=excluded)

    check()


def test_every_response_of_the_api_is_what_its_openapi_document_says(
    backends: Backends,
) -> None:
    failures = []
    operations = [result.ok() for result in _schema(backends).get_all_operations()]
    assert len(operations) >= 10  # every route is in the document
    for operation, mode in itertools.product(operations, GenerationMode):
        try:
            _run(operation, mode)
        except Unsatisfiable:  # no invalid value exists (a path's free string)
            assert mode == GenerationMode.NEGATIVE, operation.path
        except BaseException as exc:  # schemathesis raises an ExceptionGroup of failures
            if not isinstance(exc, Exception | BaseExceptionGroup):
                raise
            failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)


def test_a_method_a_route_does_not_answer_is_405_with_the_allowed_ones(
    backends: Backends,
) -> None:
    from fastapi.testclient import TestClient

    from orchestra_cli.api.app import create_app
    from orchestra_cli.engine.roles import load_roles

    with TestClient(create_app(backends, load_roles(), token=TOKEN)) as client:
        r = client.request("TRACE", "/v1/tasks", headers=AUTH)
        assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "POST"}
        assert r.json()["error"] == "Method Not Allowed"
