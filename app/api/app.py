"""The FastAPI application: middleware (request ids, body limits, authentication), problem
handlers, lifespan (background startup), and the routers of the service's concerns."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from app.api.auth import Authenticator
from app.api.errors import install_problem_handlers, problem_response, unexpected_error
from app.api.health import health_router
from app.api.limits import BodyLimit, body_limit_for
from app.api.openapi import TaskEndpoint, install_openapi
from app.api.registry import registry_router
from app.api.tasks import task_router
from app.api.ui import ui_router
from app.problems import PAYLOAD_TOO_LARGE, Problem
from app.tasks.calls import endpoints
from app.tasks.protocol import json_only
from app.tasks.service import Service


class Extension(Protocol):
    """More routes with a lifecycle of their own (the batch jobs API)."""

    router: APIRouter

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def create_app(service: Service, auth: Authenticator, extensions: Sequence[Extension] = ()) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # The port is bound as soon as this yields: everything slow runs in the background.
        startup = asyncio.create_task(service.run_startup())
        for extension in extensions:
            await extension.start()
        try:
            yield
        finally:
            for extension in reversed(extensions):
                await extension.stop()
            startup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await startup
            await service.stop()

    app = FastAPI(
        title="medlora",
        version="0.1.0",
        description="Clinical NLP annotations from a small LLM with per-task LoRA adapters: every answer "
        "schema-valid, every span grounded in the text sent.",
        lifespan=lifespan,
        # Swagger UI and ReDoc load their scripts from a CDN, which an air-gapped hospital
        # cannot reach; the contract itself is /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.auth = auth
    app.state.extensions = list(extensions)
    limit_for = body_limit_for(service.settings)

    @app.middleware("http")
    async def request_context(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = request_id[:128]
        length = request.headers.get("content-length")
        limit = limit_for(request.url.path)
        response: Response
        if length and length.isdigit() and int(length) > limit:
            response = problem_response(Problem(PAYLOAD_TOO_LARGE, f"request body exceeds {limit} bytes"), request)
        elif (denied := authenticate(request)) is not None:
            response = denied
        else:
            try:
                response = await call_next(request)
            except Exception as exc:
                # Answered here rather than by Starlette's last-resort handler, which would also
                # print the traceback (and the exception's message, which can quote a note).
                response = unexpected_error(request, exc)
        response.headers["X-Request-ID"] = request.state.request_id
        return response

    def authenticate(request: Request) -> Response | None:
        """The one place keys are checked, before any body is read: an anonymous caller cannot
        make the gateway buffer or parse a body. Routes read the caller from request.state."""
        path = request.url.path.removeprefix(request.scope.get("root_path", ""))
        if not (path == "/v1" or path.startswith("/v1/")):
            return None
        try:
            request.state.caller = auth.client(request.headers.get("authorization"))
        except Problem as problem:
            return problem_response(problem, request)
        return None

    # Chunked bodies carry no Content-Length: count what streams in (outermost middleware).
    app.add_middleware(BodyLimit, limit_for=limit_for)
    install_problem_handlers(app)
    app.include_router(task_router(service))
    app.include_router(registry_router(service))
    for extension in extensions:
        app.include_router(extension.router)
    app.include_router(health_router(service))
    app.include_router(ui_router())
    install_openapi(
        app, auth_enabled=auth.enabled, limits=service.input_limits, endpoints=lambda: task_endpoints(service)
    )
    return app


def task_endpoints(service: Service) -> list[TaskEndpoint]:
    """Each task route with the tasks of its type that this deployment serves (and the review
    route that runs it, whose body is the JSON-only variant when the type answers FHIR too)."""
    found = []
    for kind in endpoints().values():
        tasks = tuple(sorted(name for name, task in service.tasks.items() if task.kind is kind))
        routes = {f"/v1/{kind.endpoint}": kind.request_model}
        if json_only(kind.request_model) is not kind.request_model:
            routes[f"/v1/reviews/annotate/{kind.endpoint}"] = json_only(kind.request_model)
        for path, model in routes.items():
            found.append(TaskEndpoint(path, model.__name__, kind.items_field, kind.input_fields, tasks))
    return found
