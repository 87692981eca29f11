"""A reviewed note as a gold record: what `medlora train` and `medlora eval` read (`id`, the task's
input fields, its gold fields), with what the model said beside it under `review`, so that
corrections can be counted per adapter and version."""

from __future__ import annotations

from typing import Any

from app.review.changes import count_changes
from app.review.store import Review
from app.tasks.types.base import TaskType


def gold_record(review: Review, kind: TaskType[Any]) -> dict[str, Any]:
    changes = count_changes(kind.gold_fields(review.answer), review.decision)
    return {
        "id": review.id,
        **review.input,
        **review.decision,
        "review": {
            "source_id": review.source_id,
            "queue": review.queue,
            "task": review.task,
            "model": review.model,
            "changes": changes.to_dict(),
            "version": review.version,
            "reviewed_at": review.updated_at,
        },
    }
