"""One task call: a validated request body in, a response body out.

The HTTP routes, batch jobs and `medlora annotate` all run task requests through here, so
a batch line gets exactly what the same body POSTed to `/v1/<endpoint>` would get: the
same input limits, adapter lease, timeout, metrics and structured log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from app.problems import INVALID_REQUEST, NOT_ACCEPTABLE, NOT_FOUND, TIMEOUT, Problem
from app.tasks.adapters import AdapterChoice, AdapterUse
from app.tasks.fhir import Bundle, BundleBuilder, FhirOptions
from app.tasks.protocol import FhirChoice, ModelInfo, TaskRequest, TaskResponse
from app.tasks.runner import RunStats
from app.tasks.service import Service
from app.tasks.types import task_types
from app.tasks.types.base import Task, TaskInput, TaskType

log = logging.getLogger("medlora.calls")

# Interactive requests go first in the engine's queue; batch work fills the gaps.
INTERACTIVE_PRIORITY = 0
BATCH_PRIORITY = 10


class Abandoned(Exception):
    """The caller went away before the result was ready; the engine work was cancelled."""


@dataclass(frozen=True)
class TaskCall:
    kind: TaskType[Any]
    task: Task
    items: list[TaskInput]
    choice: AdapterChoice
    fhir: FhirOptions | None = None  # answer as a FHIR R4 Bundle

    @property
    def endpoint(self) -> str:  # the task type's endpoint: "ner", "qa", "classify", ...
        return self.kind.endpoint


def endpoints() -> dict[str, TaskType[Any]]:
    """Task types by endpoint name (POST /v1/<endpoint>)."""
    return {kind.endpoint: kind for kind in task_types().values()}


def endpoint_type(endpoint: str) -> TaskType[Any]:
    kind = endpoints().get(endpoint)
    if kind is None:
        raise Problem(NOT_FOUND, f"no task endpoint {endpoint!r}", {"endpoints": sorted(endpoints())})
    return kind


def parse_body(kind: TaskType[Any], body: Any) -> TaskRequest:
    """Validate a raw JSON body as the endpoint's request model (problem on failure, no input echo)."""
    try:
        return kind.request_model.model_validate(body)
    except ValidationError as exc:
        raise Problem(INVALID_REQUEST, "request body failed validation", {"errors": validation_errors(exc)}) from None


class _HasErrors(Protocol):
    def errors(self) -> Sequence[Any]: ...


def validation_errors(exc: _HasErrors) -> list[dict[str, Any]]:
    # Field locations and messages only: pydantic's `input` would echo clinical text.
    return [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]


def prepare(service: Service, kind: TaskType[Any], body: TaskRequest, *, accept_fhir: bool = False) -> TaskCall:
    """Resolve the task (of this endpoint's type) and read its items, without running it.
    FHIR output is asked for by the body (`format`) or by the API's Accept header."""
    task = service.task(body.task, kind.name)
    fhir = None
    if accept_fhir or (isinstance(body, FhirChoice) and body.wants_fhir):
        if task.manifest.fhir is None:
            raise Problem(NOT_ACCEPTABLE, f"task {task.name!r} has no FHIR mapping: ask for application/json")
        fhir = FhirOptions(attach_text=isinstance(body, FhirChoice) and body.attach_text)
    return TaskCall(kind, task, kind.inputs(body), body.adapter_choice(), fhir)


