"""Notes laid out so that a chunk boundary falls inside a given phrase."""

from __future__ import annotations

from app.tasks.chunking import split_text

FILLER_WORD = "parola "  # no punctuation: the first chunk ends at its last space that fits


def first_chunk_ends_after(head: str, tail: str, max_chars: int, overlap: int) -> str:
    """Filler words, `head + tail`, filler words: padded so that the first chunk of the note
    ends right after `head` (a phrase cut in two by the chunk's edge)."""
    after = FILLER_WORD * (2 * max_chars // len(FILLER_WORD))
    for k in range(max_chars // len(FILLER_WORD) + 1):
        for short in range(len(FILLER_WORD)):  # a shorter last word: every padding length
            before = FILLER_WORD * k + (FILLER_WORD[:short] + " " if short else "")
            text = before + head + tail + after
            if split_text(text, max_chars, overlap)[0].end == len(before + head):
                return text
    raise AssertionError("no padding puts the first chunk's edge after the head")
