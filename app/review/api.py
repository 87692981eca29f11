"""Review routes: annotate notes for review or open a finished batch, walk a queue least certain
first, save decisions, export them as training and evaluation data.

A review keeps the model's answer as it came (with its confidences, adapter and version) and
the reviewer's decision in the task's gold shape (`TaskType.gold_fields`): what `medlora train`
and `medlora eval` read. Every save is checked by the task's own gold reader (`parse_gold`), so
a decision that does not fit its note (offsets off, a span inside a word, an unknown label) is
refused, never stored; and it names the version it edits, so two tabs on one note cannot
silently overwrite each other (409 `review-conflict`). Reviews belong to the key that made them:
another key's are reported as missing, admin keys included.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Path, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field

from app.api.auth import Caller, CallerDep
from app.api.openapi import problems
from app.api.tasks import TASK_PROBLEMS, run_request
from app.problems import (
    BATCH_NOT_FINISHED,
    INVALID_REVIEW,
    NOT_FOUND,
    QUOTA_EXCEEDED,
    REVIEW_CONFLICT,
    UNKNOWN_TASK,
    Problem,
)
from app.review.changes import count_changes
from app.review.imports import AnnotatedNote, read_annotated
from app.review.records import gold_record
from app.review.store import NewReview, Review, ReviewStore, StaleVersion
from app.settings import Settings
from app.tasks.calls import Abandoned, endpoints
from app.tasks.grounding import piece_boundaries
from app.tasks.protocol import In, TaskRequest, json_only
from app.tasks.service import Service
from app.tasks.spec import NAME_PATTERN
from app.tasks.types.base import BadRecord, TaskType

QUEUE_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
ReviewId = Annotated[str, Path(max_length=64)]
QueueName = Annotated[str, Path(pattern=QUEUE_PATTERN)]
# (request body, response body) of each line a finished batch answered; raises Problem.
BatchAnswers = Callable[[str, Caller], Awaitable[list[tuple[dict[str, Any], dict[str, Any]]]]]


class ChangeCounts(BaseModel):
    accepted: int
    edited: int
    deleted: int
    added: int


class ReviewSummary(BaseModel):
    id: str
    task: str
    source_id: str = Field(description="The note's id as it was sent.")
    status: Literal["pending", "reviewed"]
    version: int = Field(description="Raised by every save; a save names the version it edits.")
    min_confidence: float | None = Field(
        description="The lowest confidence in the model's answer (what the queue orders by); null: none."
    )
    updated_at: int


class ReviewObject(ReviewSummary):
    object: Literal["review"] = "review"
    queue: str
    type: str
    created_at: int
    input: dict[str, str] = Field(description="The task's input fields, the note first.")
    answer: dict[str, Any] = Field(description="The model's answer: the task response's item, as it came.")
    model: dict[str, Any] = Field(description="The model that answered: base, adapter, adapter_version.")
    decision: dict[str, Any] = Field(
        description="The reviewer's annotation in the task's gold shape (what `medlora train` reads); "
        "at first the model's answer."
    )
    changes: ChangeCounts = Field(description="The decision against the model's answer.")
    bounds: list[int] = Field(
        description="Offsets (code points) where a span may start or end: grounding's word boundaries."
    )


class ReviewsCreated(BaseModel):
    object: Literal["list"] = "list"
    queue: str
    data: list[ReviewObject]


class QueueInfo(BaseModel):
    queue: str
    task: str
    total: int
    reviewed: int
    created_at: int


class QueueList(BaseModel):
    object: Literal["list"] = "list"
    data: list[QueueInfo]


class QueueItems(BaseModel):
    object: Literal["list"] = "list"
    queue: str
    total: int
    reviewed: int
    data: list[ReviewSummary] = Field(description="Least certain first: lowest confidence, then notes without one.")


class BatchImport(In):
    batch_id: str = Field(max_length=128, description="A finished batch of this key (its output is reviewed).")


class ImportResult(BaseModel):
    queue: str
    created: int = Field(description="Notes added now (0 when the batch was opened before).")
    total: int


class SkippedLine(BaseModel):
    file: Literal["notes", "annotations"]
    line: int
    reason: str = Field(description="What is wrong with the line; never its text.")


_SKIPPED_SHOWN = 100


class AnnotatedImport(ImportResult):
    skipped: list[SkippedLine] = Field(description=f"Lines not opened, and why (the first {_SKIPPED_SHOWN}).")
    skipped_count: int


class ReviewSave(In):
    version: int = Field(ge=1, description="The version this decision edits (the review's `version`).")
    decision: dict[str, Any] = Field(description="The task's gold fields, as `medlora train` reads them.")
    status: Literal["pending", "reviewed"]


class ReviewDeleted(BaseModel):
    id: str
    object: Literal["review"] = "review"
    deleted: bool


def new_review_id() -> str:
    return f"rev-{secrets.token_hex(12)}"


def _lowest(values: list[float]) -> float | None:
    return min(values) if values else None


class ReviewDesk:
    """The review API as one part of the gateway: its store and its routes."""

    def __init__(self, settings: Settings, service: Service, batch_answers: BatchAnswers | None = None):
        self.settings = settings
        self.service = service
        self.store = ReviewStore(settings.review_dir)
        self.batch_answers = batch_answers
        self.router = self._routes()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.store.close()

    # -- reading and checking ---------------------------------------------------------------
    def _kind(self, task_name: str) -> TaskType[Any]:
        task = self.service.tasks.get(task_name)
        if task is None:  # a task removed from the deployment since the review was made
            raise Problem(NOT_FOUND, f"task {task_name!r} of this review is not served any more")
        return task.kind

    def _view(self, review: Review) -> ReviewObject:
        kind = self._kind(review.task)
        source = review.input[kind.source_field]
        changes = count_changes(kind.gold_fields(review.answer), review.decision)
        return ReviewObject(
            **{k: v for k, v in review.__dict__.items() if k in ReviewObject.model_fields},
            type=kind.name,
            changes=ChangeCounts(**changes.to_dict()),
            bounds=sorted(piece_boundaries(source)),
        )

    def _checked(self, review: Review, decision: dict[str, Any]) -> dict[str, Any]:
        """The decision as the task's gold reader takes it; Problem(INVALID_REVIEW) if it does not fit."""
        task = self.service.tasks[review.task]
        allowed = set(task.kind.gold_fields(review.answer))
        if unknown := sorted(set(decision) - allowed):
            raise Problem(INVALID_REVIEW, f"decision: unknown field(s) {unknown} (this task's: {sorted(allowed)})")
        try:
            task.kind.parse_gold(task, {"id": review.source_id, **review.input, **decision})
        except BadRecord as exc:
            raise Problem(INVALID_REVIEW, f"decision: {exc}") from None
        return decision

    async def _owned(self, review_id: str, caller: Caller) -> Review:
        review = await asyncio.to_thread(self.store.get, review_id)
        # Another key's review is reported as missing: its existence is not this caller's business.
        if review is None or review.owner != caller.name:
            raise Problem(NOT_FOUND, f"no review {review_id!r}")
        return review

    def _quota(self, adding: int) -> Callable[[int], None]:
        def check(held: int) -> None:
            limit = self.settings.review_max_notes_per_key
            if held + adding > limit:
                detail = f"this key is at its quota of notes under review: {limit}; delete some first"
                raise Problem(QUOTA_EXCEEDED, detail, {"limit": limit})

        return check

    async def _open_queue(self, queue: str, reviews: list[NewReview], caller: Caller) -> tuple[int, int]:
        """(added, total) of a batch or annotate run opened as `queue`: once per key, atomically."""
        check = self._quota(len(reviews))
        return await asyncio.to_thread(self.store.open_queue, queue, reviews, caller.name, check)

    def _new(self, queue: str, task: str, request: dict[str, Any], response: dict[str, Any]) -> Iterator[NewReview]:
        kind = self._kind(task)
        inputs = {item["id"]: item for item in request.get(kind.items_field, [])}
        for answer in response[kind.items_field]:
            item = inputs.get(answer["id"])
            if item is not None:
                fields = {field: item[field] for field in kind.input_fields}
                yield self._review(queue, task, AnnotatedNote(answer["id"], fields, answer, response["model"]))

    def _review(self, queue: str, task: str, note: AnnotatedNote) -> NewReview:
        kind = self._kind(task)
        return NewReview(
            id=new_review_id(),
            queue=queue,
            task=task,
            source_id=note.source_id,
            min_confidence=_lowest(kind.confidences(note.answer)),
            input=note.input,
            answer=note.answer,
            model=note.model,
            decision=kind.gold_fields(note.answer),
        )

    # -- routes -------------------------------------------------------------------------------
    def _routes(self) -> APIRouter:
        router = APIRouter(tags=["review"])
        for kind in endpoints().values():
            self._add_annotate_route(router, kind)

        @router.post("/v1/reviews/imports", responses=problems(NOT_FOUND, BATCH_NOT_FINISHED, QUOTA_EXCEEDED))
        async def import_batch(body: BatchImport, caller: CallerDep) -> ImportResult:
            """Open a finished batch of this key for review: one note per document it answered."""
            if self.batch_answers is None:
                raise Problem(NOT_FOUND, "this service runs no batch jobs")
            queue = body.batch_id
            reviews = [
                review
                for request, response in await self.batch_answers(body.batch_id, caller)
                if request.get("task") in self.service.tasks
                for review in self._new(queue, request["task"], request, response)
            ]
            created, total = await self._open_queue(queue, reviews, caller)
            return ImportResult(queue=queue, created=created, total=total)

        @router.post("/v1/reviews/imports/annotate", responses=problems(UNKNOWN_TASK, QUOTA_EXCEEDED))
        async def import_annotated(
            caller: CallerDep,
            task: Annotated[str, Form(pattern=NAME_PATTERN, description="The task `medlora annotate` ran.")],
            notes: Annotated[UploadFile, File(description="The notes annotate read: JSONL, id and input fields.")],
            annotations: Annotated[UploadFile, File(description="Annotate's output: one answer a line.")],
        ) -> AnnotatedImport:
            """Open a `medlora annotate` run for review (its notes and its output, paired by id).
            Lines that cannot be read or do not fit their note are listed in `skipped`; the
            same output opened again is the same queue, nothing doubled."""
            if task not in self.service.tasks:
                raise Problem(UNKNOWN_TASK, f"no task named {task!r}", {"tasks": sorted(self.service.tasks)})
            notes_data, output_data = await notes.read(), await annotations.read()
            queue = "annotate-" + hashlib.sha256(task.encode() + b"\0" + output_data).hexdigest()[:24]
            found, skipped = await asyncio.to_thread(read_annotated, self.service.tasks[task], notes_data, output_data)
            created, total = await self._open_queue(queue, [self._review(queue, task, note) for note in found], caller)
            return AnnotatedImport(
                queue=queue,
                created=created,
                total=total,
                skipped=[SkippedLine(**s.__dict__) for s in skipped[:_SKIPPED_SHOWN]],
                skipped_count=len(skipped),
            )

        @router.get("/v1/reviews/queues")
        async def list_queues(caller: CallerDep) -> QueueList:
            counts = await asyncio.to_thread(self.store.queues, caller.name)
            return QueueList(data=[QueueInfo(**c.__dict__) for c in counts])

        @router.get("/v1/reviews/queues/{queue}")
        async def queue_items(queue: QueueName, caller: CallerDep) -> QueueItems:
            """The queue's notes, least certain first, with the progress made (reviewed / total)."""
            reviews = await asyncio.to_thread(self.store.queue, caller.name, queue)
            return QueueItems(
                queue=queue,
                total=len(reviews),
                reviewed=sum(r.status == "reviewed" for r in reviews),
                data=[ReviewSummary(**{k: getattr(r, k) for k in ReviewSummary.model_fields}) for r in reviews],
            )

        @router.get(
            "/v1/reviews/queues/{queue}/export",
            response_class=Response,
            responses={
                200: {
                    "description": "The queue's reviewed notes as JSON lines: what `medlora train` and "
                    "`medlora eval` read, each with a `review` object (model, adapter, changes).",
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                },
                **problems(NOT_FOUND),
            },
        )
        async def export_queue(queue: QueueName, caller: CallerDep) -> Response:
            reviews = await asyncio.to_thread(self.store.queue, caller.name, queue)
            lines = [
                json.dumps(gold_record(r, self._kind(r.task)), ensure_ascii=False)
                for r in reviews
                if r.status == "reviewed"
            ]
            body = "".join(line + "\n" for line in lines).encode("utf-8")
            headers = {"Content-Disposition": f'attachment; filename="{queue}.reviewed.jsonl"'}
            return Response(body, media_type="application/octet-stream", headers=headers)

        @router.get("/v1/reviews/items/{review_id}", responses=problems(NOT_FOUND))
        async def get_review(review_id: ReviewId, caller: CallerDep, response: Response) -> ReviewObject:
            review = await self._owned(review_id, caller)
            response.headers["ETag"] = f'"{review.version}"'
            return await asyncio.to_thread(self._view, review)

        @router.put("/v1/reviews/items/{review_id}", responses=problems(NOT_FOUND, REVIEW_CONFLICT, INVALID_REVIEW))
        async def save_review(
            review_id: ReviewId, body: ReviewSave, caller: CallerDep, response: Response
        ) -> ReviewObject:
            """Save a decision. It must name the version it edits: if another tab saved since,
            409 `review-conflict` (with the current version) and nothing is overwritten."""
            review = await self._owned(review_id, caller)
            if review.version != body.version:
                raise self._conflict(review_id, review.version)
            decision = await asyncio.to_thread(self._checked, review, body.decision)
            try:
                saved = await asyncio.to_thread(self.store.save, review_id, body.version, decision, body.status)
            except StaleVersion as stale:
                raise self._conflict(review_id, stale.current) from None
            response.headers["ETag"] = f'"{saved.version}"'
            return await asyncio.to_thread(self._view, saved)

        @router.delete("/v1/reviews/items/{review_id}", responses=problems(NOT_FOUND))
        async def delete_review(review_id: ReviewId, caller: CallerDep) -> ReviewDeleted:
            await self._owned(review_id, caller)
            await asyncio.to_thread(self.store.delete, review_id)
            return ReviewDeleted(id=review_id, deleted=True)

        return router

    @staticmethod
    def _conflict(review_id: str, current: int) -> Problem:
        detail = f"review {review_id!r} is at version {current}: reload it, then save again"
        return Problem(REVIEW_CONFLICT, detail, {"current_version": current})

    def _add_annotate_route(self, router: APIRouter, kind: TaskType[Any]) -> None:
        async def annotate_for_review(body: TaskRequest, request: Request, caller: CallerDep) -> Any:
            try:
                response = await run_request(self.service, kind, body, request, caller)
            except Abandoned:
                return Response(status_code=499)
            queue = f"notes-{body.task}"
            reviews = list(self._new(queue, body.task, body.model_dump(mode="json"), response.model_dump(mode="json")))
            stored = await asyncio.to_thread(self.store.add, reviews, caller.name, self._quota(len(reviews)))
            views = await asyncio.to_thread(lambda: [self._view(r) for r in stored])
            return ReviewsCreated(queue=queue, data=views)

        body_model = json_only(kind.request_model)
        annotate_for_review.__annotations__ = {**annotate_for_review.__annotations__, "body": body_model}
        router.add_api_route(
            f"/v1/reviews/annotate/{kind.endpoint}",
            annotate_for_review,
            methods=["POST"],
            response_model=ReviewsCreated,
            summary=f"Run {kind.endpoint} on notes and keep each answer for review (same body as /v1/{kind.endpoint}).",
            name=f"review_{kind.endpoint}",
            responses={**TASK_PROBLEMS, **problems(QUOTA_EXCEEDED)},
        )
