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

from app.api.models import ID_PATTERN
from app.tasks.chunking import Chunk, split_text
from app.tasks.grounding import piece_boundaries
from app.tasks.manifests import Task

MAX_LISTED_ERRORS = 20
_ID = re.compile(ID_PATTERN)
_QUESTION_MAX_CHARS = 2000  # as app.api.models.QaItemIn.question


@dataclass(frozen=True)
class Record:
    line: int  # 1-based line number in the file
    id: str
    payload: dict[str, str]  # prompt input: {"text": ...} or {"context": ..., "question": ...}
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


class _Bad(Exception):
    """One reason a line is refused (collected, never raised to the caller)."""


# ----------------------------------------------------------------------------- helpers


def _is_int(value: Any) -> bool:
    # bool is an int subclass; `true` as an offset is a data bug, not offset 1.
    return isinstance(value, int) and not isinstance(value, bool)


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


def _string(obj: dict[str, Any], key: str, where: str = "") -> str:
    if key not in obj:
        raise _Bad(f"{where}{key}: missing")
    value = obj[key]
    if not isinstance(value, str):
        raise _Bad(f"{where}{key}: must be a string, not {type(value).__name__}")
    return value


def _list(obj: dict[str, Any], key: str) -> list[Any]:
    if key not in obj:
        raise _Bad(f"{key}: missing")
    value = obj[key]
    if not isinstance(value, list):
        raise _Bad(f"{key}: must be a list")
    return value


def _max_length(schema: dict[str, Any]) -> int:
    if "anyOf" in schema:
        return max(int(alt["maxLength"]) for alt in schema["anyOf"] if alt.get("type") == "string")
    return int(schema["maxLength"])


def _check_span(
    source: str, bounds: set[int], obj: Any, where: str, max_chars: int, allowed: set[str]
) -> tuple[int, int]:
    """Offsets of one span object; raises _Bad naming the first thing wrong with it."""
    if not isinstance(obj, dict):
        raise _Bad(f"{where}: must be an object")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise _Bad(f"{where}: unknown field(s) {unknown}")
    for key in ("start", "end"):
        if key not in obj:
            raise _Bad(f"{where}.{key}: missing")
        if not _is_int(obj[key]):
            raise _Bad(f"{where}.{key}: must be an integer")
    start, end = obj["start"], obj["end"]
    if not 0 <= start < end <= len(source):
        raise _Bad(f"{where}: offsets [{start}, {end}) out of range (need 0 <= start < end <= {len(source)})")
    if "text" in obj:
        if not isinstance(obj["text"], str):
            raise _Bad(f"{where}.text: must be a string")
        if source[start:end] != obj["text"]:
            raise _Bad(f"{where}: text does not match the source at [{start}, {end}) (inconsistent offsets)")
    span = source[start:end]
    if span != span.strip():
        raise _Bad(f"{where}: span [{start}, {end}) has leading or trailing whitespace")
    if start not in bounds or end not in bounds:
        raise _Bad(f"{where}: span [{start}, {end}) starts or ends inside a word")
    if end - start > max_chars:
        raise _Bad(f"{where}: span of {end - start} characters exceeds the schema's maxLength {max_chars}")
    return start, end


# ------------------------------------------------------------------------- per task type


