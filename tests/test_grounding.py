from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from app.tasks.grammar import source_pieces
from app.tasks.grounding import ground_answer, ground_spans, piece_boundaries
from tests.strategies import texts


@given(texts)
def test_pieces_concatenate_back_to_the_source(text: str) -> None:
    assert "".join(source_pieces(text)) == text


@given(texts, st.data())
@settings(max_examples=300)
def test_any_piece_run_grounds_to_an_exact_span(text: str, data: st.DataObject) -> None:
    pieces = source_pieces(text)
    if not pieces:
        return
    i = data.draw(st.integers(0, len(pieces) - 1))
    j = data.draw(st.integers(i + 1, len(pieces)))
    span = "".join(pieces[i:j])
    result = ground_spans(text, [(span, "L", {})])
    if not span.strip():
        assert result.spans == [] and result.dropped["empty"] == 1
        return
    (grounded,) = result.spans
    assert text[grounded.start : grounded.end] == grounded.text == span.strip()
    assert grounded.start in piece_boundaries(text) or text[grounded.start - 1].isspace()


@given(texts, st.lists(st.text(max_size=12), max_size=8))
def test_every_returned_span_is_verbatim(text: str, candidates: list[str]) -> None:
    result = ground_spans(text, [(c, "L", {}) for c in candidates])
    for span in result.spans:
        assert text[span.start : span.end] == span.text and span.text.strip() == span.text and span.text
    assert len(result.spans) + sum(result.dropped.values()) == len(candidates)


def test_kth_mention_maps_to_kth_occurrence_per_label() -> None:
    text = "dolore e dolore e dolore"
    result = ground_spans(text, [("dolore", "SYMPTOM", {}), ("dolore", "SYMPTOM", {}), ("dolore", "DISORDER", {})])
    assert [(s.start, s.label) for s in result.spans] == [(0, "DISORDER"), (0, "SYMPTOM"), (9, "SYMPTOM")]


def test_span_inside_a_word_is_not_grounded() -> None:
    assert ground_spans("ipertensione", [("tensione", "D", {})]).dropped["not_in_source"] == 1


def test_answer_null_and_grounded() -> None:
    assert ground_answer("abc", None)[0] is None
    span, _ = ground_answer("terapia: furosemide 25 mg", "furosemide 25 mg")
    assert span is not None and (span.start, span.end) == (9, 25)


@given(texts)
def test_every_piece_fits_the_smallest_grounded_field(text: str) -> None:
    from app.tasks.grammar import json_escape
    from app.tasks.schema import MIN_GROUNDED_MAX_LENGTH

    assert all(len(json_escape(p)) <= MIN_GROUNDED_MAX_LENGTH for p in source_pieces(text))
