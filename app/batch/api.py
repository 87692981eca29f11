"""OpenAI Batch API routes: `/v1/files` and `/v1/batches`, in the shapes the `openai` client expects.

Their limits live in the request models, so the OpenAPI document shows them (endpoint and
completion window as enums, bounded metadata and ids). Each API key (without authentication:
the one anonymous owner) has quotas on what it keeps: stored upload files and their bytes,
and unfinished batches. Beyond one, a request is refused with 409 `quota-exceeded`: waiting
alone does not help, the key must delete a file or let a batch finish (or cancel it).
"""

from __future__ import annotations

import asyncio
import enum
import errno
import os
import time
from collections.abc import Callable
from typing import IO, Annotated, Any, Literal

from fastapi import APIRouter, Form, Path, Query, UploadFile
from fastapi.responses import FileResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from app.api.auth import Caller, CallerDep
from app.api.openapi import problems
from app.batch.jobs import COMPLETION_WINDOWS, BatchRunner, answered_lines, batch_endpoints
from app.batch.journal import replace_durably
from app.batch.store import FINAL_STATUSES, Batch, BatchStore, StoredFile, Usage, new_id
from app.problems import (
    BATCH_NOT_CANCELLABLE,
    BATCH_NOT_FINISHED,
    FILE_IN_USE,
    NOT_FOUND,
    PAYLOAD_TOO_LARGE,
    QUOTA_EXCEEDED,
    STORAGE_FULL,
    Problem,
)
from app.settings import Settings
from app.tasks.service import Service

_CHUNK = 1 << 20
ID_MAX_CHARS = 128  # ids this service makes are under 50 characters
BatchId = Annotated[str, Path(max_length=ID_MAX_CHARS)]
FileId = Annotated[str, Path(max_length=ID_MAX_CHARS)]


class Purpose(enum.StrEnum):
    """What an upload is for: only batch input, as in the OpenAI API."""

    BATCH = "batch"


class CompletionWindow(enum.StrEnum):
    """Only 24 hours, as in the OpenAI API."""

    H24 = "24h"


def _batch_endpoint(value: str) -> str:
    if value not in batch_endpoints():
        raise ValueError(f"must be one of {sorted(batch_endpoints())}")
    return value


def _endpoint_enum(schema: dict[str, Any]) -> None:
    # Read when the document is made, as the validator reads it per request: a task type can
    # be registered after this module is imported, and its endpoint takes batches too.
    schema["enum"] = sorted(batch_endpoints())


