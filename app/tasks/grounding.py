"""Map decoded spans back to exact character offsets, and drop what cannot be grounded.

Offsets are Python string indices (Unicode code points), 0-based, end-exclusive.

Rule for repeated strings: a span may only start and end at piece boundaries (see
`grammar.source_pieces`). The k-th entity a model emits with a given (text, label) is
placed on the k-th such occurrence of that text; an entity emitted more often than its
text occurs is a duplicate and is dropped. Entity lists are written in document order, and
are placed in that order: an occurrence that comes before the entity placed just before
(an "amoxicillina" inside the "amoxicillina/acido clavulanico" written before it) is
skipped for a later one while there is one. Surrounding whitespace is trimmed from a span
(offsets move with it); a span that is empty after trimming is dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.tasks.grammar import source_pieces

if TYPE_CHECKING:
    from app.tasks.terminology import Coding


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    text: str
    label: str = ""
    attributes: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    confidence: float | None = field(default=None, compare=False, hash=False)
    codes: tuple[Coding, ...] = field(default=(), compare=False, hash=False)  # set by linking (linking.py)


@dataclass
class GroundingResult:
    spans: list[Span] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    placed: list[Span | None] = field(default_factory=list)  # per candidate, in emitted order: its span or None


def piece_boundaries(text: str) -> set[int]:
    bounds = {0}
    pos = 0
    for piece in source_pieces(text):
        pos += len(piece)
        bounds.add(pos)
    return bounds


def aligned_occurrences(text: str, needle: str, bounds: set[int]) -> list[int]:
    starts: list[int] = []
    i = text.find(needle)
    while i != -1:
        if i in bounds and i + len(needle) in bounds:
            starts.append(i)
        i = text.find(needle, i + 1)
    return starts


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def ground_spans(
    text: str,
    candidates: list[tuple[str, str, dict[str, Any]]],
    confidences: list[float | None] | None = None,
    *,
    in_order: bool = False,
) -> GroundingResult:
    """Ground (span_text, label, attributes) triples emitted by the model against `text`;
    `confidences`, parallel to them, travel with the spans.

    With `in_order` (an entity list, which the model writes in document order) a span is
    placed on the first occurrence left that does not come before the span placed just
    before it (by start, then end): "amoxicillina" written after "amoxicillina/acido
    clavulanico" is the next one, not the one the combination starts with. An answer out of
    that order falls back to the first occurrence left."""
    result = GroundingResult()
    bounds = piece_boundaries(text)
    used: dict[tuple[str, str], set[int]] = {}
    taken: set[tuple[int, int, str]] = set()
    after = (0, 0)
    for i, (span_text, label, attributes) in enumerate(candidates):
        where, reason = _place(text, bounds, span_text, label, used, taken, after if in_order else (0, 0))
        if where is None:
            result.dropped[reason] += 1
            result.placed.append(None)
            continue
        start, end = after = where
        confidence = confidences[i] if confidences is not None else None
        result.placed.append(Span(start, end, text[start:end], label, dict(attributes), confidence))
    result.spans = sorted_spans(result.placed)
    return result


def sorted_spans(spans: Iterable[Span | None]) -> list[Span]:
    """The spans (Nones left out) in document order: by start, end, then label."""
    return sorted((s for s in spans if s is not None), key=lambda s: (s.start, s.end, s.label))


def _place(
    text: str,
    bounds: set[int],
    span_text: str,
    label: str,
    used: dict[tuple[str, str], set[int]],
    taken: set[tuple[int, int, str]],
    after: tuple[int, int],
) -> tuple[tuple[int, int] | None, str]:
    """Where one emitted span lies, (start, end), or (None, why it is dropped): the first
    occurrence of its text not used by an earlier span of its text and label, preferring
    those at or after `after`."""
    if not span_text.strip():
        return None, "empty"
    occurrences = aligned_occurrences(text, span_text, bounds)
    if not occurrences:
        return None, "not_in_source"
    done = used.setdefault((span_text, label), set())
    left = [(k, _trim(text, at, at + len(span_text))) for k, at in enumerate(occurrences) if k not in done]
    if not left:
        return None, "duplicate"
    k, (start, end) = next(((k, where) for k, where in left if where >= after), left[0])
    done.add(k)
    if (start, end, label) in taken:
        return None, "duplicate"
    taken.add((start, end, label))
    return (start, end), ""


def ground_answer(
    context: str, answer: str | None, confidence: float | None = None
) -> tuple[Span | None, GroundingResult]:
    """Ground a QA answer: its first aligned occurrence in the context, or None."""
    if answer is None:
        return None, GroundingResult()
    result = ground_spans(context, [(answer, "", {})], [confidence])
    return (result.spans[0] if result.spans else None), result
