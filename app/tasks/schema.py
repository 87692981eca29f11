"""Task output schemas: the bounded JSON-schema subset medlora decodes with, and its checks.

A schema is accepted only if every value it admits has a bounded size: otherwise a
random-weight (or confused) model can run to the token limit and return cut-off JSON.
The supported subset is what the grammar compiler turns into a decoding constraint.
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

GROUNDED = "x-medlora-grounded"
"""Marks a string field whose value must be a verbatim span of the request's source text."""

# A JSON string unit is either one raw character (at most 4 UTF-8 bytes) or an escape;
# `\uXXXX` is the longest escape.
MAX_BYTES_PER_STRING_UNIT = 6
MAX_BYTES_PER_GROUNDED_UNIT = 4
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
    if "enum" in node or "const" in node:
        values = node.get("enum", [node.get("const")])
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
        for name, sub in props.items():
            _check(sub, f"{path}/properties/{name}", out)
    elif kind == "array":
        if not isinstance(node.get("maxItems"), int):
            out.append(f"{path}: array needs 'maxItems'")
        if "items" not in node:
            out.append(f"{path}: array needs 'items'")
        else:
            _check(node["items"], f"{path}/items", out)
    elif kind == "string":
        if not isinstance(node.get("maxLength"), int):
            out.append(f"{path}: string needs 'maxLength'")
        if node.get(GROUNDED) and node.get("maxLength", 0) < MIN_GROUNDED_MAX_LENGTH:
            out.append(f"{path}: grounded string needs maxLength >= {MIN_GROUNDED_MAX_LENGTH}")
        if "pattern" in node or "format" in node:
            out.append(f"{path}: 'pattern'/'format' are not supported")
    elif kind in ("boolean", "null"):
        pass
    elif kind in ("integer", "number"):
        out.append(f"{path}: numbers are not supported in task outputs (use an enum)")
    else:
        out.append(f"{path}: unsupported or missing 'type' ({kind!r})")


def grounded_paths(schema: dict[str, Any], path: str = "#") -> list[str]:
    """JSON pointers of the grounded string fields (used to check task manifests)."""
    found: list[str] = []
    if schema.get(GROUNDED):
        found.append(path)
    for i, sub in enumerate(schema.get("anyOf", [])):
        found += grounded_paths(sub, f"{path}/anyOf/{i}")
    for name, sub in schema.get("properties", {}).items():
        found += grounded_paths(sub, f"{path}/properties/{name}")
    if isinstance(schema.get("items"), dict):
        found += grounded_paths(schema["items"], f"{path}/items")
    return found


def worst_case_bytes(schema: dict[str, Any], source_bytes: int) -> int:
    """Upper bound on the UTF-8 size of the compact JSON the grammar for `schema` admits.

    Byte-level BPE tokens are at least one byte long, so this also bounds the number of
    generated tokens: max_tokens set from it can never cut a valid answer short.
    `source_bytes` is the JSON-escaped size of the grounding source.
    """
    if "anyOf" in schema:
        return max(worst_case_bytes(s, source_bytes) for s in schema["anyOf"])
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        return max(len(json.dumps(v, ensure_ascii=False).encode()) for v in values)
    kind = schema["type"]
    if kind == "object":
        total = 2 + max(0, len(schema["properties"]) - 1)
        for name, sub in schema["properties"].items():
            total += len(json.dumps(name, ensure_ascii=False).encode()) + 1
            total += worst_case_bytes(sub, source_bytes)
        return total
    if kind == "array":
        n = int(schema["maxItems"])
        return 2 + n * worst_case_bytes(schema["items"], source_bytes) + max(0, n - 1)
    if kind == "string":
        length = int(schema["maxLength"])
        if schema.get(GROUNDED):
            return 2 + min(MAX_BYTES_PER_GROUNDED_UNIT * length, source_bytes)
        return 2 + MAX_BYTES_PER_STRING_UNIT * length
    if kind == "boolean":
        return 5
    if kind == "null":
        return 4
    raise SchemaBoundsError(f"unsupported type {kind!r}")