BatchEndpoint = Annotated[str, AfterValidator(_batch_endpoint), Field(json_schema_extra=_endpoint_enum)]
# OpenAI's bounds on batch metadata: 16 pairs, keys up to 64 characters, values up to 512.
MetadataKey = Annotated[str, StringConstraints(max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(max_length=ID_MAX_CHARS)
    endpoint: BatchEndpoint = Field(description="A task endpoint: /v1/ner, /v1/qa, /v1/classify, ...")
    completion_window: CompletionWindow = Field(description='Only "24h", as in the OpenAI API.')
    metadata: dict[MetadataKey, MetadataValue] | None = Field(
        None, max_length=16, description="Up to 16 pairs; keys up to 64 characters, values up to 512."
    )


# -- response models: the OpenAI shapes, typed for the OpenAPI document -------------------

BatchStatus = Literal[
    "validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled"
]


class FilePurpose(enum.StrEnum):
    BATCH = "batch"  # an upload: a batch's input
    BATCH_OUTPUT = "batch_output"  # a finished batch's output or error file


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: FilePurpose
    status: Literal["processed"] = "processed"


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class RequestCounts(BaseModel):
    total: int = Field(description="Lines the job answers: the input's non-blank lines.")
    completed: int
    failed: int


class BatchError(BaseModel):
    code: str
    message: str


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    expires_at: int
    in_progress_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str] | None


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


def _file(record: StoredFile) -> FileObject:
    return FileObject.model_validate(record.describe())


def _batch(batch: Batch) -> BatchObject:
    return BatchObject.model_validate(batch.describe())


def _quota(what: str, limit: int) -> Problem:
    return Problem(QUOTA_EXCEEDED, f"this key is at its quota of {what}: {limit}", {"limit": limit})


def _upload_quota(settings: Settings) -> Callable[[Usage], None]:
    def check(usage: Usage) -> None:
        """Refuse if the key's stored uploads, this one included, are over a quota."""
        if usage.files > settings.batch_max_files_per_key:
            raise _quota("stored batch files; delete one first", settings.batch_max_files_per_key)
        if usage.bytes > settings.batch_max_upload_bytes_per_key:
            raise _quota("bytes of stored batch files; delete some first", settings.batch_max_upload_bytes_per_key)

    return check


class _LineCounter:
    """Counts the non-blank lines of a file fed in chunks: the lines a batch job answers
    (`jobs.input_lines` skips the blank ones, by the same test)."""

    def __init__(self) -> None:
        self.lines = 0
        self._open_has_text = False  # the line the last chunk ended inside has text so far

    def feed(self, chunk: bytes) -> None:
        *ended, rest = chunk.split(b"\n")
        for index, piece in enumerate(ended):
            if piece.strip() or (index == 0 and self._open_has_text):
                self.lines += 1
        self._open_has_text = bool(rest.strip()) or (not ended and self._open_has_text)

    def finish(self) -> int:
        return self.lines + self._open_has_text


def _store_chunk(handle: IO[bytes], chunk: bytes, counter: _LineCounter) -> None:
    handle.write(chunk)
    counter.feed(chunk)


def _sync_and_close(handle: IO[bytes]) -> None:
    # The data reaches the disk before the rename that makes it visible: after a power
    # loss the file is either absent or whole.
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


def batch_router(settings: Settings, store: BatchStore, runner: BatchRunner) -> APIRouter:
    router = APIRouter(tags=["batch"])
    upload_quota = _upload_quota(settings)

    async def get_batch(batch_id: str, caller: Caller) -> Batch:
        batch = await asyncio.to_thread(store.get_batch, batch_id)
        # Another key's batch is reported as missing: its existence is not this caller's business.
        if batch is None or not caller.may_see(batch.owner):
            raise Problem(NOT_FOUND, f"no batch {batch_id!r}")
        return batch

    @router.post("/v1/files", responses=problems(QUOTA_EXCEEDED, STORAGE_FULL))
    async def upload_file(caller: CallerDep, file: UploadFile, purpose: Annotated[Purpose, Form()]) -> FileObject:
        used = await asyncio.to_thread(store.upload_usage, caller.name)
        upload_quota(Usage(used.files + 1, used.bytes))  # refused before it is copied into the store
        room = settings.batch_max_upload_bytes_per_key - used.bytes
        file_id = new_id("file")
        final = store.file_path(file_id)
        partial = final.with_suffix(".part")
        size, limit, counter = 0, settings.batch_max_upload_bytes, _LineCounter()
        handle = await asyncio.to_thread(open, partial, "wb")
        try:
            while chunk := await file.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise Problem(PAYLOAD_TOO_LARGE, f"file exceeds the limit of {limit} bytes")
                if size > room:
                    upload_quota(Usage(used.files + 1, used.bytes + size))
                await asyncio.to_thread(_store_chunk, handle, chunk, counter)
            await asyncio.to_thread(_sync_and_close, handle)
            # An empty file is a batch with nothing to do (it completes at once), not an error:
            # the contract allows any file, and a generated client may well send one.
            lines = counter.finish()
            if lines > settings.batch_max_lines:
                raise Problem(PAYLOAD_TOO_LARGE, f"{lines} lines exceed the limit of {settings.batch_max_lines}")
            await asyncio.to_thread(replace_durably, partial, final)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise Problem(STORAGE_FULL, "no space left to store the file; nothing was kept") from None
            raise
        finally:
            handle.close()
            partial.unlink(missing_ok=True)
        name = file.filename or "upload.jsonl"
        try:
            # Checked again with the insert: another upload of this key may have finished meanwhile.
            record = await asyncio.to_thread(
                store.add_file, file_id, purpose.value, name, size, lines, caller.name, check=upload_quota
            )
        except BaseException:
            final.unlink(missing_ok=True)
            raise
        return _file(record)

    @router.get("/v1/files")
    async def list_files(caller: CallerDep, purpose: FilePurpose | None = None) -> FileList:
        files = await asyncio.to_thread(store.list_files, purpose.value if purpose else None)
        return FileList(data=[_file(f) for f in files if caller.may_see(f.owner)])

    async def get_file(file_id: str, caller: Caller) -> StoredFile:
        record = await asyncio.to_thread(store.get_file, file_id)
        if record is None or not caller.may_see(record.owner):
            raise Problem(NOT_FOUND, f"no file {file_id!r}")
        return record

    @router.get("/v1/files/{file_id}", responses=problems(NOT_FOUND))
    async def retrieve_file(file_id: FileId, caller: CallerDep) -> FileObject:
        return _file(await get_file(file_id, caller))

    @router.get(
        "/v1/files/{file_id}/content",
        response_class=FileResponse,
        responses={
            200: {
                "description": "The file, as JSON lines.",
                # Bytes (JSON lines inside): a type every client generator reads, where
                # application/jsonl is registered nowhere yet.
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            },
            **problems(NOT_FOUND),
        },
    )
    async def file_content(file_id: FileId, caller: CallerDep) -> FileResponse:
        record = await get_file(file_id, caller)
        return FileResponse(store.file_path(record.id), media_type="application/octet-stream", filename=record.filename)

    @router.delete("/v1/files/{file_id}", responses=problems(NOT_FOUND, FILE_IN_USE))
    async def delete_file(file_id: FileId, caller: CallerDep) -> FileDeleted:
        await get_file(file_id, caller)
        if await asyncio.to_thread(store.file_in_use, file_id):
            raise Problem(FILE_IN_USE, f"file {file_id!r} is the input of an unfinished batch")
        await asyncio.to_thread(store.delete_file, file_id)
        return FileDeleted(id=file_id, deleted=True)

    def active_quota(active: int) -> None:
        if active >= settings.batch_max_active_batches_per_key:
            limit = settings.batch_max_active_batches_per_key
            raise _quota("unfinished batches; wait for one to finish or cancel one", limit)

    @router.post("/v1/batches", responses=problems(NOT_FOUND, QUOTA_EXCEEDED))
    async def create_batch(body: BatchCreate, caller: CallerDep) -> BatchObject:
        source = await get_file(body.input_file_id, caller)
        if source.purpose != Purpose.BATCH.value:
            # A batch's own output is no batch input: there is no input file with that id.
            raise Problem(NOT_FOUND, f"file {source.id!r} is not a batch input (its purpose is {source.purpose!r})")
        now = int(time.time())
        window = body.completion_window.value
        batch = Batch(
            id=new_id("batch"),
            endpoint=body.endpoint,
            input_file_id=source.id,
            completion_window=window,
            created_at=now,
            expires_at=now + COMPLETION_WINDOWS[window],
            metadata=body.metadata,
            owner=caller.name,
            total=source.lines,  # its non-blank lines: each ends in the output or the error file
        )
        await asyncio.to_thread(store.add_batch, batch, active_quota)
        runner.start(batch.id)
        return _batch(batch)

    @router.get("/v1/batches")
    async def list_batches(
        caller: CallerDep,
        limit: int = Query(20, ge=1, le=100),
        after: str | None = Query(None, max_length=ID_MAX_CHARS),
    ) -> BatchList:
        batches = [b for b in await asyncio.to_thread(store.batches) if caller.may_see(b.owner)]
        if after is not None:
            ids = [b.id for b in batches]
            batches = batches[ids.index(after) + 1 :] if after in ids else []
        page = batches[:limit]
        return BatchList(
            data=[_batch(b) for b in page],
            first_id=page[0].id if page else None,
            last_id=page[-1].id if page else None,
            has_more=len(batches) > limit,
        )

    @router.get("/v1/batches/{batch_id}", responses=problems(NOT_FOUND))
    async def retrieve_batch(batch_id: BatchId, caller: CallerDep) -> BatchObject:
        return _batch(await get_batch(batch_id, caller))

    @router.post("/v1/batches/{batch_id}/cancel", responses=problems(NOT_FOUND, BATCH_NOT_CANCELLABLE))
    async def cancel_batch(batch_id: BatchId, caller: CallerDep) -> BatchObject:
        batch = await get_batch(batch_id, caller)
        if batch.status in FINAL_STATUSES:
            raise Problem(BATCH_NOT_CANCELLABLE, f"batch {batch_id!r} is already {batch.status}")
        runner.cancel(batch_id)
        view = _batch(batch)
        if batch.status in ("validating", "in_progress"):
            view.status = "cancelling"  # what the job's next save records
        return view

    return router


class BatchJobs:
    """The batch jobs API as one part of the gateway: its store, its runner, its routes."""

    def __init__(self, settings: Settings, service: Service):
        self.store = BatchStore(settings.batch_dir)
        self.runner = BatchRunner(service, self.store, concurrency=settings.batch_concurrency)
        self.router = batch_router(settings, self.store, self.runner)

    async def answered(self, batch_id: str, caller: Caller) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(request body, response body) of each line a finished batch of this caller answered."""
        batch = await asyncio.to_thread(self.store.get_batch, batch_id)
        if batch is None or not caller.may_see(batch.owner):
            raise Problem(NOT_FOUND, f"no batch {batch_id!r}")
        if batch.status not in FINAL_STATUSES:
            raise Problem(BATCH_NOT_FINISHED, f"batch {batch_id!r} is {batch.status}: open it once it has finished")
        if batch.output_file_id is None:
            return []
        output = self.store.file_path(batch.output_file_id)
        source = self.store.file_path(batch.input_file_id)
        if await asyncio.to_thread(self.store.get_file, batch.input_file_id) is None:
            raise Problem(NOT_FOUND, f"the input file of batch {batch_id!r} was deleted: its notes are gone")
        return await asyncio.to_thread(answered_lines, source, output, batch.endpoint)

    async def start(self) -> None:
        # Unfinished jobs pick up where they stopped; their lines wait for the engine.
        await self.runner.resume_all()

    async def stop(self) -> None:
        await self.runner.stop()
        self.store.close()
