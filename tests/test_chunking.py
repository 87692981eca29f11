from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from app.tasks.chunking import merge_spans, shift, split_text
from app.tasks.grounding import Span, ground_spans
from tests.strategies import clinical_text, texts


@given(texts, st.integers(100, 400), st.integers(0, 150))
@settings(max_examples=300)
def test_chunks_cover_the_text_in_order_within_the_limit(text: str, max_chars: int, overlap: int) -> None:
    chunks = split_text(text, max_chars, overlap)
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for chunk in chunks:
        assert len(chunk.text) <= max_chars
        assert text[chunk.start : chunk.end] == chunk.text
    for a, b in itertools.pairwise(chunks):
        assert a.start < b.start <= a.end  # no gap, always progress


@given(st.lists(clinical_text, min_size=5, max_size=30).map("\n\n".join), st.integers(100, 300))
@settings(max_examples=100)
def test_spans_found_per_chunk_merge_to_whole_text_offsets(text: str, max_chars: int) -> None:
    chunks = split_text(text, max_chars, 60)
    per_chunk = []
    for chunk in chunks:
        found = ground_spans(chunk.text, [("febbre", "SYMPTOM", {})] * chunk.text.count("febbre"))
        per_chunk.append([shift(s, chunk.start) for s in found.spans])
    merged = merge_spans(per_chunk)
    for span in merged:
        assert text[span.start : span.end] == span.text
    assert len({(s.start, s.end, s.label) for s in merged}) == len(merged)


def test_cut_off_copy_from_overlap_is_dropped() -> None:
    whole = Span(10, 30, "x" * 20, "DISORDER")
    cut = Span(10, 18, "x" * 8, "DISORDER")
    other_label = Span(10, 18, "x" * 8, "BODY_PART")
    assert merge_spans([[cut, other_label], [whole]]) == [other_label, whole]


def test_prefers_paragraph_then_sentence_boundaries() -> None:
    text = "A" * 50 + ". " + "B" * 30 + "\n\n" + "C" * 100
    chunks = split_text(text, 120, 0)
    assert chunks[0].text.endswith("\n\n")
