"""Task output schemas: the bounded JSON-schema subset medlora decodes with, and its checks.

A schema is accepted only if every value it admits has a bounded size: otherwise a
random-weight (or confused) model can run to the token limit and return cut-off JSON.
The supported subset is what the grammar compiler turns into a decoding constraint.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from app.tasks.ranges import MAX_DECIMALS, MAX_MAGNITUDE, is_number, number_width, scaled

GROUNDED = "x-medlora-grounded"
"""Marks a string field whose value must be a verbatim span of the request's source text."""
DECIMALS = "x-medlora-decimals"
"""A number's most decimals (0-4): with minimum and maximum, the grammar admits nothing else."""
YEARS = "x-medlora-years"
"""A date's [first, last] year (default 1900-2100)."""
DEFAULT_YEARS = (1900, 2100)

# A JSON string unit is either one raw character (at most 4 UTF-8 bytes) or an escape;
# `\uXXXX` is the longest escape.
MAX_BYTES_PER_STRING_UNIT = 6
# The longest escaped source piece (see grammar.source_pieces): a grounded field must be
# able to hold at least one piece, or its grammar can dead-end.
MIN_GROUNDED_MAX_LENGTH = 48


class SchemaBoundsError(ValueError):
    """The schema is outside the bounded, supported subset."""


