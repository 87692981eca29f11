"""Registry routes: the tasks and adapters a client can use, and adapter administration."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.auth import AdminDep, Caller, current_caller
from app.api.openapi import problems
from app.problems import (
    ADAPTER_CONFLICT,
    ADAPTER_NOT_FOUND,
    ENGINE_UNAVAILABLE,
    INVALID_ADAPTER,
    NOT_FOUND,
    NOT_READY,
    UNKNOWN_ADAPTER,
    UNKNOWN_TASK,
    Problem,
)
from app.tasks.adapters import EVAL_REPORT, AdapterRecord
from app.tasks.protocol import AdapterSelection, In
from app.tasks.service import Service
from app.tasks.spec import NAME_PATTERN, VERSION_PATTERN

log = logging.getLogger("medlora.api")

TaskName = Annotated[str, Path(pattern=NAME_PATTERN, description="A task name (GET /v1/tasks).")]
AdapterNameParam = Annotated[str, Path(pattern=NAME_PATTERN)]
VersionParam = Annotated[str, Path(pattern=VERSION_PATTERN)]


class AdapterName(BaseModel):
    name: str
    version: str


# The report is self-contained HTML with inline SVG charts and styles, and no script: it runs
# nothing, loads nothing, and is sandboxed besides.
REPORT_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox"


def report_url(record: AdapterRecord) -> str | None:
    """Where the page finds the adapter's latest evaluation report, if there is one."""
    has_report = (record.path / EVAL_REPORT).is_file()
    return f"/v1/adapters/{record.name}/{record.version}/report" if has_report else None


class TaskInfo(BaseModel):
    name: str
    type: str
    languages: list[str]
    description: str
    labels: list[str]
    attributes: list[str]
    multi_label: bool
    output_schema: dict[str, Any] = Field(
        alias="schema", description="What the model writes (its grammar is compiled from this schema)."
    )
    adapter: AdapterName
    adapter_report: str | None = Field(
        None, description="The latest `medlora eval` report of the task's adapter (HTML), when there is one."
    )

    model_config = ConfigDict(populate_by_name=True, extra="allow")


class TasksOut(BaseModel):
    tasks: list[TaskInfo]


class AdapterInfo(BaseModel):
    name: str
    version: str
    path: str
    resident: bool
    rank: int
    target_modules: list[str]
    base_model: str
    tasks: list[str]
    in_flight: int


class AdaptersOut(BaseModel):
    adapters: list[AdapterInfo]


class AdapterRegistration(In):
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=VERSION_PATTERN)
    path: str = Field(min_length=1, max_length=4096)


class SwitchOut(BaseModel):
    task: str
    adapter: AdapterName
    previous: str | None = Field(description="The adapter the task used before, as name@version.")


def _adapter_info(record: AdapterRecord, tasks: list[str]) -> AdapterInfo:
    return AdapterInfo(
        name=record.name,
        version=record.version,
        path=str(record.path),
        resident=record.resident,
        rank=record.files.rank,
        target_modules=list(record.files.target_modules),
        base_model=record.files.base_model,
        tasks=tasks,
        in_flight=record.leases,
    )


def registry_router(service: Service) -> APIRouter:
    router = APIRouter()

    def audit(request: Request, caller: Caller, action: str, **fields: str) -> None:
        log.info(
            "admin action",
            extra={"request_id": request.state.request_id, "client": caller.name, "action": action, **fields},
        )

    @router.get("/v1/tasks", tags=["registry"], dependencies=[Depends(current_caller)])
    async def list_tasks() -> TasksOut:
        out = []
        for task in service.tasks.values():
            bound = service.registry.bound(task.name)
            ref = task.manifest.adapter
            out.append(
                TaskInfo(
                    name=task.name,
                    type=task.type,
                    languages=task.manifest.languages,
                    description=task.manifest.description,
                    labels=task.label_names,
                    attributes=task.attribute_names,
                    multi_label=task.manifest.multi_label,
                    schema=task.schema,
                    adapter=AdapterName(
                        name=bound.name if bound else ref.name, version=bound.version if bound else ref.version
                    ),
                    adapter_report=await asyncio.to_thread(report_url, bound) if bound else None,
                    **task.kind.describe(task),
                )
            )
        return TasksOut(tasks=out)

    @router.get("/v1/adapters", tags=["registry"], dependencies=[Depends(current_caller)])
    async def list_adapters() -> AdaptersOut:
        registry = service.registry
        return AdaptersOut(adapters=[_adapter_info(r, registry.tasks_using(r.key)) for r in registry.records()])

    @router.post(
        "/v1/adapters",
        status_code=201,
        tags=["admin"],
        responses=problems(ADAPTER_NOT_FOUND, ADAPTER_CONFLICT, INVALID_ADAPTER, NOT_READY, ENGINE_UNAVAILABLE),
    )
    async def register_adapter(body: AdapterRegistration, request: Request, caller: AdminDep) -> AdapterInfo:
        service.require_ready()
        audit(request, caller, "register", adapter=f"{body.name}@{body.version}")
        record = await service.registry.register(body.name, body.version, service.resolve_adapter_path(body.path))
        service.metrics.adapter_resident.labels(record.name, record.version).set(1)
        return _adapter_info(record, service.registry.tasks_using(record.key))

    @router.put(
        "/v1/tasks/{task_name}/adapter",
        tags=["admin"],
        responses=problems(UNKNOWN_TASK, UNKNOWN_ADAPTER, NOT_READY),
    )
    async def switch_adapter(
        task_name: TaskName, body: AdapterSelection, request: Request, caller: AdminDep
    ) -> SwitchOut:
        service.require_ready()
        audit(request, caller, "switch", task=task_name, adapter=f"{body.name}@{body.version}")
        if task_name not in service.tasks:
            raise Problem(UNKNOWN_TASK, f"no task named {task_name!r}", {"tasks": sorted(service.tasks)})
        previous = await service.bind(task_name, body.name, body.version)
        return SwitchOut(task=task_name, adapter=AdapterName(name=body.name, version=body.version), previous=previous)

    @router.get(
        "/v1/adapters/{name}/{version}/report",
        tags=["registry"],
        response_class=Response,
        responses={
            200: {
                "description": "The adapter's latest evaluation report: one self-contained HTML file.",
                "content": {"text/html": {"schema": {"type": "string"}}},
            },
            **problems(UNKNOWN_ADAPTER, NOT_FOUND),
        },
        dependencies=[Depends(current_caller)],
    )
    async def adapter_report(name: AdapterNameParam, version: VersionParam) -> Response:
        record = service.registry.get(name, version)
        path = record.path / EVAL_REPORT
        try:
            page = await asyncio.to_thread(path.read_bytes)
        except OSError:
            detail = f"adapter {name}@{version} has no evaluation report (run `medlora eval` on it)"
            raise Problem(NOT_FOUND, detail) from None
        headers = {"Content-Security-Policy": REPORT_POLICY, "X-Content-Type-Options": "nosniff"}
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    @router.delete(
        "/v1/adapters/{name}/{version}",
        status_code=204,
        tags=["admin"],
        responses=problems(UNKNOWN_ADAPTER, ADAPTER_CONFLICT, NOT_READY),
    )
    async def delete_adapter(
        name: AdapterNameParam, version: VersionParam, request: Request, caller: AdminDep
    ) -> Response:
        service.require_ready()
        audit(request, caller, "delete", adapter=f"{name}@{version}")
        await service.registry.unregister(name, version)
        service.metrics.adapter_resident.labels(name, version).set(0)
        return Response(status_code=204)

    return router
