"""Checks shared by the task types' gold-record parsers (`TaskType.parse_gold`).

A model must never learn, or be scored against, offsets that disagree with their text or
spans the service could not emit. Messages name fields, offsets and lengths, never the
clinical text itself.
"""

from __future__ import annotations

import datetime
import re
from typing import Any, TypeGuard

from app.tasks.types.base import BadRecord


def is_int(value: Any) -> TypeGuard[int]:
    # bool is an int subclass; `true` as an offset is a data bug, not offset 1.
    return isinstance(value, int) and not isinstance(value, bool)


# The one form a date item takes (the grammar writes it, the schema's pattern says it).
# date.fromisoformat alone also reads week dates (2024-W10-1) and 20240312 on Python 3.11+.
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def iso_date(value: Any) -> datetime.date | None:
    """The calendar date written as YYYY-MM-DD (ASCII digits), or None for anything else."""
    if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
        return None
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:  # the right shape, but no such day (2024-02-30)
        return None


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