def _parse_ner(task: Task, obj: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    text = _string(obj, "text")
    entities = _list(obj, "entities")
    item_schema = task.schema["properties"]["entities"]["items"]
    max_chars = _max_length(item_schema["properties"]["text"])
    labels, attribute_names = set(task.label_names), task.attribute_names
    bounds = piece_boundaries(text)
    gold: list[dict[str, Any]] = []
    seen: set[tuple[int, int, str]] = set()
    for i, entity in enumerate(entities):
        where = f"entities[{i}]"
        start, end = _check_span(
            text, bounds, entity, where, max_chars, {"start", "end", "text", "label", "attributes"}
        )
        label = entity.get("label")
        if label is None:
            raise _Bad(f"{where}.label: missing")
        if not isinstance(label, str) or label not in labels:
            raise _Bad(f"{where}.label: unknown label {label!r} (task labels: {task.label_names})")
        raw_attributes = entity.get("attributes", {})
        if not isinstance(raw_attributes, dict):
            raise _Bad(f"{where}.attributes: must be an object")
        unknown = sorted(set(raw_attributes) - set(attribute_names))
        if unknown:
            raise _Bad(f"{where}.attributes: unknown attribute(s) {unknown} (task attributes: {attribute_names})")
        for name, value in raw_attributes.items():
            if not isinstance(value, bool):
                raise _Bad(f"{where}.attributes.{name}: must be true or false")
        if (start, end, label) in seen:
            raise _Bad(f"{where}: duplicate entity [{start}, {end}) {label}")
        seen.add((start, end, label))
        attributes = {name: bool(raw_attributes.get(name, False)) for name in attribute_names}
        gold.append({"start": start, "end": end, "text": text[start:end], "label": label, "attributes": attributes})
    gold.sort(key=lambda e: (e["start"], e["end"], task.label_names.index(e["label"])))
    return {"text": text}, {"entities": gold}


def _parse_qa(task: Task, obj: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    context = _string(obj, "context")
    question = _string(obj, "question")
    if not question.strip():
        raise _Bad("question: must not be empty")
    if len(question) > _QUESTION_MAX_CHARS:
        raise _Bad(f"question: longer than {_QUESTION_MAX_CHARS} characters")
    if "answer" not in obj:
        raise _Bad("answer: missing (use null for unanswerable)")
    answer = obj["answer"]
    if answer is None:
        return {"context": context, "question": question}, {"answer": None}
    max_chars = _max_length(task.schema["properties"]["answer"])
    start, end = _check_span(context, piece_boundaries(context), answer, "answer", max_chars, {"start", "end", "text"})
    gold = {"start": start, "end": end, "text": context[start:end]}
    return {"context": context, "question": question}, {"answer": gold}


def _parse_classification(task: Task, obj: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    text = _string(obj, "text")
    labels = _list(obj, "labels")
    if not labels:
        raise _Bad("labels: at least one label is required")
    for i, label in enumerate(labels):
        if not isinstance(label, str) or label not in task.label_names:
            raise _Bad(f"labels[{i}]: unknown label {label!r} (task labels: {task.label_names})")
    if len(set(labels)) != len(labels):
        raise _Bad("labels: repeated label")
    if not task.manifest.multi_label and len(labels) > 1:
        raise _Bad(f"labels: {len(labels)} labels, but task {task.name} is single-label")
    ordered = [name for name in task.label_names if name in labels]
    return {"text": text}, {"labels": ordered}


_PARSERS = {"ner": _parse_ner, "qa": _parse_qa, "classification": _parse_classification}


def _parse_line(task: Task, raw: bytes) -> tuple[str, dict[str, str], dict[str, Any]]:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Bad(f"invalid UTF-8 at byte {exc.start}") from None
    try:
        obj = json.loads(line, parse_constant=_reject_constant)
    except ValueError as exc:
        raise _Bad(f"invalid JSON: {getattr(exc, 'msg', str(exc))}") from None
    if not isinstance(obj, dict):
        raise _Bad(f"must be a JSON object, not {type(obj).__name__}")
    if _has_surrogate(obj):
        raise _Bad("contains an unpaired UTF-16 surrogate (\\ud800-\\udfff escape)")
    record_id = _string(obj, "id")
    if not _ID.match(record_id):
        raise _Bad("id: must be 1-256 characters without control characters")
    payload, gold = _PARSERS[task.type](task, obj)
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
        except _Bad as exc:
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
    return record.payload["context"] if task.type == "qa" else record.payload["text"]


def model_outputs(task: Task, record: Record) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """(prompt input, model output) per chunk: what the model must answer for serving to return the gold.

    NER: the entities lying fully inside each chunk, in start order, capped at the schema's
    `entities.maxItems`. QA: the answer text in every chunk that holds the whole answer span,
    null elsewhere. Classification: the gold labels (task order) in every chunk. A blank NER
    or QA source gives no pairs: serving answers it without calling the model.
    """
    source = source_of(task, record)
    if task.type != "classification" and not source.strip():
        return []
    pairs: list[tuple[dict[str, str], dict[str, Any]]] = []
    for chunk in chunks_of(task, record):
        output: dict[str, Any]
        if task.type == "ner":
            limit = int(task.schema["properties"]["entities"]["maxItems"])
            inside = [e for e in record.gold["entities"] if chunk.start <= e["start"] and e["end"] <= chunk.end]
            entities = [
                {"text": e["text"], "label": e["label"], "attributes": dict(e["attributes"])} for e in inside[:limit]
            ]
            output = {"entities": entities}
            payload = {"text": chunk.text}
        elif task.type == "qa":
            answer = record.gold["answer"]
            holds = answer is not None and chunk.start <= answer["start"] and answer["end"] <= chunk.end
            output = {"answer": answer["text"] if holds else None}
            payload = {"context": chunk.text, "question": record.payload["question"]}
        else:
            output = {"labels": list(record.gold["labels"])}
            payload = {"text": chunk.text}
        error = next(iter(task.validator.iter_errors(output)), None)
        if error is not None:
            raise AssertionError(
                f"record {record.id!r} (line {record.line}): output for the chunk at {chunk.start} "
                f"violates the schema of {task.name} at {list(error.path)}"
            )
        pairs.append((payload, output))
    return pairs