def check_schema(schema: dict[str, Any]) -> None:
    """Raise SchemaBoundsError naming the JSON pointer of the first problem."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise SchemaBoundsError(f"not a valid JSON schema: {exc.message}") from exc
    problems: list[str] = []
    _check(schema, "#", problems)
    if problems:
        raise SchemaBoundsError("; ".join(problems))


def _check(node: Any, path: str, out: list[str]) -> None:
    if not isinstance(node, dict):
        out.append(f"{path}: expected a schema object")
        return
    if "anyOf" in node:
        for i, sub in enumerate(node["anyOf"]):
            _check(sub, f"{path}/anyOf/{i}", out)
        return
    values = enum_values(node)
    if values is not None:
        if not all(isinstance(v, (str, bool)) or v is None for v in values):
            out.append(f"{path}: enum/const values must be strings, booleans or null")
        return
    kind = node.get("type")
    if kind == "object":
        props = node.get("properties")
        if not isinstance(props, dict) or not props:
            out.append(f"{path}: object needs non-empty 'properties'")
            return
        if node.get("additionalProperties") is not False:
            out.append(f"{path}: object needs 'additionalProperties': false")
        required = node.get("required", [])
        if not isinstance(required, list) or not set(required) <= set(props):
            out.append(f"{path}: 'required' must name declared properties")
        for name, sub in props.items():
            _check(sub, f"{path}/properties/{name}", out)
    elif kind == "array":
        _check_array(node, path, out)
    elif kind == "string" and node.get("format") == "date":
        _check_date(node, path, out)
    elif kind == "string":
        if "pattern" in node or "format" in node:
            out.append(f"{path}: 'pattern' and formats other than 'date' are not supported")
        if not isinstance(node.get("maxLength"), int):
            out.append(f"{path}: string needs 'maxLength'")
        if node.get(GROUNDED) and node.get("maxLength", 0) < MIN_GROUNDED_MAX_LENGTH:
            out.append(f"{path}: grounded string needs maxLength >= {MIN_GROUNDED_MAX_LENGTH}")
    elif kind in ("boolean", "null"):
        pass
    elif kind in ("integer", "number"):
        _check_number(node, path, out)
    else:
        out.append(f"{path}: unsupported or missing 'type' ({kind!r})")


def _check_number(node: dict[str, Any], path: str, out: list[str]) -> None:
    """Numbers need both bounds: an unbounded one could run to the token limit."""
    lo, hi = node.get("minimum"), node.get("maximum")
    decimals = node.get(DECIMALS, 0) if node["type"] == "number" else 0
    if node["type"] == "number" and DECIMALS not in node:
        out.append(f"{path}: number needs '{DECIMALS}' (0-{MAX_DECIMALS})")
        return
    if not isinstance(decimals, int) or isinstance(decimals, bool) or not 0 <= decimals <= MAX_DECIMALS:
        out.append(f"{path}: '{DECIMALS}' must be an integer 0-{MAX_DECIMALS}")
        return
    if not is_number(lo) or not is_number(hi):
        out.append(f"{path}: {node['type']} needs numeric 'minimum' and 'maximum' (unbounded numbers are refused)")
        return
    if lo > hi or max(abs(lo), abs(hi)) >= MAX_MAGNITUDE:
        out.append(f"{path}: needs minimum <= maximum, both under {MAX_MAGNITUDE:.0e} in magnitude")
    elif scaled(lo, decimals) is None or scaled(hi, decimals) is None:
        out.append(f"{path}: minimum and maximum must have at most {decimals} decimals")
    if "exclusiveMinimum" in node or "exclusiveMaximum" in node or "multipleOf" in node:
        out.append(f"{path}: exclusive bounds and multipleOf are not supported (use minimum, maximum, {DECIMALS})")


def _check_date(node: dict[str, Any], path: str, out: list[str]) -> None:
    years = node.get(YEARS, list(DEFAULT_YEARS))
    if (
        not isinstance(years, list)
        or len(years) != 2
        or not all(isinstance(y, int) and not isinstance(y, bool) for y in years)
        or not 1000 <= years[0] <= years[1] <= 9999
    ):
        out.append(f"{path}: '{YEARS}' must be [first, last] with 1000 <= first <= last <= 9999")


def _check_array(node: dict[str, Any], path: str, out: list[str]) -> None:
    """Arrays: a list of one item schema, or a tuple (`prefixItems`, then optional `items`)."""
    max_items = node.get("maxItems")
    if not isinstance(max_items, int):
        out.append(f"{path}: array needs 'maxItems'")
    prefix = node.get("prefixItems")
    if prefix is not None:
        if not isinstance(prefix, list) or not prefix:
            out.append(f"{path}: 'prefixItems' must be a non-empty list")
            return
        # The grammar always writes every prefix item: the schema must require them all. A flag
        # tail may also require one flag (a multiple choice with at least one option).
        allowed = {len(prefix), len(prefix) + 1} if flag_tail(node) else {len(prefix)}
        if node.get("minItems") not in allowed:
            out.append(f"{path}: a tuple array needs minItems == len(prefixItems) ({len(prefix)})")
        for i, sub in enumerate(prefix):
            _check(sub, f"{path}/prefixItems/{i}", out)
        flags = flag_tail(node)
        if flags is not None and isinstance(max_items, int) and max_items < len(prefix) + len(flags):
            out.append(f"{path}: maxItems must leave room for every flag ({len(prefix) + len(flags)})")
        if "items" in node and node["items"] is not False:
            _check(node["items"], f"{path}/items", out)
        return
    if "items" not in node:
        out.append(f"{path}: array needs 'items'")
    else:
        _check(node["items"], f"{path}/items", out)


def enum_values(node: dict[str, Any]) -> list[Any] | None:
    """The values of an enum or const node, None for any other node."""
    if "enum" in node:
        return list(node["enum"])
    if "const" in node:
        return [node["const"]]
    return None


def flag_tail(node: dict[str, Any]) -> list[Any] | None:
    """For a tuple array whose extra items come from an enum: those values, in declared order.
    Such a tail is a set of flags (an entity's attributes that hold): the grammar writes each
    at most once and in this order, so the worst case counts each once. None otherwise."""
    items = node.get("items")
    if "prefixItems" in node and isinstance(items, dict):
        return enum_values(items)
    return None


class SpanBytes:
    """The most UTF-8 bytes a grounded span of at most `n` escaped characters can take in one
    source. A span is a run of the source's escaped pieces, so a substring of the escaped
    source: the bound is its heaviest window of `n` characters, not 4 bytes a character."""

    def __init__(self, escaped_source: str):
        sizes = [len(ch.encode()) for ch in escaped_source]
        self._prefix = [0, *itertools.accumulate(sizes)]
        self._cache: dict[int, int] = {}

    def __call__(self, n: int) -> int:
        if n not in self._cache:
            p, width = self._prefix, min(n, len(self._prefix) - 1)
            self._cache[n] = max((p[i + width] - p[i] for i in range(len(p) - width)), default=0)
        return self._cache[n]


def worst_case_bytes(schema: dict[str, Any], source: str | SpanBytes) -> int:
    """Upper bound on the UTF-8 size of the compact JSON the grammar for `schema` admits.

    Byte-level BPE tokens are at least one byte long, so this also bounds the number of
    generated tokens: max_tokens set from it can never cut a valid answer short.
    `source` is the JSON-escaped grounding source (or its SpanBytes).
    """
    span_bytes = source if isinstance(source, SpanBytes) else SpanBytes(source)
    if "anyOf" in schema:
        return max(worst_case_bytes(s, span_bytes) for s in schema["anyOf"])
    values = enum_values(schema)
    if values is not None:
        return max(len(json.dumps(v, ensure_ascii=False).encode()) for v in values)
    kind = schema["type"]
    if kind == "object":
        total = 2 + max(0, len(schema["properties"]) - 1)
        for name, sub in schema["properties"].items():
            total += len(json.dumps(name, ensure_ascii=False).encode()) + 1
            total += worst_case_bytes(sub, span_bytes)
        return total
    if kind == "array":
        return _array_worst_case(schema, span_bytes)
    if kind == "string" and schema.get("format") == "date":
        return 12  # "YYYY-MM-DD"
    if kind in ("integer", "number"):
        return number_width(schema["minimum"], schema["maximum"], int(schema.get(DECIMALS, 0)))
    if kind == "string":
        length = int(schema["maxLength"])
        if schema.get(GROUNDED):
            return 2 + span_bytes(length)
        return 2 + MAX_BYTES_PER_STRING_UNIT * length
    if kind == "boolean":
        return 5
    if kind == "null":
        return 4
    raise SchemaBoundsError(f"unsupported type {kind!r}")


def _array_worst_case(schema: dict[str, Any], source_bytes: SpanBytes) -> int:
    n = int(schema["maxItems"])
    prefix = schema.get("prefixItems")
    if prefix is None:
        return 2 + n * worst_case_bytes(schema["items"], source_bytes) + max(0, n - 1)
    sizes = [worst_case_bytes(sub, source_bytes) for sub in prefix]
    tail_room = max(0, n - len(prefix))
    flags = flag_tail(schema)
    if flags is not None:
        # Each flag at most once: the largest `tail_room` of them.
        sizes += sorted((len(json.dumps(v, ensure_ascii=False).encode()) for v in flags), reverse=True)[:tail_room]
    elif isinstance(schema.get("items"), dict) and tail_room:
        sizes += [worst_case_bytes(schema["items"], source_bytes)] * tail_room
    return 2 + sum(sizes) + max(0, len(sizes) - 1)
