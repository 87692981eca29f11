"""Merging a long note's chunk spans: today's `merge_spans` against the pairwise merge it replaced.

A note of --chars characters is split as serving splits it (1,500-character chunks, 200 of
overlap); each chunk "finds" every clinical term it holds (shifted to note offsets), so a span
in an overlap is found twice and terms cut at a chunk's edge appear as cut-off copies. Both
functions merge the same spans; the result must agree on every span found whole, and the time
of each is printed with their ratio. The peer is the merge as of e3ed399, copied below: every
span compared with every other, on the event loop.

    .venv/bin/python -m bench.merge_spans --chars 200000
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from typing import Any

from app.tasks.chunking import merge_spans, shift, split_text
from app.tasks.grounding import Span, sorted_spans

TERMS = ["febbre", "tosse produttiva", "dolore toracico", "dispnea", "amoxicillina", "polmonite basale destra"]
FILLER = ["paziente", "riferisce", "nega", "da tre giorni", "in terapia con", "si osserva", "e", ";", "."]


def pairwise_merge(per_chunk: list[list[Span]]) -> list[Span]:
    """The merge before issue 16 (e3ed399 app/tasks/chunking.py), verbatim."""
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


def note(chars: int, seed: int) -> str:
    rng = random.Random(seed)
    words: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(TERMS) if rng.random() < 0.3 else rng.choice(FILLER)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:chars]


def chunk_spans(text: str) -> tuple[list[list[Span]], list[Any]]:
    chunks = split_text(text, 1500, 200)
    pattern = re.compile("|".join(re.escape(t) for t in sorted(TERMS, key=len, reverse=True)))
    found = [
        [Span(m.start(), m.end(), m.group(), "SYMPTOM", confidence=0.5) for m in pattern.finditer(c.text)]
        for c in chunks
    ]
    per_chunk = [[shift(span, c.start) for span in spans] for c, spans in zip(chunks, found, strict=True)]
    return per_chunk, list(chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chars", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=20261204)
    args = parser.parse_args()
    text = note(args.chars, args.seed)
    per_chunk, chunks = chunk_spans(text)
    started = time.perf_counter()
    merged = merge_spans(per_chunk, chunks)
    linear_s = time.perf_counter() - started
    started = time.perf_counter()
    old = pairwise_merge(per_chunk)
    pairwise_s = time.perf_counter() - started
    # Spans some chunk saw whole are in both results (the old merge also kept cut-off copies it
    # could not tell from nested entities; the new one maps those to the whole span).
    whole = {(m.start(), m.end()) for m in re.finditer("|".join(map(re.escape, TERMS)), text)}
    assert whole <= {(s.start, s.end) for s in merged}, "a span found whole was lost"
    result = {
        "note_chars": len(text),
        "chunks": len(chunks),
        "spans_in": sum(len(s) for s in per_chunk),
        "merged": len(merged),
        "merged_pairwise": len(old),
        "merge_spans_s": round(linear_s, 3),
        "pairwise_s": round(pairwise_s, 3),
        "speedup": round(pairwise_s / max(linear_s, 1e-9), 1),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
