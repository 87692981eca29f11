"""RFC 9457 problem+json responses, and the handlers that turn every error into one."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.problems import INTERNAL, INVALID_REQUEST, NOT_FOUND, PROBLEM_MEDIA_TYPE, Problem, ProblemType
from app.tasks.calls import validation_errors

log = logging.getLogger("medlora.api")


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
        kind = (
            NOT_FOUND
            if exc.status_code == 404
            else ProblemType(f"http-{exc.status_code}", str(exc.detail), exc.status_code)
        )
        return problem_response(Problem(kind, str(exc.detail)), request)

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, ClientDisconnect):
            # The client hung up mid-body (or BodyLimit cut it off): nobody reads this answer.
            return problem_response(Problem(INVALID_REQUEST, "request body was not received completely"), request)
        log.error(
            "unhandled error",
            extra={"request_id": getattr(request.state, "request_id", None), "error_type": type(exc).__name__},
        )
        return problem_response(Problem(INTERNAL, "unexpected error; see logs for the request id"), request)
