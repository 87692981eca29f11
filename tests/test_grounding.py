from __future__ import annotations

import unicodedata
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.tasks.grammar import PIECE_MAX_CHARS, source_pieces
from app.tasks.grounding import ground_answer, ground_spans, piece_boundaries
from tests.fakes import ner_output
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


@given(texts, st.data())
@settings(max_examples=300)
def test_every_returned_span_is_what_the_model_wrote_at_aligned_offsets(text: str, data: st.DataObject) -> None:
    # Candidates the model could write (runs of pieces) and ones it could not (any slice of
    # the text, any string): the first is a run of pieces, so something grounds.
    pieces = source_pieces(text)
    i = data.draw(st.integers(0, len(pieces)))
    run = "".join(pieces[i : data.draw(st.integers(i, len(pieces)))])
    a, b = sorted(data.draw(st.lists(st.integers(0, len(text)), min_size=2, max_size=2)))
    others = data.draw(st.lists(st.sampled_from([text[a:b], text[a:], text[:b]]) | st.text(max_size=12), max_size=7))
    candidates = [run, *others]
    result = ground_spans(text, [(c, "L", {}) for c in candidates])
    bounds = piece_boundaries(text)
    assert (result.placed[0] is not None) == bool(run.strip())
    for candidate, span in zip(candidates, result.placed, strict=True):
        if span is None:
            continue
        # The written text, trimmed, at offsets where the untrimmed text starts and ends on pieces.
        assert span.text == candidate.strip() == text[span.start : span.end] != ""
        written_at = span.start - (len(candidate) - len(candidate.lstrip()))
        assert text[written_at : written_at + len(candidate)] == candidate
        assert written_at in bounds and written_at + len(candidate) in bounds
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


def test_a_word_with_decomposed_accents_grounds_whole() -> None:
    nfd = unicodedata.normalize("NFD", "Residente in città, più volte caffè.")
    city = unicodedata.normalize("NFD", "città")
    assert city in source_pieces(nfd)  # the combining mark stays with its letter
    result = ground_spans(nfd, [(city, "PLACE", {}), ("citta", "PLACE", {})])
    start = nfd.index(city)
    assert [(s.start, s.end) for s in result.spans] == [(start, start + len(city))]
    assert result.dropped["not_in_source"] == 1  # "citta" would end between a letter and its accent


@given(texts.map(lambda t: unicodedata.normalize("NFD", t)))
def test_no_piece_boundary_falls_before_a_combining_mark(text: str) -> None:
    def mark(ch: str) -> bool:
        return unicodedata.category(ch) in ("Mn", "Mc", "Me")

    for b in piece_boundaries(text):
        if 0 < b < len(text) and mark(text[b]):
            base = b - 1
            while base >= 0 and mark(text[base]):
                base -= 1
            # A mark after whitespace (or first in the text) has no character to stay with; a
            # character with more marks than a piece can hold is cut after PIECE_MAX_CHARS - 1.
            assert base < 0 or text[base].isspace() or b - base >= PIECE_MAX_CHARS, (b, ascii(text[base : b + 1]))


SWITCH = "Assumeva amoxicillina/acido clavulanico 1 g, ora solo amoxicillina 1 g."


def test_an_entity_written_after_a_longer_one_is_placed_after_it_not_inside_it() -> None:
    # Entities are written in document order: "amoxicillina" after the combination is the
    # later one, not the one the combination starts with.
    candidates = [("amoxicillina/acido clavulanico", "DRUG", {}), ("amoxicillina", "DRUG", {})]
    result = ground_spans(SWITCH, candidates, in_order=True)
    later = SWITCH.rindex("amoxicillina")
    assert [(s.start, s.text) for s in result.spans] == [(9, candidates[0][0]), (later, "amoxicillina")]


def test_nested_entities_written_in_document_order_stay_nested() -> None:
    text = "Nega dolore toracico; amoxicillina/acido clavulanico."
    candidates = [("dolore", "S", {}), ("dolore toracico", "S", {}), ("amoxicillina/acido clavulanico", "D", {})]
    candidates += [("acido clavulanico", "D", {})]
    result = ground_spans(text, candidates, in_order=True)
    assert [(s.start, s.end) for s in result.placed if s] == [(5, 11), (5, 20), (22, 52), (35, 52)]


def test_an_answer_out_of_document_order_still_grounds_every_occurrence() -> None:
    text = "febbre, tosse, febbre"
    candidates = [("tosse", "S", {}), ("febbre", "S", {}), ("febbre", "S", {})]
    result = ground_spans(text, candidates, in_order=True)
    assert sorted((s.start, s.text) for s in result.spans) == [(0, "febbre"), (8, "tosse"), (15, "febbre")]


def test_ner_places_a_repeated_drug_on_its_own_occurrence_not_inside_the_combination(client_for: Any) -> None:
    written = ner_output(("amoxicillina/acido clavulanico", "DRUG"), ("amoxicillina", "DRUG"))
    client, _ = client_for(lambda r: written)
    r = client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": [{"id": "d", "text": SWITCH}]})
    assert r.status_code == 200, r.text
    assert [(e["start"], e["text"]) for e in r.json()["documents"][0]["entities"]] == [
        (9, "amoxicillina/acido clavulanico"),
        (SWITCH.rindex("amoxicillina"), "amoxicillina"),
    ]
