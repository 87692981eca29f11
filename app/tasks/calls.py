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

from app.api import models as m
from app.tasks.adapters import AdapterChoice, AdapterUse
from app.tasks.grounding import Span
from app.tasks.manifests import Task
from app.problems import INVALID_REQUEST, TIMEOUT, Problem
from app.tasks.service import Service
from app.tasks.runner import Document, QaItem

log = logging.getLogger("medlora.calls")

# Interactive requests go first in the engine's queue; batch work fills the gaps.
INTERACTIVE_PRIORITY = 0
BATCH_PRIORITY = 10

REQUEST_MODELS: dict[str, type[m.NerRequest | m.QaRequest | m.ClassifyRequest]] = {
    "ner": m.NerRequest,
    "qa": m.QaRequest,
    "classify": m.ClassifyRequest,
}
TASK_TYPES = {"ner": "ner", "qa": "qa", "classify": "classification"}  # endpoint -> task type
ENDPOINT_OF = {task_type: endpoint for endpoint, task_type in TASK_TYPES.items()}
ITEMS_KEY = {"ner": "documents", "qa": "items", "classify": "documents"}  # endpoint -> list of inputs


class Abandoned(Exception):
    """The caller went away before the result was ready; the engine work was cancelled."""


@dataclass(frozen=True)
class TaskCall:
    endpoint: str  # "ner" | "qa" | "classify"
    task: Task
    sizes: list[tuple[str, int]]  # (item id, characters) for the input limits
    choice: AdapterChoice
    run: Callable[[AdapterUse, int], Awaitable[BaseModel]]  # (adapter, priority) -> response


def parse_body(endpoint: str, body: Any) -> m.NerRequest | m.QaRequest | m.ClassifyRequest:
    """Validate a raw JSON body as the endpoint's request model (problem on failure, no input echo)."""
    try:
        return REQUEST_MODELS[endpoint].model_validate(body)
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


def _span_entity(span: Span) -> m.EntityOut:
    return m.EntityOut(start=span.start, end=span.end, text=span.text, label=span.label, attributes=span.attributes)


def prepare(service: Service, endpoint: str, body: m.NerRequest | m.QaRequest | m.ClassifyRequest) -> TaskCall:
    task = service.task(body.task, TASK_TYPES[endpoint])
    runner = service.runner

    def model_info(adapter: AdapterUse) -> m.ModelInfo:
        return m.ModelInfo(base=service.model.display_name, adapter=adapter.name, adapter_version=adapter.version)

    if isinstance(body, m.QaRequest):
        items = [QaItem(i.id, i.context, i.question) for i in body.items]

        async def run_qa(adapter: AdapterUse, priority: int) -> BaseModel:
            results = await runner.qa(task, adapter, items, priority=priority)
            return m.QaResponse(
                task=task.name,
                model=model_info(adapter),
                items=[
                    m.QaItemOut(
                        id=r.id,
                        answer=None
                        if r.answer is None
                        else m.AnswerOut(text=r.answer.text, start=r.answer.start, end=r.answer.end),
                    )
                    for r in results
                ],
            )

        sizes = [(i.id, len(i.context) + len(i.question)) for i in items]
        return TaskCall(endpoint, task, sizes, body.adapter_choice(), run_qa)

    docs = [Document(d.id, d.text) for d in body.documents]
    sizes = [(d.id, len(d.text)) for d in docs]
    if isinstance(body, m.NerRequest):

        async def run_ner(adapter: AdapterUse, priority: int) -> BaseModel:
            results = await runner.ner(task, adapter, docs, priority=priority)
            return m.NerResponse(
                task=task.name,
                model=model_info(adapter),
                documents=[
                    m.NerDocumentOut(
                        id=r.id, entities=[_span_entity(s) for s in r.entities], entity_limit_reached=r.limit_reached
                    )
                    for r in results
                ],
            )

        return TaskCall(endpoint, task, sizes, body.adapter_choice(), run_ner)

    async def run_classify(adapter: AdapterUse, priority: int) -> BaseModel:
        results = await runner.classify(task, adapter, docs, priority=priority)
        return m.ClassifyResponse(
            task=task.name,
            model=model_info(adapter),
            documents=[m.ClassifyDocumentOut(id=r.id, labels=r.labels) for r in results],
        )

    return TaskCall(endpoint, task, sizes, body.adapter_choice(), run_classify)


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
    """Check inputs, lease the adapter and run the call, with timeout, metrics and a log line.

    `watch` wraps the work (the API cancels it when the client disconnects and raises
    Abandoned); `origin` tells interactive and batch traffic apart in logs and metrics.
    """
    service.check_inputs(call.sizes)
    service.require_ready()
    settings, metrics = service.settings, service.metrics
    task = call.task
    n_items, n_chars = len(call.sizes), sum(size for _, size in call.sizes)
    endpoint_label = call.endpoint if origin == "api" else f"{origin}:{call.endpoint}"
    started = time.perf_counter()
    outcome = "error"
    with service.registry.lease(task.name, call.choice) as adapter:
        labels = (task.name, adapter.key)
        metrics.in_flight.labels(*labels).inc()
        try:
            async with asyncio.timeout(settings.request_timeout_s):
                work = call.run(adapter, priority)
                result = await (watch(work) if watch else work)
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
    call = prepare(service, endpoint, parse_body(endpoint, body))
    response = await execute(service, call, request_id=request_id, origin=origin, priority=priority, client=client)
    return response.model_dump(mode="json")
