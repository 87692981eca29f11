"""Split long notes into overlapping chunks at natural boundaries, and merge spans back.

A chunk starts and ends only on piece boundaries (`grammar.source_pieces`), so a chunk's
pieces are the note's pieces there and grounded spans found in a chunk keep their meaning
once shifted by the chunk's offset. Consecutive chunks share at least the overlap, so that
an entity cut by one chunk's end appears whole in the next.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.tasks.grammar import PIECE_MAX_CHARS, source_pieces
from app.tasks.grounding import Span, sorted_spans

# Preferred cut points, best first: paragraph break, line break, sentence end, any space.
_CUTS = [
    re.compile(r"\n[ \t]*\n\s*"),
    re.compile(r"\n\s*"),
    re.compile(r"(?<=[.!?;:])\s+"),
    re.compile(r"\s+"),
]

SpanKey = tuple[int, int, str]  # (start, end, label): a span's identity within a note


@dataclass(frozen=True)
class Chunk:
    start: int
    text: str

    @property
    def end(self) -> int:
        return self.start + len(self.text)


def _boundaries(text: str) -> list[int]:
    """Where pieces start and end, in order (0 and len(text) included)."""
    bounds = [0]
    for piece in source_pieces(text):
        bounds.append(bounds[-1] + len(piece))
    return bounds


def _last_at_or_before(bounds: list[int], limit: int, above: int) -> int | None:
    """The last boundary in (above, limit], or None."""
    i = bisect.bisect_right(bounds, limit) - 1
    return bounds[i] if i >= 0 and bounds[i] > above else None


def _best_cut(text: str, bounds: list[int], start: int, lo: int, hi: int) -> int:
    """Where the chunk from `start` ends: just after the best boundary in (lo, hi], on a piece
    boundary; else the last piece boundary in (start, hi] (a run without whitespace)."""
    window = text[lo:hi]
    allowed = set(bounds[bisect.bisect_right(bounds, lo) : bisect.bisect_right(bounds, hi)])
    for pattern in _CUTS:
        # A whitespace run cut short by the window's end is no boundary of the note's pieces.
        ends = [lo + m.end() for m in pattern.finditer(window) if lo + m.end() in allowed]
        if ends:
            return ends[-1]
    at = _last_at_or_before(bounds, hi, start)
    # Only a piece longer than the whole chunk (never, at max_chars >= PIECE_MAX_CHARS) is cut.
    return hi if at is None else at


def _next_start(text: str, bounds: list[int], cut: int, overlap: int, prev_start: int) -> int:
    """Start of the next chunk: at least `overlap` characters back from the cut, at a word
    start if one is within a word's length of that, else on any piece boundary."""
    if overlap <= 0:
        return cut
    target = cut - overlap
    at = _last_at_or_before(bounds, target, prev_start)
    while at is not None and at > target - PIECE_MAX_CHARS:
        if text[at - 1].isspace() and not text[at].isspace():
            return at
        at = _last_at_or_before(bounds, at - 1, prev_start)
    at = _last_at_or_before(bounds, target, prev_start)
    if at is not None:
        return at
    # A chunk barely longer than the overlap: the first boundary after its start, to progress.
    return min(bounds[bisect.bisect_right(bounds, prev_start)], cut)


