from __future__ import annotations

import json
from typing import Any

import pytest

from app.tasks.grammar import compile_grammar, json_escape
from app.tasks.prompts import serialize_output
from app.tasks.schema import SchemaBoundsError, check_schema, worst_case_bytes
from tests.conftest import SCHEMAS_DIR, accepts, shipped_task


def obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        (obj(a={"type": "string"}), "#/properties/a: string needs 'maxLength'"),
        (obj(a={"type": "array", "items": {"type": "boolean"}}), "#/properties/a: array needs 'maxItems'"),
        (obj(a={"type": "integer", "minimum": 0}), "#/properties/a: integer needs numeric 'minimum' and 'maximum'"),
        (obj(a={"type": "integer"}), "unbounded numbers are refused"),
        (obj(a={"type": "number", "minimum": 0, "maximum": 3}), "number needs 'x-medlora-decimals'"),
        (obj(a={"type": "number", "minimum": 0, "maximum": 3, "x-medlora-decimals": 9}), "must be an integer 0-4"),
        (obj(a={"type": "number", "minimum": 0.25, "maximum": 3, "x-medlora-decimals": 1}), "at most 1 decimals"),
        (obj(a={"type": "integer", "minimum": 5, "maximum": 3}), "minimum <= maximum"),
        (obj(a={"type": "integer", "minimum": 0, "maximum": 9, "multipleOf": 3}), "multipleOf are not supported"),
        (obj(a={"type": "string", "format": "date", "x-medlora-years": [2030, 2015]}), "'x-medlora-years' must be"),
        ({**obj(a={"type": "boolean"}), "required": ["b"]}, "'required' must name declared properties"),
        ({"type": "object", "properties": {"a": {"type": "boolean"}}}, "'additionalProperties': false"),
        (obj(a={"type": "string", "maxLength": 3, "pattern": "a+"}), "'pattern' and formats other than 'date'"),
        ({"type": "object", "properties": {}, "additionalProperties": False}, "non-empty 'properties'"),
        (obj(a={"type": "string", "maxLength": "3"}), "not a valid JSON schema"),
    ],
)
def test_unbounded_or_unsupported_schemas_are_refused(schema: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SchemaBoundsError, match=None) as info:
        check_schema(schema)
    assert fragment in str(info.value)


@pytest.mark.parametrize("name", ["ner-it-clinical", "ner-en-clinical", "qa-it-clinical", "classify-it-note-type"])
def test_shipped_schemas_are_bounded_and_their_grammars_admit_the_tasks_examples(lltok: Any, name: str) -> None:
    schema = json.loads((SCHEMAS_DIR / f"{name}.json").read_text())
    check_schema(schema)
    task = shipped_task(name)
    for example in task.manifest.examples:
        source = example.input[task.kind.source_field]
        # llguidance compiles the grammar over the real Qwen3 vocabulary and takes the answer.
        grammar = compile_grammar(schema, source + ' Testo "con" virgolette\\ e\ttab\r\n🙂')
        assert accepts(lltok, grammar, serialize_output(schema, example.output))
        assert not accepts(lltok, grammar, serialize_output(schema, example.output) + "}")


@pytest.mark.parametrize("source", ['"\\' * 300, "🙂è" * 200, "ascii text " * 40])
def test_worst_case_covers_the_largest_admitted_ner_output(source: str) -> None:
    schema = json.loads((SCHEMAS_DIR / "ner-it-clinical.json").read_text())
    escaped = json_escape(source)
    # The heaviest span the grammar admits: 80 escaped characters of the source (an escape is
    # never cut: the spans are runs of whole escaped pieces).
    span = max((escaped[i : i + 80] for i in range(len(escaped) - 79)), key=lambda s: len(s.encode()))
    text = json.loads(f'"{span.rstrip(chr(92))}"')
    entity = [text, "BODY_PART", "negated", "uncertain", "historical", "family"]
    biggest = json.dumps({"entities": [entity] * 64}, ensure_ascii=False, separators=(",", ":"))
    bound = worst_case_bytes(schema, escaped)
    assert len(biggest.encode()) <= bound
    # Tight: no more than the escapes cut from the span's end.
    assert bound - len(biggest.encode()) <= 64 * 2


def test_worst_case_is_limited_by_a_short_source() -> None:
    schema = json.loads((SCHEMAS_DIR / "qa-it-clinical.json").read_text())
    assert worst_case_bytes(schema, "0123456789") == len('{"answer":""}') + 10


def test_worst_case_counts_the_bytes_of_the_heaviest_window_not_four_per_character() -> None:
    schema = obj(a={"type": "string", "maxLength": 48, "x-medlora-grounded": True})
    light, heavy = "a" * 100, "a" * 100 + "€" * 48  # "€" is 3 bytes
    assert worst_case_bytes(schema, light) == len('{"a":""}') + 48
    assert worst_case_bytes(schema, heavy) == len('{"a":""}') + 3 * 48


def test_tuple_arrays_need_their_prefix_required_and_room_for_every_flag() -> None:
    label = {"enum": ["A", "B"]}
    text = {"type": "string", "maxLength": 48, "x-medlora-grounded": True}
    flags = {"enum": ["x", "y"]}

    def entities(**array: Any) -> dict[str, Any]:
        item = {"type": "array", "prefixItems": [text, label], "items": flags, **array}
        return obj(e={"type": "array", "maxItems": 4, "items": item})

    check_schema(entities(minItems=2, maxItems=4))
    with pytest.raises(SchemaBoundsError, match="minItems == len"):
        check_schema(entities(maxItems=4))
    with pytest.raises(SchemaBoundsError, match="room for every flag"):
        check_schema(entities(minItems=2, maxItems=3))


def test_grounded_field_too_short_for_one_piece_is_refused() -> None:
    schema = obj(a={"type": "string", "maxLength": 10, "x-medlora-grounded": True})
    with pytest.raises(SchemaBoundsError, match="grounded string needs maxLength >= 48"):
        check_schema(schema)


@pytest.mark.parametrize(
    ("node", "biggest"),
    [
        ({"type": "integer", "minimum": -120, "maximum": 99}, "-120"),
        ({"type": "integer", "minimum": 0, "maximum": 70000}, "70000"),
        ({"type": "number", "minimum": 0.5, "maximum": 15, "x-medlora-decimals": 1}, "14.5"),
        ({"type": "number", "minimum": -9.99, "maximum": 1, "x-medlora-decimals": 2}, "-9.99"),
        ({"type": "string", "format": "date"}, '"2024-12-31"'),
    ],
)
def test_worst_case_covers_the_longest_number_or_date(node: dict[str, Any], biggest: str) -> None:
    check_schema(obj(v=node))
    assert worst_case_bytes(obj(v=node), "") >= len(f'{{"v":{biggest}}}')
