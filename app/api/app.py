"""HTTP layer: routes, problem+json errors, request ids, disconnect cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import models as m
from app.api.auth import Authenticator, Caller
from app.batch.api import batch_router
from app.batch.jobs import BatchRunner
from app.batch.store import BatchStore
from app.problems import (
    INTERNAL,
    INVALID_REQUEST,
    NOT_FOUND,
    PAYLOAD_TOO_LARGE,
    PROBLEM_MEDIA_TYPE,
    UNKNOWN_TASK,
    Problem,
    ProblemType,
)
from app.tasks.service import Service, run_startup
from app.tasks.calls import Abandoned, execute, prepare, validation_errors

log = logging.getLogger("medlora.api")
T = TypeVar("T")
# A security scheme so the OpenAPI document shows how to authenticate; the Authenticator
# decides. Module level: FastAPI resolves the dependency's (postponed) annotations here.
BEARER = HTTPBearer(auto_error=False, description="API key (admin key for adapter administration)")


class BodyLimit:
    """Answer 413 as soon as a streamed request body passes its limit, then stop reading it."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, received, cut = self.limit_for(scope["path"]), 0, False

        async def limited_receive() -> Message:
            nonlocal received, cut
            message = await receive()
            if message["type"] == "http.request" and not cut:
                received += len(message.get("body", b""))
                if received > limit:
                    cut = True
                    problem = Problem(PAYLOAD_TOO_LARGE, f"request body exceeds {limit} bytes")
                    body = json.dumps(problem.body(instance=scope["path"])).encode()
                    headers = [
                        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                        (b"content-length", str(len(body)).encode()),
                    ]
                    await send({"type": "http.response.start", "status": 413, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not cut:  # the 413 is the answer; whatever the app says after it is dropped
                await send(message)

        await self.app(scope, limited_receive, guarded_send)


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


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`; if the client goes away first, cancel it (aborting engine requests)."""
    job = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({job, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not job.done():
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
        watcher.cancel()
    if job.cancelled():
        raise Abandoned
    return job.result()


def create_app(service: Service) -> FastAPI:
    settings = service.settings

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        startup = asyncio.create_task(run_startup(service))
        # Unfinished batch jobs pick up where they stopped; their lines wait for the engine.
        await batch_runner.resume_all()
        try:
            yield
        finally:
            await batch_runner.stop()
            startup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await startup
            await service.stop()
            batch_store.close()

    app = FastAPI(
        title="medlora",
        version="0.1.0",
        description="Clinical NLP annotations (NER, QA, classification) from a small LLM with per-task LoRA adapters.",
        lifespan=lifespan,
    )
    app.state.service = service
    batch_store = BatchStore(settings.batch_dir)
    batch_runner = BatchRunner(service, batch_store, concurrency=settings.batch_concurrency)
    auth = Authenticator(settings.api_keys_file, settings.admin_keys_file)

    def require_client(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]) -> None:
        request.state.caller = auth.client(request.headers.get("authorization"))

    def require_admin(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]) -> None:
        request.state.caller = Caller(auth.admin(request.headers.get("authorization")), True)

    client_only = [Depends(require_client)]
    admin_only = [Depends(require_admin)]
    app.include_router(batch_router(settings, batch_store, batch_runner), dependencies=client_only)
    # Whole-body bound: the largest valid request, with JSON escaping at its worst.
    max_body = settings.max_documents * (settings.max_document_chars * 6 + 4096) + 65536

    def body_limit(path: str) -> int:
        # Batch uploads have their own (larger) limit.
        return settings.batch_max_upload_bytes + 65536 if path == "/v1/files" else max_body

    @app.middleware("http")
    async def request_context(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = request_id[:128]
        length = request.headers.get("content-length")
        limit = body_limit(request.url.path)
        response: Response
        if length and length.isdigit() and int(length) > limit:
            response = problem_response(Problem(PAYLOAD_TOO_LARGE, f"request body exceeds {limit} bytes"), request)
        elif (denied := authenticate(request)) is not None:
            response = denied
        else:
            response = await call_next(request)
        response.headers["X-Request-ID"] = request.state.request_id
        return response

    def authenticate(request: Request) -> Response | None:
        """Keys are checked before any body is read: an anonymous caller cannot make the gateway
        buffer or parse a body (admin-ness is checked later, per route)."""
        path = request.url.path
        if not (path == "/v1" or path.startswith("/v1/")):
            return None
        try:
            request.state.caller = auth.client(request.headers.get("authorization"))
        except Problem as problem:
            return problem_response(problem, request)
        return None

    # Chunked bodies carry no Content-Length: count what streams in (outermost middleware).
    app.add_middleware(BodyLimit, limit_for=body_limit)

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

    async def run_call(request: Request, endpoint: str, body: m.NerRequest | m.QaRequest | m.ClassifyRequest) -> Any:
        call = prepare(service, endpoint, body)
        try:
            return await execute(
                service,
                call,
                request_id=request.state.request_id,
                watch=lambda work: cancel_on_disconnect(request, work),
                client=request.state.caller.name,
            )
        except Abandoned:
            return Response(status_code=499)

    @app.post("/v1/ner", response_model=m.NerResponse, tags=["tasks"], dependencies=client_only)
    async def ner(body: m.NerRequest, request: Request) -> Any:
        return await run_call(request, "ner", body)

    @app.post("/v1/qa", response_model=m.QaResponse, tags=["tasks"], dependencies=client_only)
    async def qa(body: m.QaRequest, request: Request) -> Any:
        return await run_call(request, "qa", body)

    @app.post("/v1/classify", response_model=m.ClassifyResponse, tags=["tasks"], dependencies=client_only)
    async def classify(body: m.ClassifyRequest, request: Request) -> Any:
        return await run_call(request, "classify", body)

    @app.get("/v1/tasks", tags=["registry"], dependencies=client_only)
    async def list_tasks() -> dict[str, Any]:
        out = []
        for task in service.tasks.values():
            bound = service.registry.bound(task.name)
            ref = task.manifest.adapter
            out.append(
                {
                    "name": task.name,
                    "type": task.type,
                    "languages": task.manifest.languages,
                    "description": task.manifest.description,
                    "labels": task.label_names,
                    "attributes": task.attribute_names,
                    "multi_label": task.manifest.multi_label,
                    "schema": task.schema,
                    "adapter": {
                        "name": bound.name if bound else ref.name,
                        "version": bound.version if bound else ref.version,
                    },
                }
            )
        return {"tasks": out}

    @app.get("/v1/adapters", tags=["registry"], dependencies=client_only)
    async def list_adapters() -> dict[str, Any]:
        return {"adapters": [r.describe(service.registry.tasks_using(r.key)) for r in service.registry.records()]}

    def audit(request: Request, action: str, **fields: str) -> None:
        log.info(
            "admin action",
            extra={
                "request_id": request.state.request_id,
                "client": request.state.caller.name,
                "action": action,
                **fields,
            },
        )

    @app.post("/v1/adapters", status_code=201, tags=["admin"], dependencies=admin_only)
    async def register_adapter(body: m.AdapterRegistration, request: Request) -> dict[str, Any]:
        service.require_ready()
        audit(request, "register", adapter=f"{body.name}@{body.version}")
        record = await service.registry.register(body.name, body.version, service.resolve_adapter_path(body.path))
        service.metrics.adapter_resident.labels(record.name, record.version).set(1)
        return record.describe(service.registry.tasks_using(record.key))

    @app.put("/v1/tasks/{task_name}/adapter", tags=["admin"], dependencies=admin_only)
    async def switch_adapter(task_name: str, body: m.AdapterSelection, request: Request) -> dict[str, Any]:
        service.require_ready()
        audit(request, "switch", task=task_name, adapter=f"{body.name}@{body.version}")
        if task_name not in service.tasks:
            raise Problem(UNKNOWN_TASK, f"no task named {task_name!r}", {"tasks": sorted(service.tasks)})
        previous = await service.bind(task_name, body.name, body.version)
        return {"task": task_name, "adapter": {"name": body.name, "version": body.version}, "previous": previous}

    @app.delete("/v1/adapters/{name}/{version}", status_code=204, tags=["admin"], dependencies=admin_only)
    async def delete_adapter(name: str, version: str, request: Request) -> Response:
        service.require_ready()
        audit(request, "delete", adapter=f"{name}@{version}")
        await service.registry.unregister(name, version)
        service.metrics.adapter_resident.labels(name, version).set(0)
        return Response(status_code=204)

    @app.get("/livez", tags=["health"])
    async def livez() -> JSONResponse:
        # A failed startup never recovers by itself: let the orchestrator restart the process.
        if service.startup_error:
            return JSONResponse({"status": "failed", "error": service.startup_error}, status_code=503)
        return JSONResponse({"status": "alive"})

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        if service.ready:
            return JSONResponse({"status": "ready", "tasks": sorted(service.tasks)})
        body = {
            "status": "failed" if service.startup_error else "starting",
            "error": service.startup_error,
            **service.engine.describe(),
        }
        return JSONResponse(body, status_code=503, headers={"Retry-After": "10"})

    @app.get("/metrics", tags=["health"])
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics_registry), media_type=CONTENT_TYPE_LATEST)

    return app