async def execute(
    service: Service,
    call: TaskCall,
    *,
    request_id: str,
    origin: str = "api",
    priority: int = INTERACTIVE_PRIORITY,
    watch: Callable[[Awaitable[BaseModel]], Awaitable[BaseModel]] | None = None,
    client: str | None = None,
) -> BaseModel:
    """Check inputs, lease the adapter, admit and run the call, with timeout, metrics and a log line.

    `watch` wraps the work (the API cancels it when the client disconnects and raises
    Abandoned); `origin` tells interactive and batch traffic apart in logs and metrics, and
    picks the admission pool: "api" requests wait a bounded time, background work as long as
    it takes.
    """
    service.check_inputs(call.items, call.kind.items_field)
    service.require_ready()
    settings, metrics = service.settings, service.metrics
    task = call.task
    n_items, n_chars = len(call.items), sum(len(value) for item in call.items for value in item.payload.values())
    endpoint_label = call.endpoint if origin == "api" else f"{origin}:{call.endpoint}"
    started = time.perf_counter()
    outcome = "error"
    with service.registry.lease(task.name, call.choice) as adapter, service.tracked():
        labels = (task.name, adapter.key)
        metrics.in_flight.labels(*labels).inc()
        try:
            async with asyncio.timeout(settings.request_timeout_s):
                work = _run(
                    service, call, adapter, origin=origin, priority=priority, client=client, request_id=request_id
                )
                result = await service.unless_stopped(watch(work) if watch else work)
            outcome = "ok"
            metrics.items.labels(*labels).inc(n_items)
            return result
        except Problem as exc:
            outcome = exc.kind.slug
            raise
        except TimeoutError as exc:
            outcome = TIMEOUT.slug
            raise Problem(TIMEOUT, f"no result within {settings.request_timeout_s:g} s") from exc
        except Abandoned:
            outcome = "client_disconnected"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            elapsed = time.perf_counter() - started
            metrics.in_flight.labels(*labels).dec()
            metrics.requests.labels(endpoint_label, *labels, outcome).inc()
            metrics.latency.labels(*labels).observe(elapsed)
            log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "client": client,
                    "endpoint": endpoint_label,
                    "task": task.name,
                    "adapter": adapter.key,
                    "items": n_items,
                    "chars": n_chars,
                    "ms": round(elapsed * 1000, 1),
                    "outcome": outcome,
                },
            )


async def _run(
    service: Service,
    call: TaskCall,
    adapter: AdapterUse,
    *,
    origin: str,
    priority: int,
    client: str | None,
    request_id: str,
) -> BaseModel:
    """Plan the call's generations (off the event loop), wait for their admission, run them."""
    runner, task = service.runner, call.task
    plan = await asyncio.to_thread(runner.plan, task, call.items)
    stats = RunStats()
    async with service.admission(origin).admit(plan.generations, client) as ticket:
        results = await runner.run(task, adapter, plan, priority=priority, concurrency=ticket.concurrency, stats=stats)
    model = ModelInfo(base=service.model.display_name, adapter=adapter.name, adapter_version=adapter.version)
    response = call.kind.respond(task, model, call.items, results)
    if isinstance(response, TaskResponse) and any(item.min_confidence is not None for item in call.items):
        # Without log-probabilities nothing has a confidence: say that nothing was filtered.
        response.min_confidence_applied = stats.unscored_answers == 0
    if call.fhir is not None:
        return bundle(call, response, call.fhir, request_id)
    return response


def bundle(call: TaskCall, response: BaseModel, options: FhirOptions, request_id: str) -> Bundle:
    """A task response as one FHIR R4 Bundle: each document's resources after its DocumentReference."""
    builder = BundleBuilder(request_id)
    documents = response.model_dump(mode="json")[call.kind.items_field]
    lang = call.task.manifest.languages[0]
    for item, document in zip(call.items, documents, strict=True):
        note = builder.note(item.id, item.source, lang, options)
        for resource in call.kind.fhir_resources(call.task, document, note):
            builder.add(resource)
    return Bundle(builder.bundle())


async def call_json(
    service: Service,
    endpoint: str,
    body: Any,
    *,
    request_id: str,
    origin: str,
    priority: int,
    client: str | None = None,
) -> dict[str, Any]:
    """Raw JSON body in, response JSON out (problems raised): the in-process twin of an HTTP POST."""
    kind = endpoint_type(endpoint)
    call = prepare(service, kind, parse_body(kind, body))
    response = await execute(service, call, request_id=request_id, origin=origin, priority=priority, client=client)
    return response.model_dump(mode="json")
