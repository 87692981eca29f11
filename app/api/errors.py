"""RFC 9457 problem+json responses, and the handlers that turn every error into one."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match, Route

from app.problems import (
    INTERNAL,
    INVALID_REQUEST,
    MALFORMED_REQUEST,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    PROBLEM_MEDIA_TYPE,
    Problem,
    ProblemType,
)
from app.tasks.calls import validation_errors

log = logging.getLogger("medlora.api")

_HTTP_PROBLEMS: dict[int, ProblemType] = {400: MALFORMED_REQUEST, 404: NOT_FOUND, 405: METHOD_NOT_ALLOWED}


def problem_response(problem: Problem, request: Request) -> JSONResponse:
    headers = dict(problem.headers)
    if problem.retry_after_s:
        headers["Retry-After"] = str(problem.retry_after_s)
    return JSONResponse(
        problem.body(instance=request.url.path),
        status_code=problem.kind.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path. Starlette's own `Allow` names only the
    first route matching the path, and a path can have a route per method."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods
    return sorted(methods)


def install_problem_handlers(app: FastAPI) -> None:
    """Every error leaves as problem+json with a stable type; a bug as a 500 with no trace."""

    @app.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(exc)
        return problem_response(Problem(INVALID_REQUEST, "request body failed validation", {"errors": errors}), request)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Routing and body parsing (Starlette, FastAPI) raise these; each becomes a stable type,
        # keeping its headers (405 carries `Allow`).
        kind = _HTTP_PROBLEMS.get(exc.status_code)
        if kind is None:
            log.error("unmapped HTTP error", extra={"status": exc.status_code})
            kind = MALFORMED_REQUEST if exc.status_code < 500 else INTERNAL
        headers = dict(exc.headers or {})
        if kind is METHOD_NOT_ALLOWED:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return problem_response(Problem(kind, str(exc.detail), headers=headers), request)

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        return unexpected_error(request, exc)


def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug, as a 500 problem: logged by its type and the request id, never its message or trace."""
    if isinstance(exc, ClientDisconnect):
        # The client hung up mid-body (or BodyLimit cut it off): nobody reads this answer.
        return problem_response(Problem(INVALID_REQUEST, "request body was not received completely"), request)
    log.error(
        "unhandled error",
        extra={"request_id": getattr(request.state, "request_id", None), "error_type": type(exc).__name__},
    )
    return problem_response(Problem(INTERNAL, "unexpected error; see logs for the request id"), request)
