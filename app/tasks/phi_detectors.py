"""Deterministic PHI detectors: the identifiers with a checksum or a fixed shape, found by
rule rather than by the model (codice fiscale, tessera sanitaria, e-mail, phone, URL,
dates, ages over 89, record numbers, Italian document numbers, IBAN, IP addresses).

Presidio's pattern recognizers do the matching where it has one; they run standalone
(`nlp_artifacts=None`), so no spaCy pipeline (a model download) is ever loaded. Importing
presidio costs seconds (it imports spaCy's code), so it happens on first use. Nothing here
reaches the network: presidio's e-mail check calls tldextract, which by default fetches the
public suffix list; ours reads only the snapshot tldextract ships (`_offline_domains`).

Labels are the deid task's PHI labels (adapters/deid-clinical.yaml). Confidence says how
sure a rule is: a checksum that holds is near certain; a shape alone less so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from app.tasks.grounding import Span

# Every label a detector can return: a deid manifest must declare each (checked at load).
DETECTOR_LABELS = frozenset(
    {"CODICE_FISCALE", "TESSERA_SANITARIA", "EMAIL", "PHONE", "URL", "DATE", "AGE", "RECORD_ID", "ID"}
)

# Labels whose detector checks a checksum or a fixed shape: the recall the benchmark holds to 0.99.
FIXED_SHAPE_LABELS = frozenset({"CODICE_FISCALE", "TESSERA_SANITARIA", "EMAIL", "PHONE", "URL", "DATE"})

_MONTHS = (
    "gennaio|febbraio|marzo|aprile|maggio|giugno|luglio|agosto|settembre|ottobre|novembre|dicembre"
    "|january|february|march|april|may|june|july|august|september|october|november|december"
    "|gen|feb|mar|apr|mag|giu|lug|ago|set|ott|nov|dic|jan|jun|jul|aug|sep|sept|oct|dec"
)
# Dates written with a month's name, which presidio's DateRecognizer (numeric forms) lacks:
# "12 marzo 2024", "3 gen. 2023", "March 12, 2024", "12 March 2024".
_NAMED_MONTH_DATES = (
    rf"(?i)\b(?:\d{{1,2}}\s+(?:{_MONTHS})\.?\s+\d{{4}}|(?:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}})\b"
)
# A tessera sanitaria (TEAM card) number: 20 digits, "80" (health) + "380" (Italy) + 15 more.
_TESSERA = re.compile(r"\b80380\d{15}\b")
# Ages over 89 (HIPAA Safe Harbor), with the word that makes the number an age.
_AGE = re.compile(
    r"(?i)\b(?P<n>(?:9\d|1[01]\d))(?=\s*(?:anni\b|aa\b|years?\b|yrs?\b|y/?o\b|-year-old\b|year-old\b|enne\b))"
    r"|\b(?:età|age[d]?|of age)\s*(?:di\s*)?:?\s*(?P<m>(?:9\d|1[01]\d))\b"
)
# A record number is known by the words before it: cartella clinica, nosologico, MRN, SDO...
_RECORD = re.compile(
    r"(?i)\b(?:cartella(?:\s+clinica)?|nosologico|n\.\s*nosologico|mrn|medical\s+record(?:\s+number)?|"
    r"record\s+(?:no|number)|sdo|ricovero|accettazione|patient\s+id|id\s+paziente|codice\s+paziente)"
    r"\s*(?:n(?:r|o|um)?\.?|#|number)?\s*[:.]?\s*(?P<id>(?=[A-Z0-9/-]*\d)[A-Z0-9][A-Z0-9/-]{3,30}[A-Z0-9])\b"
)


# Fewer digits than any Italian, US or UK subscriber number: a reading (130/80), a dose.
_PHONE_MIN_DIGITS = 8
# A pair of readings ("130/80", "120-80") that the lenient phone matcher takes for a number.
# and an IP address, which IpRecognizer labels ID.
_MEASURE = re.compile(r"\d{2,3}\s*/\s*\d{2,3}|\d{1,3}(?:\.\d{1,3}){3}")


@dataclass(frozen=True)
class _Rule:
    label: str
    confidence: float


def _offline_domains() -> Callable[[str], Any]:
    import tldextract

    # suffix_list_urls=(): the public suffix list snapshot tldextract ships, never a download;
    # cache_dir=None: nothing written under $HOME either.
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


@cache
def _recognizers() -> list[tuple[Any, _Rule]]:
    """Presidio's recognizers with the label and confidence each one's matches get here."""
    from presidio_analyzer import Pattern, PatternRecognizer
    from presidio_analyzer.predefined_recognizers import (
        DateRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        ItDriverLicenseRecognizer,
        ItIdentityCardRecognizer,
        ItPassportRecognizer,
        ItVatCodeRecognizer,
        PhoneRecognizer,
        UrlRecognizer,
    )

    domains = _offline_domains()

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return bool(domains(pattern_text).fqdn)

    named_dates = PatternRecognizer(
        supported_entity="DATE_TIME",
        patterns=[Pattern("named month", _NAMED_MONTH_DATES, 0.8)],
        supported_language="it",
        name="NamedMonthDate",
    )
    return [
        (OfflineEmailRecognizer(), _Rule("EMAIL", 0.95)),
        (UrlRecognizer(), _Rule("URL", 0.9)),
        # Leniency 0 (a possible number, not only one in the numbering plans): planted and
        # real numbers outside the plans are still PHI; overlapping dates and ids win first.
        (PhoneRecognizer(supported_regions=("IT", "US", "GB"), leniency=0), _Rule("PHONE", 0.85)),
        (DateRecognizer(), _Rule("DATE", 0.85)),
        (named_dates, _Rule("DATE", 0.9)),
        (ItVatCodeRecognizer(), _Rule("ID", 0.8)),
        (ItIdentityCardRecognizer(), _Rule("ID", 0.6)),
        (ItPassportRecognizer(), _Rule("ID", 0.6)),
        (ItDriverLicenseRecognizer(), _Rule("ID", 0.6)),
        (IbanRecognizer(), _Rule("ID", 0.9)),
        (IpRecognizer(), _Rule("ID", 0.8)),
    ]


def _codici_fiscali(text: str) -> Iterable[Span]:
    from codicefiscale import codicefiscale
    from presidio_analyzer.predefined_recognizers import ItFiscalCodeRecognizer

    (pattern,) = ItFiscalCodeRecognizer.PATTERNS
    for match in re.finditer(pattern.regex, text):
        if not _word_edges(text, match.start(), match.end()):
            continue
        code = match.group(0)
        # The check character (and omocodia) by python-codicefiscale: a code whose check
        # character fails is most likely a typo of a real one, so still PHI, less surely.
        valid = codicefiscale.is_valid(code.upper())
        yield Span(match.start(), match.end(), code, "CODICE_FISCALE", confidence=0.99 if valid else 0.6)


def _word_edges(text: str, start: int, end: int) -> bool:
    return (start == 0 or not text[start - 1].isalnum()) and (end == len(text) or not text[end].isalnum())


def _regex_spans(text: str) -> Iterable[Span]:
    for match in _TESSERA.finditer(text):
        yield Span(match.start(), match.end(), match.group(0), "TESSERA_SANITARIA", confidence=0.95)
    for match in _AGE.finditer(text):
        group = "n" if match.group("n") else "m"
        yield Span(match.start(group), match.end(group), match.group(group), "AGE", confidence=0.9)
    for match in _RECORD.finditer(text):
        yield Span(match.start("id"), match.end("id"), match.group("id"), "RECORD_ID", confidence=0.8)


def _presidio_spans(text: str) -> Iterable[Span]:
    for recognizer, rule in _recognizers():
        entities = recognizer.supported_entities
        for found in recognizer.analyze(text, entities, nlp_artifacts=None):
            if found.score <= 0:  # a match whose checksum failed (VAT, IBAN)
                continue
            start, end = found.start, found.end
            if rule.label == "URL":  # the sentence's full stop is not part of the address
                end = len(text[start:end].rstrip(".,;:!?)")) + start
            digits = sum(c.isdigit() for c in text[start:end])
            if rule.label == "PHONE" and (digits < _PHONE_MIN_DIGITS or _MEASURE.fullmatch(text[start:end])):
                continue
            yield Span(start, end, text[start:end], rule.label, confidence=rule.confidence)


# The order a conflict is settled in: checksums first, then fixed shapes, then the rest.
_PRIORITY = {
    label: rank
    for rank, label in enumerate(
        ("CODICE_FISCALE", "TESSERA_SANITARIA", "EMAIL", "URL", "RECORD_ID", "DATE", "AGE", "PHONE", "ID")
    )
}


def detect_phi(text: str) -> list[Span]:
    """Every identifier the rules find, non-overlapping, in document order. Where two rules
    claim overlapping text (a phone matcher inside a codice fiscale's digits, a date inside
    an e-mail), the one that checks more wins: a checksum over a fixed shape over a loose
    shape, then the longer span."""
    found = [*_codici_fiscali(text), *_regex_spans(text), *_presidio_spans(text)]
    return resolve_overlaps(found, lambda s: (_PRIORITY.get(s.label, len(_PRIORITY)), -(s.end - s.start), s.start))


def resolve_overlaps(spans: Iterable[Span], rank: Callable[[Span], Any]) -> list[Span]:
    """Spans taken best first by `rank` (lowest first), each kept only if it overlaps none
    kept before it; returned in document order."""
    kept: list[Span] = []
    for span in sorted(spans, key=rank):
        if span.start < span.end and all(span.end <= k.start or k.end <= span.start for k in kept):
            kept.append(span)
    return sorted(kept, key=lambda s: (s.start, s.end))
