from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.engine.base import GenerationRequest
from app.tasks.chunking import Chunk, merge_chunk_spans, merge_spans, shift, split_text
from app.tasks.grammar import PIECE_MAX_CHARS
from app.tasks.grounding import Span, aligned_occurrences, ground_spans, piece_boundaries
from tests.fakes import last_input, ner_output
from tests.strategies import clinical_text, texts
from tests.support.chunk_edges import first_chunk_ends_after

# Runs without whitespace as notes hold them: URLs, base64, table rows, long compounds
# (a short pattern repeated: hypothesis seldom draws long text on its own).
unbroken = st.tuples(
    st.text(alphabet="aB3zàè_", min_size=1, max_size=8)
    | st.text(alphabet="aB3/+=.:|-xyà\u0300", min_size=1, max_size=8),
    st.integers(1, 80),
).map(lambda pattern: pattern[0] * pattern[1])
sparse_text = st.lists(st.one_of(unbroken, clinical_text), min_size=1, max_size=6).map(" ".join)
chunkable = st.one_of(texts, sparse_text)


@given(chunkable, st.integers(100, 400), st.integers(0, 150))
@settings(max_examples=300)
def test_chunks_cover_the_text_in_order_within_the_limit(text: str, max_chars: int, overlap: int) -> None:
    chunks = split_text(text, max_chars, overlap)
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for chunk in chunks:
        assert len(chunk.text) <= max_chars
        assert text[chunk.start : chunk.end] == chunk.text
    for a, b in itertools.pairwise(chunks):
        assert a.start < b.start <= a.end  # no gap, always progress


