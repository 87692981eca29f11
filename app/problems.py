"""RFC 9457 problem details: one exception type, stable `type` URIs, one JSON shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROBLEM_MEDIA_TYPE = "application/problem+json"
_PREFIX = "urn:medlora:problem:"


@dataclass(frozen=True)
class ProblemType:
    slug: str
    title: str
    status: int

    def __post_init__(self) -> None:
        # Every type is known up front: the OpenAPI document lists them all as the problem
        # schema's `type` enum, so a generated client can parse every problem the service sends.
        _REGISTERED.setdefault(self.slug, self)

    @property
    def uri(self) -> str:
        return _PREFIX + self.slug


_REGISTERED: dict[str, ProblemType] = {}


def problem_types() -> list[ProblemType]:
    """Every problem type the service can answer with, in definition order."""
    return list(_REGISTERED.values())


UNKNOWN_TASK = ProblemType("unknown-task", "Unknown task", 404)
WRONG_TASK_TYPE = ProblemType("wrong-task-type", "Task does not serve this endpoint", 400)
NOT_FOUND = ProblemType("not-found", "Not found", 404)
INVALID_REQUEST = ProblemType("invalid-request", "Request body is invalid", 422)
PAYLOAD_TOO_LARGE = ProblemType("payload-too-large", "Request is too large", 413)
DUPLICATE_ID = ProblemType("duplicate-id", "Duplicate item id in request", 422)
NOT_READY = ProblemType("not-ready", "Service is not ready", 503)
GENERATION_FAILED = ProblemType("generation-failed", "Generation could not complete", 502)
TIMEOUT = ProblemType("timeout", "Generation timed out", 504)
ENGINE_UNAVAILABLE = ProblemType("engine-unavailable", "No engine replica could take the request", 503)
UNKNOWN_ADAPTER = ProblemType("unknown-adapter", "Unknown adapter", 404)
INVALID_ADAPTER = ProblemType("invalid-adapter", "Adapter files are invalid", 422)
ADAPTER_CONFLICT = ProblemType("adapter-conflict", "Adapter state conflict", 409)
UNAUTHORIZED = ProblemType("unauthorized", "Missing or unknown API key", 401)
FORBIDDEN = ProblemType("forbidden", "This key may not do that", 403)
INTERNAL = ProblemType("internal-error", "Internal error", 500)
MALFORMED_REQUEST = ProblemType("malformed-request", "Request could not be parsed", 400)
METHOD_NOT_ALLOWED = ProblemType("method-not-allowed", "Method not allowed on this path", 405)
ADAPTER_NOT_FOUND = ProblemType("adapter-not-found", "No adapter at that path", 404)
# Admission control: retryable refusals (with Retry-After) when admitted work is at its bound.
OVERLOADED = ProblemType("overloaded", "The service is at its admitted work limit", 429)
KEY_LIMIT = ProblemType("key-limit", "This key is at its admitted work limit", 429)
# Batch input (annotate CLI, batch jobs): one bad line is reported, the rest still run.
INVALID_LINE = ProblemType("invalid-line", "Input line is invalid", 400)
EMPTY_TEXT = ProblemType("empty-text", "Note is empty", 422)
BATCH_NOT_CANCELLABLE = ProblemType("batch-not-cancellable", "Batch is already finished", 409)
FILE_IN_USE = ProblemType("file-in-use", "File is used by an unfinished batch", 409)
# 409, not 413 or 429: the request is fine and small, and waiting alone does not help; what
# the key already holds (files, unfinished batches) must shrink: delete a file, end a batch.
QUOTA_EXCEEDED = ProblemType("quota-exceeded", "This key is at its batch storage or batch count quota", 409)
STORAGE_FULL = ProblemType("storage-full", "No space left to store it", 507)
# Review: a save names the version it edits; another tab may have saved since.
REVIEW_CONFLICT = ProblemType("review-conflict", "The review changed since this version was read", 409)
INVALID_REVIEW = ProblemType("invalid-review", "The decision does not fit the note or its task", 422)
# FHIR output asked of a task (or an endpoint) whose answers have no FHIR mapping.
NOT_ACCEPTABLE = ProblemType("not-acceptable", "No FHIR mapping for this task", 406)
BATCH_NOT_FINISHED = ProblemType("batch-not-finished", "The batch has no output yet", 409)


@dataclass
class Problem(Exception):
    """Raised anywhere on the request path; the API layer renders it as problem+json."""

    kind: ProblemType
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)
    retry_after_s: int | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.kind.slug}: {self.detail}"

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.kind.uri,
            "title": self.kind.title,
            "status": self.kind.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


def unexpected(exc: BaseException) -> Problem:
    """A bug met while serving one item: named by exception type only (messages can quote input text)."""
    return Problem(INTERNAL, f"unexpected {type(exc).__name__}; see the logs")
