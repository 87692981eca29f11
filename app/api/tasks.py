"""Task routes: one `POST /v1/<endpoint>` per registered task type, with its own models."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from app.api.auth import Caller, CallerDep
from app.api.openapi import problems
from app.problems import (
    DUPLICATE_ID,
    ENGINE_UNAVAILABLE,
    GENERATION_FAILED,
    INVALID_REQUEST,
    KEY_LIMIT,
    NOT_ACCEPTABLE,
    NOT_READY,
    OVERLOADED,
    TIMEOUT,
    UNKNOWN_ADAPTER,
    UNKNOWN_TASK,
    WRONG_TASK_TYPE,
)
from app.tasks.calls import Abandoned, endpoints, execute, prepare
from app.tasks.fhir import FHIR_CONTENT_TYPE, FHIR_MEDIA_TYPE, Bundle
from app.tasks.protocol import FhirChoice, TaskRequest
from app.tasks.service import Service
from app.tasks.types.base import TaskType

T = TypeVar("T")

# What a task request can be answered with besides its result.
TASK_PROBLEMS = problems(
    WRONG_TASK_TYPE,
    UNKNOWN_TASK,
    UNKNOWN_ADAPTER,
    INVALID_REQUEST,
    DUPLICATE_ID,
    OVERLOADED,
    KEY_LIMIT,
    GENERATION_FAILED,
    NOT_READY,
    ENGINE_UNAVAILABLE,
    TIMEOUT,
)
# A task route answers Accept: application/fhir+json with 406 when its task has no FHIR mapping.
ROUTE_PROBLEMS = {**TASK_PROBLEMS, **problems(NOT_ACCEPTABLE)}

# What a FHIR answer is, for the API document: a generated client gets a JSON object.
_FHIR_RESPONSE = {
    "content": {
        FHIR_MEDIA_TYPE: {
            "schema": {
                "title": "FhirBundle",
                "description": "A FHIR R4 Bundle (type collection); see the README's FHIR section.",
                "type": "object",
                "required": ["resourceType", "type", "entry"],
                "properties": {
                    "resourceType": {"const": "Bundle"},
                    "type": {"const": "collection"},
                    "entry": {"type": "array", "items": {"type": "object"}},
                },
            }
        }
    }
}


def accepts_fhir(accept: str | None) -> bool:
    """Whether an Accept header prefers FHIR JSON to plain JSON (RFC 9110 quality values)."""
    quality: dict[str, float] = {}
    for part in (accept or "").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        quality[media.lower()] = max(q, quality.get(media.lower(), 0.0))
    fhir = quality.get(FHIR_MEDIA_TYPE, 0.0)
    return fhir > 0 and fhir >= quality.get("application/json", 0.0)


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


def task_router(service: Service) -> APIRouter:
    router = APIRouter(tags=["tasks"])
    for kind in endpoints().values():
        _add_route(router, service, kind)
    return router


async def run_request(
    service: Service, kind: TaskType[Any], body: TaskRequest, request: Request, caller: Caller, *, fhir: bool = False
) -> BaseModel:
    """One task request as the API runs it: interactive, cancelled (Abandoned) if the client goes away;
    with `fhir`, answered as a FHIR Bundle (the route's caller prefers it)."""
    return await execute(
        service,
        prepare(service, kind, body, accept_fhir=fhir),
        request_id=request.state.request_id,
        watch=lambda work: cancel_on_disconnect(request, work),
        client=caller.name,
    )


def _add_route(router: APIRouter, service: Service, kind: TaskType[Any]) -> None:
    async def run_task(body: TaskRequest, request: Request, caller: CallerDep) -> Any:
        try:
            fhir = accepts_fhir(request.headers.get("accept"))
            result = await run_request(service, kind, body, request, caller, fhir=fhir)
        except Abandoned:
            return Response(status_code=499)
        if isinstance(result, Bundle):
            return JSONResponse(result.root, media_type=FHIR_CONTENT_TYPE)
        return result

    # FastAPI reads the body model from the annotation: each type's own request model.
    run_task.__annotations__ = {**run_task.__annotations__, "body": kind.request_model}
    router.add_api_route(
        f"/v1/{kind.endpoint}",
        run_task,
        methods=["POST"],
        response_model=kind.response_model,
        summary=kind.summary,
        name=kind.endpoint,  # the operationId stays <endpoint>_v1_<endpoint>_post
        responses={200: _FHIR_RESPONSE, **ROUTE_PROBLEMS}
        if issubclass(kind.request_model, FhirChoice)
        else ROUTE_PROBLEMS,
    )