@given(chunkable, st.integers(100, 400), st.integers(0, 150))
@settings(max_examples=300)
def test_consecutive_chunks_share_at_least_the_overlap(text: str, max_chars: int, overlap: int) -> None:
    wanted = min(overlap, max_chars // 2)
    for a, b in itertools.pairwise(split_text(text, max_chars, overlap)):
        # Only a chunk barely longer than the overlap may share less (it must still progress);
        # aligning to a piece (or a word start) adds at most a piece's length.
        assert min(wanted, len(a.text) - PIECE_MAX_CHARS) <= a.end - b.start <= wanted + PIECE_MAX_CHARS


@given(chunkable, st.integers(100, 400), st.integers(0, 150))
@settings(max_examples=300)
def test_chunks_start_and_end_on_piece_boundaries_so_spans_keep_their_pieces(
    text: str, max_chars: int, overlap: int
) -> None:
    bounds = piece_boundaries(text)
    for chunk in split_text(text, max_chars, overlap):
        assert chunk.start in bounds and chunk.end in bounds
        # The chunk's own pieces are the note's pieces there: a span grounded in the chunk is
        # a span the whole note admits, once shifted.
        inside = {b - chunk.start for b in bounds if chunk.start <= b <= chunk.end}
        assert piece_boundaries(chunk.text) == inside


def test_long_words_do_not_shrink_the_overlap() -> None:
    text = " ".join(f"{i:03d}" + "x" * 97 for i in range(60))  # words of 100 characters
    chunks = split_text(text, 1500, 200)
    assert len(chunks) > 3
    for a, b in itertools.pairwise(chunks):
        assert a.end - b.start >= 200


def test_a_run_without_whitespace_gets_its_overlap_cut_at_piece_boundaries() -> None:
    text = "Referto: https://example.org/pacs/" + "aGVsbG8rd29ybGQ=" * 300 + " fine."
    chunks = split_text(text, 1500, 200)
    bounds = piece_boundaries(text)
    assert len(chunks) > 3
    for a, b in itertools.pairwise(chunks):
        assert a.end - b.start >= 200
        assert a.end in bounds and b.start in bounds


def test_prefers_paragraph_then_sentence_boundaries() -> None:
    text = "A" * 50 + ". " + "B" * 30 + "\n\n" + "C" * 100
    chunks = split_text(text, 120, 0)
    assert chunks[0].text.endswith("\n\n")


# -- merging ------------------------------------------------------------------------------


def _found_in_chunks(text: str, chunks: list[Chunk], needles: Sequence[tuple[str, str]]) -> list[list[Span]]:
    """What a model that writes every occurrence of each (text, label) in its chunk returns."""
    per_chunk = []
    for chunk in chunks:
        bounds = piece_boundaries(chunk.text)
        candidates = [
            (needle, label, {}) for needle, label in needles for _ in aligned_occurrences(chunk.text, needle, bounds)
        ]
        per_chunk.append([shift(s, chunk.start) for s in ground_spans(chunk.text, candidates).spans])
    return per_chunk


@given(st.lists(clinical_text, min_size=5, max_size=30).map("\n\n".join), st.integers(100, 300))
@settings(max_examples=100)
def test_every_occurrence_found_in_some_chunk_survives_the_merge_once(text: str, max_chars: int) -> None:
    # "dolore" inside "dolore toracico", same label: a nested entity that chunks which saw
    # the whole phrase found too, so not a cut-off copy.
    needles = [("febbre", "SYMPTOM"), ("dolore", "SYMPTOM"), ("dolore toracico", "SYMPTOM")]
    chunks = split_text(text, max_chars, 60)
    merged = merge_spans(_found_in_chunks(text, chunks, needles), chunks)
    bounds = piece_boundaries(text)
    expected = {
        (start, start + len(needle), label)
        for needle, label in needles
        for start in aligned_occurrences(text, needle, bounds)
    }
    assert [(s.start, s.end, s.label) for s in merged] == sorted(expected)
    for span in merged:
        assert text[span.start : span.end] == span.text


def test_a_copy_cut_off_at_the_chunk_edge_is_dropped_for_the_whole_entity() -> None:
    text = "Nega dolore toracico oggi."
    first, second = Chunk(0, text[:12]), Chunk(5, text[5:])  # "Nega dolore " | "dolore toracico oggi."
    cut = Span(5, 11, "dolore", "SYMPTOM")
    whole = Span(5, 20, "dolore toracico", "SYMPTOM")
    other_label = Span(5, 11, "dolore", "FINDING")
    merged = merge_chunk_spans([[cut, other_label], [whole]], [first, second])
    assert merged.spans == [other_label, whole]
    assert merged.whole == {(5, 11, "SYMPTOM"): whole}


def test_a_copy_cut_off_at_the_chunk_start_is_dropped_for_the_whole_entity() -> None:
    text = "Riferisce dolore toracico."
    first, second = Chunk(0, text), Chunk(17, text[17:])  # the second starts at "toracico."
    whole = Span(10, 25, "dolore toracico", "SYMPTOM")
    cut = Span(17, 25, "toracico", "SYMPTOM")
    merged = merge_chunk_spans([[whole], [cut]], [first, second])
    assert merged.spans == [whole] and merged.whole == {(17, 25, "SYMPTOM"): whole}


def test_a_span_inside_a_longer_one_away_from_its_chunk_edge_is_its_own_entity() -> None:
    text = "Nega dolore toracico oggi. Altro testo qui."
    first, second = Chunk(0, text[:27]), Chunk(5, text[5:])
    nested = Span(5, 11, "dolore", "SYMPTOM")  # the first chunk saw "dolore toracico" whole
    whole = Span(5, 20, "dolore toracico", "SYMPTOM")
    merged = merge_chunk_spans([[nested], [whole]], [first, second])
    assert merged.spans == [nested, whole] and merged.whole == {}


def test_a_cut_copy_hands_over_to_the_whole_entity_through_a_chain_of_cuts() -> None:
    text = "x alfa beta gamma delta y"
    # The first chunk ends inside the entity, the second starts inside it, the third sees it whole.
    chunks = [Chunk(0, text[:12]), Chunk(7, text[7:]), Chunk(0, text)]
    whole = Span(2, 23, "alfa beta gamma delta", "D")
    spans = [[Span(7, 11, "beta", "D")], [Span(7, 23, "beta gamma delta", "D")], [whole]]
    merged = merge_chunk_spans(spans, chunks)
    assert merged.spans == [whole]
    assert merged.whole == {(7, 11, "D"): whole, (7, 23, "D"): whole}


def test_without_chunk_edges_nothing_is_taken_for_a_cut_copy() -> None:
    nested, whole = Span(5, 11, "dolore", "SYMPTOM"), Span(5, 20, "dolore toracico", "SYMPTOM")
    assert merge_spans([[nested], [whole]]) == [nested, whole]


def _reference_merge(per_chunk: list[list[Span]], chunks: list[Chunk]) -> tuple[list[Span], dict[Any, Span]]:
    """The merge rule written plainly (every span against every other)."""

    def blank(chunk: Chunk, a: int, b: int) -> bool:
        return not chunk.text[a - chunk.start : b - chunk.start].strip()

    def wholes(span: Span, chunk: Chunk) -> list[Span]:
        """The longer spans of another chunk that this one is a copy of, cut at its chunk's edge."""
        out = []
        for others in per_chunk:
            for w in others:
                if w.label != span.label:
                    continue
                if w.start == span.start and w.end > chunk.end and blank(chunk, span.end, chunk.end):
                    out.append(w)
                if w.end == span.end and w.start < chunk.start and blank(chunk, chunk.start, span.start):
                    out.append(w)
        return out

    def key(s: Span) -> tuple[int, int, str]:
        return s.start, s.end, s.label

    found = [(chunk, s) for chunk, spans in zip(chunks, per_chunk, strict=True) for s in spans]
    kept: dict[Any, Span] = {}
    cut_from: dict[Any, Span] = {}
    for chunk, s in found:
        ws = wholes(s, chunk)
        if not ws:
            if key(s) not in kept or (s.confidence or 0.0) > (kept[key(s)].confidence or 0.0):
                kept[key(s)] = s
            continue
        w = min(ws, key=lambda w: (w.start - w.end, w.start))
        if key(s) not in cut_from or (w.start - w.end, w.start) < (cut_from[key(s)].start - cut_from[key(s)].end,
                                                                    cut_from[key(s)].start):  # fmt: skip
            cut_from[key(s)] = w
    whole: dict[Any, Span] = {}
    for k, w in cut_from.items():
        if k in kept:
            continue
        while key(w) not in kept:
            w = cut_from[key(w)]
        whole[k] = kept[key(w)]
    return sorted(kept.values(), key=lambda s: (s.start, s.end, s.label)), whole


@st.composite
def chunked_spans(draw: st.DrawFn) -> tuple[list[list[Span]], list[Chunk]]:
    words = draw(st.lists(st.sampled_from(["ab", "c", "dd", "e", "  ", "\n"]), min_size=3, max_size=40))
    text = " ".join(words)
    chunks = split_text(text, draw(st.integers(20, 60)), draw(st.integers(0, 20)))
    per_chunk = []
    for chunk in chunks:
        bounds = sorted(piece_boundaries(chunk.text))
        spans = []
        for _ in range(draw(st.integers(0, 12))):
            i, j = sorted(draw(st.lists(st.sampled_from(bounds), min_size=2, max_size=2)))
            piece = chunk.text[i:j]
            if not piece.strip():
                continue
            i += len(piece) - len(piece.lstrip())
            j -= len(piece) - len(piece.rstrip())
            label = draw(st.sampled_from("AB"))
            confidence = draw(st.sampled_from([None, 0.2, 0.5, 0.9]))
            spans.append(Span(chunk.start + i, chunk.start + j, chunk.text[i:j], label, {"k": len(spans)}, confidence))
        per_chunk.append(spans)
    return per_chunk, chunks


@given(chunked_spans())
@settings(max_examples=500)
def test_merge_matches_the_plain_every_pair_rule(case: tuple[list[list[Span]], list[Chunk]]) -> None:
    per_chunk, chunks = case
    spans, whole = _reference_merge(per_chunk, chunks)
    merged = merge_chunk_spans(per_chunk, chunks)
    same = [(s, s.confidence, s.attributes) for s in merged.spans]
    assert same == [(s, s.confidence, s.attributes) for s in spans]
    assert merged.whole == whole


# -- merging through the service ----------------------------------------------------------


def test_a_nested_entity_both_overlapping_chunks_found_survives_the_merge(client_for: Any) -> None:
    filler = "Decorso regolare, paziente vigile e collaborante, parametri stabili. "
    finding = "Riferisce dolore toracico da ieri. "
    text = filler * 20 + finding + filler * 20
    at = text.index("dolore toracico")

    def respond(request: GenerationRequest) -> str:
        if "dolore toracico" not in last_input(request):
            return ner_output()
        return ner_output(("dolore", "SYMPTOM"), ("dolore toracico", "SYMPTOM"))

    client, engine = client_for(respond)
    r = client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": [{"id": "d", "text": text}]})
    assert r.status_code == 200, r.text
    assert sum("dolore toracico" in last_input(call) for call in engine.calls) >= 2  # in the overlap
    found = [(e["text"], e["start"]) for e in r.json()["documents"][0]["entities"]]
    assert found == [("dolore", at), ("dolore toracico", at)]


def test_a_qa_answer_cut_at_a_chunk_edge_yields_to_the_whole_answer_of_the_next_chunk(client_for: Any) -> None:
    context = first_chunk_ends_after("assume furosemide 25 mg ", "la mattina da anni ", 2000, 300)

    def respond(request: GenerationRequest) -> str:
        chunk = last_input(request)
        if "furosemide 25 mg la mattina" in chunk:
            return json.dumps({"answer": "furosemide 25 mg la mattina"})
        if chunk.endswith("furosemide 25 mg "):  # the answer cut by the chunk's edge
            return json.dumps({"answer": "furosemide 25 mg"})
        return json.dumps({"answer": None})

    client, engine = client_for(respond)
    item = {"id": "q", "context": context, "question": "Quale terapia diuretica?"}
    r = client.post("/v1/qa", json={"task": "qa-it-clinical", "items": [item]})
    assert r.status_code == 200, r.text
    assert any(last_input(call).endswith("furosemide 25 mg ") for call in engine.calls)
    start = context.index("furosemide")
    assert r.json()["items"][0]["answer"] == {
        "text": "furosemide 25 mg la mattina",
        "start": start,
        "end": start + 27,
        "confidence": None,
    }
