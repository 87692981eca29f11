"""Checks shared by the task types' gold-record parsers (`TaskType.parse_gold`).

A model must never learn, or be scored against, offsets that disagree with their text or
spans the service could not emit. Messages name fields, offsets and lengths, never the
clinical text itself.
"""

from __future__ import annotations

from typing import Any, TypeGuard

from app.tasks.types.base import BadRecord


def is_int(value: Any) -> TypeGuard[int]:
    # bool is an int subclass; `true` as an offset is a data bug, not offset 1.
    return isinstance(value, int) and not isinstance(value, bool)


def string_field(obj: dict[str, Any], key: str, where: str = "") -> str:
    if key not in obj:
        raise BadRecord(f"{where}{key}: missing")
    value = obj[key]
    if not isinstance(value, str):
        raise BadRecord(f"{where}{key}: must be a string, not {type(value).__name__}")
    return value


def list_field(obj: dict[str, Any], key: str) -> list[Any]:
    if key not in obj:
        raise BadRecord(f"{key}: missing")
    value = obj[key]
    if not isinstance(value, list):
        raise BadRecord(f"{key}: must be a list")
    return value


def max_length(schema: dict[str, Any]) -> int:
    """The maxLength of a string schema (or of the string alternative of an anyOf)."""
    if "anyOf" in schema:
        return max(int(alt["maxLength"]) for alt in schema["anyOf"] if alt.get("type") == "string")
    return int(schema["maxLength"])


def check_span(
    source: str, bounds: set[int], obj: Any, where: str, max_chars: int, allowed: set[str]
) -> tuple[int, int]:
    """Offsets of one span object; raises BadRecord naming the first thing wrong with it."""
    if not isinstance(obj, dict):
        raise BadRecord(f"{where}: must be an object")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise BadRecord(f"{where}: unknown field(s) {unknown}")
    for key in ("start", "end"):
        if key not in obj:
            raise BadRecord(f"{where}.{key}: missing")
        if not is_int(obj[key]):
            raise BadRecord(f"{where}.{key}: must be an integer")
    start, end = obj["start"], obj["end"]
    if not 0 <= start < end <= len(source):
        raise BadRecord(f"{where}: offsets [{start}, {end}) out of range (need 0 <= start < end <= {len(source)})")
    if "text" in obj:
        if not isinstance(obj["text"], str):
            raise BadRecord(f"{where}.text: must be a string")
        if source[start:end] != obj["text"]:
            raise BadRecord(f"{where}: text does not match the source at [{start}, {end}) (inconsistent offsets)")
    span = source[start:end]
    if span != span.strip():
        raise BadRecord(f"{where}: span [{start}, {end}) has leading or trailing whitespace")
    if start not in bounds or end not in bounds:
        raise BadRecord(f"{where}: span [{start}, {end}) starts or ends inside a word")
    if end - start > max_chars:
        raise BadRecord(f"{where}: span of {end - start} characters exceeds the schema's maxLength {max_chars}")
    return start, end
