"""Split long notes into overlapping chunks at natural boundaries, and merge spans back.

A chunk never starts or ends inside a word, so grounded spans found in a chunk keep their
meaning once shifted by the chunk's offset. Overlap lets an entity cut by one chunk's end
appear whole in the next.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.tasks.grounding import Span, sorted_spans

# Preferred cut points, best first: paragraph break, line break, sentence end, any space.
_CUTS = [
    re.compile(r"\n[ \t]*\n\s*"),
    re.compile(r"\n\s*"),
    re.compile(r"(?<=[.!?;:])\s+"),
    re.compile(r"\s+"),
]


@dataclass(frozen=True)
class Chunk:
    start: int
    text: str

    @property
    def end(self) -> int:
        return self.start + len(self.text)


def _best_cut(text: str, lo: int, hi: int) -> int:
    """Index in (lo, hi] just after the best boundary; hi if there is none."""
    window = text[lo:hi]
    for pattern in _CUTS:
        ends = [m.end() for m in pattern.finditer(window) if m.end() > 0]
        if ends:
            return lo + ends[-1]
    return hi


def _next_start(text: str, cut: int, overlap: int, prev_start: int) -> int:
    """Start of the next chunk: `overlap` characters back from the cut, at a word start."""
    if overlap <= 0:
        return cut
    target = max(cut - overlap, prev_start + 1)
    space = re.compile(r"\s+").search(text, target, cut)
    start = space.end() if space else cut
    return start if start > prev_start else cut


def split_text(text: str, max_chars: int, overlap: int) -> list[Chunk]:
    """Chunks of at most max_chars covering text, consecutive ones sharing about `overlap` chars."""
    if len(text) <= max_chars:
        return [Chunk(0, text)]
    overlap = min(overlap, max_chars // 2)
    chunks: list[Chunk] = []
    start = 0
    while start < len(text):
        if len(text) - start <= max_chars:
            chunks.append(Chunk(start, text[start:]))
            break
        cut = _best_cut(text, start + max_chars // 2, start + max_chars)
        chunks.append(Chunk(start, text[start:cut]))
        start = _next_start(text, cut, overlap, start)
    return chunks


def shift(span: Span, offset: int) -> Span:
    return Span(span.start + offset, span.end + offset, span.text, span.label, span.attributes, span.confidence)


def merge_spans(per_chunk: list[list[Span]]) -> list[Span]:
    """Union of chunk spans (already shifted), without duplicates from overlaps.

    A span strictly inside a same-label span found in another chunk is the cut-off copy
    of that span and is dropped. A span found in two chunks keeps its higher confidence.
    """
    tagged = [(i, s) for i, spans in enumerate(per_chunk) for s in spans]
    kept: dict[tuple[int, int, str], Span] = {}
    for i, span in tagged:
        covered = any(
            j != i
            and other.label == span.label
            and other.start <= span.start
            and span.end <= other.end
            and (other.end - other.start) > (span.end - span.start)
            for j, other in tagged
        )
        key = (span.start, span.end, span.label)
        if not covered and (key not in kept or (span.confidence or 0.0) > (kept[key].confidence or 0.0)):
            kept[key] = span
    return sorted_spans(kept.values())
