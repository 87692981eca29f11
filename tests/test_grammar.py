"""The compiled grammar, checked by llguidance itself with the real Qwen3 tokenizer."""

from __future__ import annotations

import json
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from app.tasks.grammar import compile_grammar, source_pieces
from tests.conftest import SCHEMAS_DIR, accepts
from tests.strategies import texts

llguidance = pytest.importorskip("llguidance")


def ner_schema() -> dict[str, Any]:
    return dict(json.loads((SCHEMAS_DIR / "ner-it-clinical.json").read_text()))


def ner_json(*entities: tuple[str, ...]) -> str:
    return json.dumps({"entities": [list(e) for e in entities]}, ensure_ascii=False, separators=(",", ":"))


SOURCE = 'Nega "dolore" toracico;\tcaffè\\latte\r\n🙂 febbre 38,5 °C'


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (ner_json(), True),
        (ner_json(("dolore", "SYMPTOM")), True),
        (ner_json(('"dolore" toracico', "SYMPTOM"), ("caffè\\latte", "DRUG")), True),
        (ner_json(("🙂 febbre 38,5", "SYMPTOM")), True),
        (ner_json(("\r\n", "SYMPTOM")), True),  # whitespace spans decode fine; grounding drops them
        (ner_json(("polmonite", "DISORDER")), False),  # not in the source
        (ner_json(("olore", "SYMPTOM")), False),  # starts inside a word
        (ner_json(("dolore", "ALLERGY")), False),  # not a label
        (ner_json(("", "SYMPTOM")), False),  # empty span
        (ner_json(("dolore", "SYMPTOM")).replace(":", ": "), False),  # whitespace outside strings
        ('{"entities":[]} ', False),
        (ner_json(("dolore", "SYMPTOM", "negated", "family")), True),  # attributes that hold
        (ner_json(("dolore", "SYMPTOM", "family", "negated")), False),  # not in the manifest's order
        (ner_json(("dolore", "SYMPTOM", "negated", "negated")), False),  # an attribute twice
        (ner_json(("dolore", "SYMPTOM", "smoker")), False),  # not an attribute
        (ner_json(("dolore",)), False),  # no label
    ],
)
def test_ner_grammar_admits_exactly_grounded_schema_outputs(lltok: Any, output: str, expected: bool) -> None:
    assert accepts(lltok, compile_grammar(ner_schema(), SOURCE), output) is expected


def test_span_length_and_item_count_are_bounded(lltok: Any) -> None:
    source = " ".join(f"parola{i}" for i in range(40))
    grammar = compile_grammar(ner_schema(), source)
    assert accepts(lltok, grammar, ner_json((source[:80].rsplit(" ", 1)[0], "TEST")))
    assert not accepts(lltok, grammar, ner_json((source[:90], "TEST")))
    assert accepts(lltok, grammar, ner_json(*[("parola1", "TEST")] * 64))
    assert not accepts(lltok, grammar, ner_json(*[("parola1", "TEST")] * 65))


@given(texts)
@settings(max_examples=60, deadline=None)
def test_some_span_always_fits_so_decoding_cannot_dead_end(lltok: Any, text: str) -> None:
    pieces = [p for p in source_pieces(text) if p.strip()]
    if not pieces:
        return
    grammar = compile_grammar(ner_schema(), text)
    assert accepts(lltok, grammar, ner_json((pieces[0], "TEST")))


def test_single_very_long_word_still_has_a_span(lltok: Any) -> None:
    grammar = compile_grammar(ner_schema(), "A" * 300)
    assert accepts(lltok, grammar, ner_json(("A" * 32, "TEST")))


def test_qa_grammar_admits_null_or_a_context_span(lltok: Any) -> None:
    schema = json.loads((SCHEMAS_DIR / "qa-it-clinical.json").read_text())
    grammar = compile_grammar(schema, "Terapia con furosemide 25 mg.")
    assert accepts(lltok, grammar, '{"answer":null}')
    assert accepts(lltok, grammar, '{"answer":"furosemide 25 mg"}')
    assert not accepts(lltok, grammar, '{"answer":"torasemide"}')
    assert not accepts(lltok, grammar, '{"answer":""}')


def test_classification_grammar_admits_one_known_label(lltok: Any) -> None:
    schema = json.loads((SCHEMAS_DIR / "classify-it-note-type.json").read_text())
    grammar = compile_grammar(schema, "whatever")
    assert accepts(lltok, grammar, '{"labels":["LAB_REPORT"]}')
    assert not accepts(lltok, grammar, '{"labels":[]}')
    assert not accepts(lltok, grammar, '{"labels":["LAB_REPORT","LAB_REPORT"]}')
    assert not accepts(lltok, grammar, '{"labels":["OTHER"]}')


def test_free_strings_are_bounded_and_escaped(lltok: Any, tmp_path: Path) -> None:
    schema = {
        "type": "object",
        "properties": {"note": {"type": "string", "maxLength": 5}},
        "required": ["note"],
        "additionalProperties": False,
    }
    grammar = compile_grammar(schema, "")
    assert accepts(lltok, grammar, '{"note":"a\\"b\\\\"}')
    assert not accepts(lltok, grammar, '{"note":"abcdef"}')
    assert not accepts(lltok, grammar, '{"note":"a"b"}')


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
        "additionalProperties": False,
    }


