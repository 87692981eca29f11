"""Notes in NFC, as the model reads them, and the way back to the characters that were sent.

Qwen's tokenizer normalizes text to NFC, so a note written decomposed ("citta" + U+0300, as
macOS and some PDF exports write it) reaches the model composed. llguidance computes the
tokens of forced bytes through that same tokenizer: a grammar built over the decomposed bytes
offers the composed token inside a span and then refuses it, a dead end mid-answer. So the
runner gives the prompt, the grammar and grounding the NFC text, and every span it grounds is
moved back to the text the client sent: offsets and `text` are always those of the input.
"""

from __future__ import annotations

import bisect
import dataclasses
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from app.tasks.grounding import Span

T = TypeVar("T")


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@dataclass(frozen=True)
class NfcText:
    """A text and its NFC form, cut into pieces: piece k is
    `original[original_bounds[k]:original_bounds[k + 1]]` and becomes
    `text[nfc_bounds[k]:nfc_bounds[k + 1]]`, either one character unchanged or the part of a
    segment that normalizes on its own (from a starter that composes with nothing before it)
    that normalization changes."""

    original: str
    text: str
    original_bounds: tuple[int, ...]
    nfc_bounds: tuple[int, ...]
    # Per piece, the original bounds of the segment (a character and the marks it carries)
    # the piece belongs to.
    segments: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, original: str) -> NfcText | None:
        """None when the text is NFC already (nearly always: nothing to map)."""
        if unicodedata.is_normalized("NFC", original):
            return None
        original_bounds, nfc_bounds, parts = [0], [0], []
        segments: list[tuple[int, int]] = []

        def close(segment: str) -> None:
            # Only what normalization changes is mapped as a block: the characters a segment
            # shares with its NFC form at either end (a mark after a paragraph separator, kept
            # in the separator's segment) map one to one, so a span that starts or ends among
            # them is not widened over whitespace or past its length limit.
            normal = _nfc(segment)
            prefix = _common_prefix(segment, normal)
            suffix = min(_common_prefix(segment[::-1], normal[::-1]), min(len(segment), len(normal)) - prefix)
            pieces = [1] * prefix + [0] + [1] * suffix if len(segment) > prefix + suffix else [1] * len(segment)
            middle = (len(segment) - prefix - suffix, len(normal) - prefix - suffix)
            at = original_bounds[-1]
            segments.extend([(at, at + len(segment))] * len(pieces))
            for size in pieces:
                original_size, nfc_size = (size, size) if size else middle
                original_bounds.append(original_bounds[-1] + original_size)
                nfc_bounds.append(nfc_bounds[-1] + nfc_size)
            parts.append(normal)

        segment = ""
        for char in original:
            # A new segment starts at a character that composes with nothing before it: a
            # starter whose NFC with the segment so far is the two normalized apart (Hangul
            # jamo and other composing starters stay with what they compose with).
            # A mark of combining class 0 (U+034F, the enclosing marks) stays with the letter it
            # follows too: a span must not start or end between them.
            starter = unicodedata.combining(char) == 0 and not unicodedata.category(char).startswith("M")
            if segment and starter and _nfc(segment + char) == _nfc(segment) + _nfc(char):
                close(segment)
                segment = ""
            segment += char
        close(segment)
        return cls(original, "".join(parts), tuple(original_bounds), tuple(nfc_bounds), tuple(segments))

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """Offsets in the NFC text as offsets in the original. A bound inside a piece NFC
        changed has no exact counterpart (NFC reordered or composed the characters around it:
        a cut inside a run of stacked marks longer than a piece): the span gives up that
        character and its marks, so that it never grows past its length limit or over a
        neighbour. Surrounding whitespace is trimmed; the result may be empty (start == end)."""
        first = bisect.bisect_right(self.nfc_bounds, start) - 1
        if first < len(self.segments) and self.nfc_bounds[first] != start:
            original_start = self.segments[first][1]
        else:
            original_start = self.original_bounds[first]
        last = bisect.bisect_left(self.nfc_bounds, end)
        if last < len(self.nfc_bounds) and self.nfc_bounds[last] == end:
            original_end = self.original_bounds[last]
        else:
            original_end = self.segments[last - 1][0]
        while original_start < original_end and self.original[original_start].isspace():
            original_start += 1
        while original_end > original_start and self.original[original_end - 1].isspace():
            original_end -= 1
        return original_start, max(original_end, original_start)

    def remap(self, span: Span) -> Span:
        """The span in the original text; empty (start == end) when nothing of it maps exactly."""
        start, end = self.to_original(span.start, span.end)
        return dataclasses.replace(span, start=start, end=end, text=self.original[start:end])


def remap_spans(value: T, remap: Callable[[Span], Span]) -> T:
    """`value` with every Span inside it (through dataclasses, lists, tuples and dicts) remapped."""
    return _walk(value, remap)  # type: ignore[no-any-return]


def _walk(value: Any, remap: Callable[[Span], Span]) -> Any:
    if isinstance(value, Span):
        return remap(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: _walk(getattr(value, f.name), remap) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    if isinstance(value, list):
        return [_walk(v, remap) for v in value]
    if isinstance(value, tuple):
        return tuple(_walk(v, remap) for v in value)
    if isinstance(value, dict):
        return {k: _walk(v, remap) for k, v in value.items()}
    return value
