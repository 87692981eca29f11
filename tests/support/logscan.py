"""Finding clinical text in logs: what the e2e suite sent, and the clinical vocabulary its
synthetic notes are written from.

Two nets. Every text a test client sent (notes, contexts, questions) and every span the service
answered with is recorded; a log must not hold any three consecutive words of a sent text, nor
two of an answered span. And every e2e note, whoever sent it (the batch API, `annotate`,
`eval`, the generated client), is written from the synthetic generators' clinical vocabulary
(drugs, disorders, symptoms): a log must hold none of those terms.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

_WORD = re.compile(r"[^\W\d_]{3,}")
# A snake_case identifier (a form item's name such as `chest_pain`, which schemathesis reuses as
# an adapter name) is the task's schema, not a note's words: a note is prose, and prose is not
# written with underscores. Without this, `chest_pain@1` in an admin log reads as "chest pain".
_IDENTIFIER = re.compile(r"\w*[^\W_]_[^\W_]\w*")
_TEXT_FIELDS = ("text", "context", "question")


@dataclasses.dataclass
class Sent:
    """What the e2e tests sent and got back, across the session."""

    texts: set[str] = dataclasses.field(default_factory=set)
    spans: set[str] = dataclasses.field(default_factory=set)

    def record_body(self, body: Any) -> None:
        for key, value in _walk(body):
            if key in _TEXT_FIELDS and isinstance(value, str) and len(value) >= 12:
                self.texts.add(value)

    def record_answer(self, body: Any) -> None:
        for key, value in _walk(body):
            if key == "text" and isinstance(value, str):
                self.spans.add(value)


def _walk(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k), v
            yield from _walk(v, str(k))
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key)


def _trigrams(words: list[str]) -> set[tuple[str, str, str]]:
    return {(a, b, c) for (a, b), c in zip(itertools.pairwise(words), words[2:], strict=False)}


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def log_words(log_text: str) -> list[str]:
    """The words of a log, its snake_case identifiers left out."""
    return words(_IDENTIFIER.sub(" ", log_text))


@cache
def clinical_terms() -> frozenset[str]:
    """Distinctive words (6 letters or more) of the names of drugs, disorders, symptoms and
    allergens the synthetic notes are written from: no log has a reason to hold one."""
    from app.training.synthetic import medication_vocab, vocab

    names: list[str] = []
    for language in (vocab.IT, vocab.EN):
        names += [drug.name for drug in language.drugs]
        names += [disorder.text for disorder in (*language.acute, *language.chronic, *language.familial)]
        names += [*language.symptoms, *language.allergens]
    for med in medication_vocab.MED_VOCABS.values():
        names += [medication.name for medication in med.medications]
    terms = {w for name in names for w in words(name) if len(w) >= 6}
    return frozenset(terms - _ordinary_words())


@cache
def _ordinary_words() -> frozenset[str]:
    """English words that also name no patient: those in the gateway's own code (its log events,
    "failure"), and a few that generic library logs use."""
    from app.settings import PACKAGE_DIR

    code = [p for p in PACKAGE_DIR.rglob("*.py") if "synthetic" not in p.parts]
    found = {w for path in code for w in words(path.read_text(encoding="utf-8"))}
    return frozenset(found | {"weight", "chronic", "disease", "crisis", "breath", "stroke", "failure"})


def leaks(log_text: str, sent: Sent) -> list[str]:
    """What of the clinical text the log holds (empty: nothing)."""
    logged = log_words(log_text)
    logged_words, logged_trigrams = set(logged), _trigrams(logged)
    found = sorted(clinical_terms() & logged_words)
    for text in sent.texts:
        if hit := _trigrams(words(text)) & logged_trigrams:
            found.append(" ".join(sorted(hit)[0]))
    logged_bigrams = set(itertools.pairwise(logged))
    for span in sent.spans:
        if hit := set(itertools.pairwise(words(span))) & logged_bigrams:
            found.append(" ".join(sorted(hit)[0]))
    return sorted(set(found))


def scan(paths: Iterable[Path], sent: Sent) -> dict[str, list[str]]:
    """Per log file that leaks, what it leaks."""
    report: dict[str, list[str]] = {}
    for path in paths:
        if path.exists() and (found := leaks(path.read_text(errors="replace"), sent)):
            report[str(path)] = found
    return report


def summary(report: dict[str, list[str]]) -> str:
    return json.dumps(report, indent=1, ensure_ascii=False)[:4000]