@pytest.mark.parametrize(
    ("node", "admitted", "refused"),
    [
        (
            {"type": "integer", "minimum": 50, "maximum": 100},
            ["50", "88", "100"],
            ["49", "101", "088", "88.0", "-0", "８８", "٨٨", "8８"],
        ),
        ({"type": "integer", "minimum": -5, "maximum": 5}, ["-5", "0", "5"], ["-0", "-6", "6", "+3"]),
        (
            {"type": "number", "minimum": 33, "maximum": 43, "x-medlora-decimals": 1},
            ["33", "37.8", "42.9", "43"],
            ["32.9", "43.1", "37.80", "37.85", "37.", "037.5", "1e1", "3７.5", "37.５"],
        ),
        (
            {"type": "number", "minimum": 6.8, "maximum": 7.8, "x-medlora-decimals": 2},
            ["6.8", "7", "7.35", "7.8"],
            ["6.79", "7.81", "7.350", "7.0"],
        ),
        (
            {"type": "string", "format": "date", "x-medlora-years": [2015, 2030]},
            ['"2024-03-12"', '"2024-02-29"', '"2015-01-01"', '"2030-12-31"'],
            [
                '"2023-02-29"',
                '"2024-04-31"',
                '"2014-12-31"',
                '"2031-01-01"',
                '"2024-3-12"',
                '"12/03/2024"',
                '"２024-03-12"',
            ],
        ),
    ],
)
def test_bounded_numbers_and_dates_admit_exactly_their_values_in_one_form(
    lltok: Any, node: dict[str, Any], admitted: list[str], refused: list[str]
) -> None:
    grammar = compile_grammar(_obj({"v": node}), "testo")
    for value in admitted:
        assert accepts(lltok, grammar, f'{{"v":{value}}}'), value
    for value in refused:
        assert not accepts(lltok, grammar, f'{{"v":{value}}}'), value


def test_optional_properties_may_be_left_out_but_never_reordered_or_repeated(lltok: Any) -> None:
    schema = _obj(
        {"a": {"type": "boolean"}, "b": {"type": "boolean"}, "c": {"type": "boolean"}, "d": {"type": "boolean"}},
        required=["c"],
    )
    grammar = compile_grammar(schema, "testo")
    for output in [
        '{"c":true}',
        '{"a":true,"c":false}',
        '{"b":true,"c":true,"d":false}',
        '{"a":false,"b":true,"c":true,"d":true}',
    ]:
        assert accepts(lltok, grammar, output), output
    for output in [
        "{}",
        '{"a":true}',
        '{"c":true,"a":true}',
        '{"a":true,"a":true,"c":true}',
        '{,"c":true}',
        '{"c":true,}',
    ]:
        assert not accepts(lltok, grammar, output), output
    everything_optional = compile_grammar(_obj({"a": {"type": "boolean"}, "b": {"type": "boolean"}}, []), "testo")
    for output in ["{}", '{"b":false}', '{"a":true,"b":true}']:
        assert accepts(lltok, everything_optional, output), output


def test_a_flag_tail_can_require_one_flag(lltok: Any) -> None:
    tuple_node = {
        "type": "array",
        "prefixItems": [{"type": "string", "maxLength": 60, "x-medlora-grounded": True}],
        "items": {"enum": ["x", "y", "z"]},
        "minItems": 2,
        "maxItems": 4,
    }
    grammar = compile_grammar(_obj({"v": tuple_node}), "una prova")
    for output in ['{"v":["prova","x"]}', '{"v":["prova","y","z"]}', '{"v":["una prova","x","y","z"]}']:
        assert accepts(lltok, grammar, output), output
    for output in ['{"v":["prova"]}', '{"v":["prova","z","x"]}', '{"v":["prova","x","x"]}']:
        assert not accepts(lltok, grammar, output), output


def _accepts_as_written(lltok: Any, grammar: str, output: str) -> bool:
    """As `accepts`, tokenizing the bytes as they are: Qwen3's tokenizer NFC-normalizes text
    (`tokenize_str` would turn "a" + U+0300 into "à"), a model can still write decomposed bytes."""
    matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    ok = matcher.consume_tokens(lltok.greedy_tokenize(output))
    return bool(ok and not matcher.is_error() and matcher.is_accepting())


def test_decomposed_accents_stay_with_their_letters_in_the_grammar(lltok: Any) -> None:
    source = unicodedata.normalize("NFD", "Residente in città, febbre a 38,5 °C, più volte.")
    grammar = compile_grammar(ner_schema(), source)
    city, more = unicodedata.normalize("NFD", "città"), unicodedata.normalize("NFD", "più volte")
    assert _accepts_as_written(lltok, grammar, ner_json((city, "TEST"), (more, "TEST")))
    assert _accepts_as_written(lltok, grammar, ner_json(("febbre a 38,5", "TEST")))
    assert not _accepts_as_written(lltok, grammar, ner_json(("citta", "TEST")))  # between "a" and its accent
    assert not _accepts_as_written(lltok, grammar, ner_json(("pi", "TEST")))


def test_a_letter_with_more_marks_than_a_piece_holds_still_has_a_span(lltok: Any) -> None:
    zalgo = "a" + "\u0301" * 70 + " fine"
    grammar = compile_grammar(ner_schema(), zalgo)
    first = source_pieces(zalgo)[0]
    assert first.startswith("a\u0301") and len(first) <= 32
    assert _accepts_as_written(lltok, grammar, ner_json((first, "TEST")))


def test_every_combining_mark_stays_with_the_letter_before_it() -> None:
    marks = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c))[0] == "M"]
    assert len(marks) > 2000
    text = "".join("a" + mark + " " for mark in marks)
    assert source_pieces(text) == [piece for mark in marks for piece in ("a" + mark, " ")]
