"""A `medlora annotate` run opened for review: its notes file (JSONL, `id` and the task's input
fields, as annotate read it) and its output (one response item a line, with `model`), paired by
id. Each answer is read as the task's response model reads it and checked against its note by
the task's gold reader; a line that fails is reported with its number and why, never dropped in
silence and never quoted (the reasons name fields and offsets, not text)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from app.tasks.types.base import BadRecord, Task


@dataclass(frozen=True)
class AnnotatedNote:
    source_id: str
    input: dict[str, str]
    answer: dict[str, Any]
    model: dict[str, Any]


@dataclass(frozen=True)
class Skipped:
    file: str  # "notes" or "annotations"
    line: int
    reason: str


def _objects(data: bytes, file: str, skipped: list[Skipped]) -> list[tuple[int, dict[str, Any]]]:
    found = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            skipped.append(Skipped(file, number, "not a JSON line in UTF-8"))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            skipped.append(Skipped(file, number, "not a JSON object with a string id"))
            continue
        found.append((number, obj))
    return found


def read_annotated(task: Task, notes: bytes, annotations: bytes) -> tuple[list[AnnotatedNote], list[Skipped]]:
    kind = task.kind
    skipped: list[Skipped] = []
    inputs: dict[str, dict[str, str]] = {}
    for number, obj in _objects(notes, "notes", skipped):
        fields = {name: obj.get(name) for name in kind.input_fields}
        if not all(isinstance(value, str) for value in fields.values()):
            skipped.append(Skipped("notes", number, f"needs string fields {list(kind.input_fields)}"))
        else:
            inputs[obj["id"]] = {name: str(value) for name, value in fields.items()}
    found: list[AnnotatedNote] = []
    seen: set[str] = set()
    for number, obj in _objects(annotations, "annotations", skipped):
        note_id = obj["id"]
        if note_id in seen:
            skipped.append(Skipped("annotations", number, "an id already read"))
            continue
        if note_id not in inputs:
            skipped.append(Skipped("annotations", number, "no note with this id in the notes file"))
            continue
        model = obj.pop("model", None)
        try:
            response = kind.response_model.model_validate({"task": task.name, "model": model, kind.items_field: [obj]})
            answer = response.model_dump(mode="json")[kind.items_field][0]
            kind.parse_gold(task, {"id": note_id, **inputs[note_id], **kind.gold_fields(answer)})
        except ValidationError as exc:
            where = ".".join(str(part) for part in exc.errors()[0]["loc"])
            skipped.append(Skipped("annotations", number, f"not an answer of task {task.name} ({where})"))
            continue
        except BadRecord as exc:
            skipped.append(Skipped("annotations", number, f"does not fit its note: {exc}"))
            continue
        seen.add(note_id)
        found.append(AnnotatedNote(note_id, inputs[note_id], answer, response.model_dump(mode="json")["model"]))
    return found, skipped