def split_text(text: str, max_chars: int, overlap: int) -> list[Chunk]:
    """Chunks of at most max_chars covering text, consecutive ones sharing at least `overlap`
    characters (at most max_chars // 2) where the chunk is long enough."""
    if len(text) <= max_chars:
        return [Chunk(0, text)]
    overlap = min(overlap, max_chars // 2)
    bounds = _boundaries(text)
    chunks: list[Chunk] = []
    start = 0
    while start < len(text):
        if len(text) - start <= max_chars:
            chunks.append(Chunk(start, text[start:]))
            break
        cut = _best_cut(text, bounds, start, start + max_chars // 2, start + max_chars)
        chunks.append(Chunk(start, text[start:cut]))
        start = _next_start(text, bounds, cut, overlap, start)
    return chunks


def shift(span: Span, offset: int) -> Span:
    return Span(span.start + offset, span.end + offset, span.text, span.label, span.attributes, span.confidence)


def span_key(span: Span) -> SpanKey:
    return span.start, span.end, span.label


def _blank(chunk: Chunk, start: int, end: int) -> bool:
    """Whether the chunk holds only whitespace between the two note offsets."""
    return not chunk.text[start - chunk.start : end - chunk.start].strip()


def cut_off(span: Span, chunk: Chunk, whole: Span) -> bool:
    """Whether `span`, found in `chunk`, is `whole` cut off by that chunk's edge: it reaches
    the chunk's end (or start) and `whole` starts (ends) with it and goes on past that edge.
    (Labels are the caller's business.) A span inside a longer one away from its chunk's
    edges is not: the chunk saw what follows and chose the shorter span."""
    return _cut_off_from(span, chunk, whole.start, whole.end)


def _cut_off_from(span: Span, chunk: Chunk, start: int, end: int) -> bool:
    """`cut_off` with the whole span's offsets (no Span built: merging checks every span)."""
    chunk_end = chunk.end
    if not chunk.start <= span.start <= span.end <= chunk_end:
        return False
    at_end = start == span.start and end > chunk_end and _blank(chunk, span.end, chunk_end)
    return at_end or (end == span.end and start < chunk.start and _blank(chunk, chunk.start, span.start))


@dataclass
class MergedSpans:
    spans: list[Span]  # in document order
    # Each cut-off copy (left out of `spans`) -> the merged span it was cut from.
    whole: dict[SpanKey, Span] = field(default_factory=dict)


def _longer(a: SpanKey | None, b: SpanKey) -> SpanKey:
    """The longer span; on a tie the one that starts first."""
    if a is None:
        return b
    return min(a, b, key=lambda k: (k[0] - k[1], k[0]))


def merge_chunk_spans(per_chunk: Sequence[Sequence[Span]], chunks: Sequence[Chunk | None] | None = None) -> MergedSpans:
    """Union of the spans each chunk found (already shifted), without duplicates from overlaps.

    A span found in several chunks is one span with its highest confidence (the first chunk's
    on a tie). A span that is the copy of a longer same-label span cut off at its chunk's edge
    (see `cut_off`) is left out and mapped to the whole span, unless some chunk found it
    uncut. Without `chunks` no edge is known and nothing is taken for a cut-off copy.

    Linear in the number of spans (plus sorting the result): the furthest end of a same-label
    span from each start, and the earliest start to each end, are all a cut needs to know.
    """
    edges: Sequence[Chunk | None] = chunks if chunks is not None else [None] * len(per_chunk)
    furthest_end: dict[tuple[str, int], int] = {}
    earliest_start: dict[tuple[str, int], int] = {}
    for spans in per_chunk:
        for s in spans:
            furthest_end[(s.label, s.start)] = max(furthest_end.get((s.label, s.start), s.end), s.end)
            earliest_start[(s.label, s.end)] = min(earliest_start.get((s.label, s.end), s.start), s.start)

    kept: dict[SpanKey, Span] = {}
    cut_to: dict[SpanKey, SpanKey] = {}  # a cut-off copy -> the longest span it was cut from
    for chunk, spans in zip(edges, per_chunk, strict=True):
        for s in spans:
            whole = None if chunk is None else _cut_from(s, chunk, furthest_end, earliest_start)
            key = span_key(s)
            if whole is not None:
                cut_to[key] = _longer(cut_to.get(key), whole)
            elif key not in kept or (s.confidence or 0.0) > (kept[key].confidence or 0.0):
                kept[key] = s
    return MergedSpans(sorted_spans(kept.values()), _resolve(cut_to, kept))


def _cut_from(
    span: Span, chunk: Chunk, furthest_end: dict[tuple[str, int], int], earliest_start: dict[tuple[str, int], int]
) -> SpanKey | None:
    """The longest same-label span that `span` is a cut-off copy of, or None."""
    found: SpanKey | None = None
    end = furthest_end[(span.label, span.start)]
    if end > span.end and _cut_off_from(span, chunk, span.start, end):
        found = (span.start, end, span.label)
    start = earliest_start[(span.label, span.end)]
    if start < span.start and _cut_off_from(span, chunk, start, span.end):
        found = _longer(found, (start, span.end, span.label))
    return found


def _resolve(cut_to: dict[SpanKey, SpanKey], kept: dict[SpanKey, Span]) -> dict[SpanKey, Span]:
    """Each cut-off copy's merged span: the span it was cut from may itself be a copy cut at
    another chunk's edge (each step is longer, so the chain ends on a span some chunk saw whole)."""
    whole: dict[SpanKey, Span] = {}
    for key in cut_to:
        if key in kept or key in whole:
            continue
        chain = [key]
        while chain[-1] not in kept and chain[-1] not in whole:
            chain.append(cut_to[chain[-1]])
        last = chain.pop()
        found = kept[last] if last in kept else whole[last]
        for copy in chain:
            whole[copy] = found
    return whole


def merge_spans(per_chunk: Sequence[Sequence[Span]], chunks: Sequence[Chunk | None] | None = None) -> list[Span]:
    """The merged spans of `merge_chunk_spans`, in document order."""
    return merge_chunk_spans(per_chunk, chunks).spans
