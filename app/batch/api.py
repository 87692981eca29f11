"""OpenAI Batch API routes: `/v1/files` and `/v1/batches`, in the shapes the `openai` client expects."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from fastapi import APIRouter, Form, Query, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from app.api.auth import Caller, CallerDep
from app.batch.jobs import COMPLETION_WINDOWS, BatchRunner, batch_endpoints
from app.batch.store import FINAL_STATUSES, Batch, BatchStore, StoredFile, new_id
from app.problems import (
    BATCH_NOT_CANCELLABLE,
    FILE_IN_USE,
    INVALID_REQUEST,
    NOT_FOUND,
    PAYLOAD_TOO_LARGE,
    Problem,
)
from app.settings import Settings
from app.tasks.service import Service

_CHUNK = 1 << 20


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(max_length=128)
    endpoint: str = Field(description="A task endpoint: /v1/ner, /v1/qa, /v1/classify, ...")
    completion_window: str = Field(description='Only "24h", as in the OpenAI API.')
    metadata: dict[str, str] | None = None


def batch_router(settings: Settings, store: BatchStore, runner: BatchRunner) -> APIRouter:
    router = APIRouter(tags=["batch"])

    async def get_batch(batch_id: str, caller: Caller) -> Batch:
        batch = await asyncio.to_thread(store.get_batch, batch_id)
        # Another key's batch is reported as missing: its existence is not this caller's business.
        if batch is None or not caller.may_see(batch.owner):
            raise Problem(NOT_FOUND, f"no batch {batch_id!r}")
        return batch

    @router.post("/v1/files")
    async def upload_file(caller: CallerDep, file: UploadFile, purpose: str = Form(...)) -> dict[str, Any]:
        if purpose != "batch":
            raise Problem(INVALID_REQUEST, f"purpose must be 'batch', not {purpose!r}")
        file_id = new_id("file")
        final = store.file_path(file_id)
        partial = final.with_suffix(".part")
        size, newlines, last, limit = 0, 0, b"\n", settings.batch_max_upload_bytes
        handle = await asyncio.to_thread(open, partial, "wb")
        try:
            while chunk := await file.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise Problem(PAYLOAD_TOO_LARGE, f"file exceeds the limit of {limit} bytes")
                newlines += chunk.count(b"\n")
                last = chunk[-1:]
                await asyncio.to_thread(handle.write, chunk)
            handle.close()
            lines = newlines + (last != b"\n")
            if size == 0:
                raise Problem(INVALID_REQUEST, "the file is empty")
            if lines > settings.batch_max_lines:
                raise Problem(PAYLOAD_TOO_LARGE, f"{lines} lines exceed the limit of {settings.batch_max_lines}")
            await asyncio.to_thread(os.replace, partial, final)
        finally:
            handle.close()
            partial.unlink(missing_ok=True)
        name = file.filename or "upload.jsonl"
        record = await asyncio.to_thread(store.add_file, file_id, purpose, name, size, lines, caller.name)
        return record.describe()

    @router.get("/v1/files")
    async def list_files(caller: CallerDep, purpose: str | None = None) -> dict[str, Any]:
        files = await asyncio.to_thread(store.list_files, purpose)
        return {"object": "list", "data": [f.describe() for f in files if caller.may_see(f.owner)]}

    async def get_file(file_id: str, caller: Caller) -> StoredFile:
        record = await asyncio.to_thread(store.get_file, file_id)
        if record is None or not caller.may_see(record.owner):
            raise Problem(NOT_FOUND, f"no file {file_id!r}")
        return record

    @router.get("/v1/files/{file_id}")
    async def retrieve_file(file_id: str, caller: CallerDep) -> dict[str, Any]:
        return (await get_file(file_id, caller)).describe()

    @router.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str, caller: CallerDep) -> FileResponse:
        record = await get_file(file_id, caller)
        return FileResponse(store.file_path(record.id), media_type="application/jsonl", filename=record.filename)

    @router.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str, caller: CallerDep) -> dict[str, Any]:
        await get_file(file_id, caller)
        if await asyncio.to_thread(store.file_in_use, file_id):
            raise Problem(FILE_IN_USE, f"file {file_id!r} is the input of an unfinished batch")
        await asyncio.to_thread(store.delete_file, file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    @router.post("/v1/batches")
    async def create_batch(body: BatchCreate, caller: CallerDep) -> dict[str, Any]:
        if body.endpoint not in batch_endpoints():
            raise Problem(INVALID_REQUEST, f"endpoint must be one of {sorted(batch_endpoints())}")
        if body.completion_window not in COMPLETION_WINDOWS:
            raise Problem(INVALID_REQUEST, f"completion_window must be one of {sorted(COMPLETION_WINDOWS)}")
        source = await get_file(body.input_file_id, caller)
        if source.purpose != "batch":
            raise Problem(INVALID_REQUEST, f"file {source.id!r} was not uploaded with purpose 'batch'")
        now = int(time.time())
        batch = Batch(
            id=new_id("batch"),
            endpoint=body.endpoint,
            input_file_id=source.id,
            completion_window=body.completion_window,
            created_at=now,
            expires_at=now + COMPLETION_WINDOWS[body.completion_window],
            metadata=body.metadata,
            owner=caller.name,
            total=source.lines,
        )
        await asyncio.to_thread(store.save_batch, batch)
        runner.start(batch.id)
        return batch.describe()

    @router.get("/v1/batches")
    async def list_batches(
        caller: CallerDep, limit: int = Query(20, ge=1, le=100), after: str | None = Query(None, max_length=128)
    ) -> dict[str, Any]:
        batches = [b for b in await asyncio.to_thread(store.batches) if caller.may_see(b.owner)]
        if after is not None:
            ids = [b.id for b in batches]
            batches = batches[ids.index(after) + 1 :] if after in ids else []
        page = batches[:limit]
        return {
            "object": "list",
            "data": [b.describe() for b in page],
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
            "has_more": len(batches) > limit,
        }

    @router.get("/v1/batches/{batch_id}")
    async def retrieve_batch(batch_id: str, caller: CallerDep) -> dict[str, Any]:
        return (await get_batch(batch_id, caller)).describe()

    @router.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str, caller: CallerDep) -> dict[str, Any]:
        batch = await get_batch(batch_id, caller)
        if batch.status in FINAL_STATUSES:
            raise Problem(BATCH_NOT_CANCELLABLE, f"batch {batch_id!r} is already {batch.status}")
        runner.cancel(batch_id)
        view = batch.describe()
        if batch.status in ("validating", "in_progress"):
            view["status"] = "cancelling"  # what the job's next save records
        return view

    return router


class BatchJobs:
    """The batch jobs API as one part of the gateway: its store, its runner, its routes."""

    def __init__(self, settings: Settings, service: Service):
        self.store = BatchStore(settings.batch_dir)
        self.runner = BatchRunner(service, self.store, concurrency=settings.batch_concurrency)
        self.router = batch_router(settings, self.store, self.runner)

    async def start(self) -> None:
        # Unfinished jobs pick up where they stopped; their lines wait for the engine.
        await self.runner.resume_all()

    async def stop(self) -> None:
        await self.runner.stop()
        self.store.close()
