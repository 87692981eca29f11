from __future__ import annotations

import json
from typing import Any

import pytest

from app.tasks.grammar import compile_grammar, json_escape
from app.tasks.schema import SchemaBoundsError, check_schema, worst_case_bytes
from tests.conftest import SCHEMAS_DIR


def obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        (obj(a={"type": "string"}), "#/properties/a: string needs 'maxLength'"),
        (obj(a={"type": "array", "items": {"type": "boolean"}}), "#/properties/a: array needs 'maxItems'"),
        (obj(a={"type": "integer", "minimum": 0, "maximum": 3}), "numbers are not supported"),
        ({"type": "object", "properties": {"a": {"type": "boolean"}}}, "'additionalProperties': false"),
        (obj(a={"type": "string", "maxLength": 3, "pattern": "a+"}), "'pattern'/'format' are not supported"),
        ({"type": "object", "properties": {}, "additionalProperties": False}, "non-empty 'properties'"),
        (obj(a={"type": "string", "maxLength": "3"}), "not a valid JSON schema"),
    ],
)
def test_unbounded_or_unsupported_schemas_are_refused(schema: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SchemaBoundsError, match=None) as info:
        check_schema(schema)
    assert fragment in str(info.value)


@pytest.mark.parametrize("name", ["ner-it-clinical", "ner-en-clinical", "qa-it-clinical", "classify-it-note-type"])
def test_shipped_schemas_are_bounded_and_compile(name: str) -> None:
    schema = json.loads((SCHEMAS_DIR / f"{name}.json").read_text())
    check_schema(schema)
    grammar = compile_grammar(schema, 'Testo "con" virgolette\\ e\ttab\r\n🙂')
    assert grammar.startswith("start: ")


def test_worst_case_covers_the_largest_admitted_ner_output() -> None:
    schema = json.loads((SCHEMAS_DIR / "ner-it-clinical.json").read_text())
    source = '"\\' * 300  # escapes double every character's size
    longest_span = json_escape(source)[:80]
    entity = {
        "text": json.loads(f'"{longest_span.rstrip(chr(92))}"'),
        "label": "BODY_PART",
        "attributes": {"negated": False, "uncertain": False, "historical": False, "family": False},
    }
    biggest = json.dumps({"entities": [entity] * 24}, ensure_ascii=False, separators=(",", ":"))
    assert len(biggest.encode()) <= worst_case_bytes(schema, len(json_escape(source).encode()))


def test_worst_case_is_limited_by_a_short_source() -> None:
    schema = json.loads((SCHEMAS_DIR / "qa-it-clinical.json").read_text())
    assert worst_case_bytes(schema, 10) == len('{"answer":""}') + 10


def test_grounded_field_too_short_for_one_piece_is_refused() -> None:
    schema = obj(a={"type": "string", "maxLength": 10, "x-medlora-grounded": True})
    with pytest.raises(SchemaBoundsError, match="grounded string needs maxLength >= 48"):
        check_schema(schema)
