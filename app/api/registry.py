"""Registry routes: the tasks and adapters a client can use, and adapter administration."""

from __future__ import annotations

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
    NOT_READY,
    UNKNOWN_ADAPTER,
    UNKNOWN_TASK,
    Problem,
)
from app.tasks.adapters import AdapterRecord
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
