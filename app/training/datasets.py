"""Task data as JSONL in the API's shapes, shared by training and evaluation.

One object per line (blank lines skipped), the same shapes the service takes and returns:

* NER: ``{"id", "text", "entities": [{"start", "end", "label", "text"?, "attributes"?}]}``
* QA: ``{"id", "context", "question", "answer": {"start", "end", "text"?} | null}``
* classification: ``{"id", "text", "labels": [...]}``

`load_records` refuses a file with any bad line, naming every bad line and why: a model must
never learn (or be scored against) offsets that disagree with their text, spans the service
could not emit, or labels the task does not have. Messages give line numbers, field names,
offsets and lengths, never the clinical text itself.

`model_outputs` turns one record into the (prompt input, model output) pairs that serving
would produce for it: the same chunks as `app.tasks.runner`, one canonical output per chunk.
(Serving may split a chunk further when its prompt does not fit the engine's context; that
depends on the tokenizer and is not reproduced here.)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.tasks.chunking import Chunk, split_text
from app.tasks.gold import string_field
from app.tasks.protocol import ID_PATTERN
from app.tasks.types.base import Ask, BadRecord, Task, TaskInput

MAX_LISTED_ERRORS = 20
_ID = re.compile(ID_PATTERN)


@dataclass(frozen=True)
class Record:
    line: int  # 1-based line number in the file
    id: str
    payload: dict[str, str]  # prompt input fields, e.g. {"text": ...} or {"context": ..., "question": ...}
    gold: dict[str, Any]  # API-shaped gold annotations


class DataError(ValueError):
    """A data file has bad lines; `errors` holds every (line, reason), the message the first 20."""

    def __init__(self, path: Path, errors: list[tuple[int, str]], summary: str | None = None):
        self.path = path
        self.errors = errors
        if summary is None:
            lines = {line for line, _ in errors}
            summary = f"{len(errors)} problem(s) on {len(lines)} line(s)"
        listed = [f"  line {line}: {reason}" for line, reason in errors[:MAX_LISTED_ERRORS]]
        if len(errors) > MAX_LISTED_ERRORS:
            listed.append(f"  ... and {len(errors) - MAX_LISTED_ERRORS} more")
        super().__init__("\n".join([f"{path}: {summary}", *listed]))


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_line(task: Task, raw: bytes) -> tuple[str, dict[str, str], dict[str, Any]]:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRecord(f"invalid UTF-8 at byte {exc.start}") from None
    try:
        obj = json.loads(line, parse_constant=_reject_constant)
    except ValueError as exc:
        raise BadRecord(f"invalid JSON: {getattr(exc, 'msg', str(exc))}") from None
    if not isinstance(obj, dict):
        raise BadRecord(f"must be a JSON object, not {type(obj).__name__}")
    if _has_surrogate(obj):
        raise BadRecord("contains an unpaired UTF-16 surrogate (\\ud800-\\udfff escape)")
    record_id = string_field(obj, "id")
    if not _ID.match(record_id):
        raise BadRecord("id: must be 1-256 characters without control characters")
    payload, gold = task.kind.parse_gold(task, obj)
    return record_id, payload, gold


# ---------------------------------------------------------------------------- public API


def load_records(task: Task, path: Path) -> list[Record]:
    """Every record of a JSONL file, or DataError listing every bad line (1-based line numbers)."""
    data = Path(path).read_bytes()
    records: list[Record] = []
    errors: list[tuple[int, str]] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            record_id, payload, gold = _parse_line(task, raw)
        except BadRecord as exc:
            errors.append((number, str(exc)))
            continue
        if record_id in first_line:
            errors.append((number, f"id: duplicate id (first on line {first_line[record_id]})"))
            continue
        first_line[record_id] = number
        records.append(Record(number, record_id, payload, gold))
    if errors:
        raise DataError(Path(path), errors)
    if not records:
        raise DataError(Path(path), [], "no records (the file is empty)")
    return records


def chunks_of(task: Task, record: Record) -> list[Chunk]:
    """The chunks serving splits this record's source into (before any context re-splitting)."""
    gen = task.manifest.generation
    return split_text(source_of(task, record), gen.max_chunk_chars, gen.chunk_overlap_chars)


def source_of(task: Task, record: Record) -> str:
    return record.payload[task.kind.source_field]


def model_outputs(task: Task, record: Record) -> list[tuple[Ask, dict[str, Any]]]:
    """(ask, model answer) for every generation serving makes for this record: what the model
    must answer for serving to return the gold. The type says what each chunk's answers are;
    an input serving answers without the model (a blank note) gives none.
    """
    kind = task.kind
    probe = TaskInput(record.id, dict(record.payload), kind.source_field)
    if kind.blank(task, probe) is not None:
        return []
    pairs: list[tuple[Ask, dict[str, Any]]] = []
    for chunk in chunks_of(task, record):
        asks = kind.asks(task, probe.with_source(chunk.text))
        for ask, output in zip(asks, kind.targets(task, record.gold, chunk), strict=True):
            error = next(iter(ask.validator.iter_errors(output)), None)
            if error is not None:
                raise AssertionError(
                    f"record {record.id!r} (line {record.line}): output for the chunk at {chunk.start} "
                    f"violates the schema of {task.name} at {list(error.path)}"
                )
            pairs.append((ask, output))
    return pairs
