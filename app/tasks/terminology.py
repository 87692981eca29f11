"""Terminologies a task codes its entities with: loading a hospital's file, and the
candidate codes a fuzzy matcher finds for an entity's text.

A terminology file is CSV (`.csv`) or TSV (`.tsv`, `.txt`) with a header naming the columns
`system, code, display, synonyms, language` (in any order; other columns are refused). One
row is one code in one language: `synonyms` are `|`-separated, `language` an ISO 639 code.
The same code may appear once per language (an English row with the official display, an
Italian row with a translation and Italian synonyms); twice in one language is a duplicate.

`system` must be an absolute URI (`scheme:...`) and either one of the FHIR system URIs below
or one the manifest declares for that file (`systems:`): a typo in a system URI would
otherwise put codings no FHIR server recognises into every answer.

Every refusal names the file, the line (1 = the header) and the field, never a display.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rapidfuzz import fuzz, process

COLUMNS = ("system", "code", "display", "synonyms", "language")

# FHIR's canonical URIs for the code systems a hospital is likely to hold.
KNOWN_SYSTEMS = frozenset(
    {
        "http://hl7.org/fhir/sid/icd-10-cm",
        "http://hl7.org/fhir/sid/icd-10",
        "http://hl7.org/fhir/sid/icd-9-cm",
        "http://www.whocc.no/atc",
        "http://loinc.org",
        "http://snomed.info/sct",
        "http://www.nlm.nih.gov/research/umls/rxnorm",
    }
)

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
_CODE = re.compile(r"^\S(?:.{0,62}\S)?$")  # no surrounding whitespace, at most 64 characters
_LANGUAGE = re.compile(r"^[a-z]{2,3}$")
_MAX_DISPLAY = 512
NONE = "none"  # the linking answer that abstains; no terminology may use it as a code


class TerminologyError(ValueError):
    """A terminology file is invalid; the message names file, line and field."""


@dataclass(frozen=True)
class Concept:
    system: str
    code: str
    display: str
    synonyms: tuple[str, ...]
    language: str


@dataclass(frozen=True)
class Candidate:
    concept: Concept
    score: float  # rapidfuzz's 0-100 similarity of the best name of the concept


@dataclass(frozen=True)
class Coding:
    """A code chosen for an entity (what the API returns as `codes`)."""

    system: str
    code: str
    display: str
    confidence: float | None


def normalize(text: str) -> str:
    """What the matcher compares: casefolded, accents and punctuation gone, one space between
    words ("Dell'anca" and "dell anca" match; "città" and "citta" too)."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    kept = (" " if unicodedata.category(c)[0] in "PSZC" else c for c in decomposed if not unicodedata.combining(c))
    return " ".join("".join(kept).split())


class Terminology:
    """The concepts of one file, with the names the matcher searches."""

    def __init__(self, source: Path, concepts: Sequence[Concept]):
        self.source = source
        self.concepts = tuple(concepts)
        self._names: dict[str, list[tuple[str, int]]] = {}  # language -> (normalized name, concept index)
        for i, concept in enumerate(self.concepts):
            names = self._names.setdefault(concept.language, [])
            for name in dict.fromkeys(normalize(n) for n in (concept.display, *concept.synonyms)):
                if name:
                    names.append((name, i))

    @property
    def systems(self) -> list[str]:
        return sorted({c.system for c in self.concepts})

    def codes(self) -> set[tuple[str, str]]:
        return {(c.system, c.code) for c in self.concepts}

    def candidates(self, text: str, languages: Iterable[str], k: int, min_score: float) -> list[Candidate]:
        """The `k` concepts whose display or synonyms are most like `text` (in the given
        languages), best first, none under `min_score` (0-100); one entry per code."""
        query = normalize(text)
        names = [pair for language in dict.fromkeys(languages) for pair in self._names.get(language, [])]
        if not query or not names:
            return []
        # WRatio scores partial and reordered matches too ("polmonite" in "polmonite batterica").
        found = process.extract(
            query, [n for n, _ in names], scorer=fuzz.WRatio, limit=max(k * 4, 20), score_cutoff=min_score
        )
        best: dict[tuple[str, str], Candidate] = {}
        for _name, score, index in found:
            concept = self.concepts[names[index][1]]
            key = (concept.system, concept.code)
            if key not in best or score > best[key].score:
                best[key] = Candidate(concept, float(score))
        ranked = sorted(best.values(), key=lambda c: (-c.score, c.concept.code))
        return ranked[:k]


@dataclass(frozen=True)
class LabelCoding:
    """How a task codes the entities of one label: the terminology, and the matcher's limits."""

    terminology: Terminology
    candidates: int
    min_score: float


def load_terminology(path: Path, extra_systems: Iterable[str] = ()) -> Terminology:
    """Read and check a terminology file (TerminologyError naming file, line and field)."""
    allowed = KNOWN_SYSTEMS | set(extra_systems)
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TerminologyError(f"{path}: cannot read: {exc}") from exc
    rows = csv.reader(text.splitlines(), delimiter=delimiter)
    header = next(rows, None)
    if header is None:
        raise TerminologyError(f"{path}:1: header: the file is empty (needs {', '.join(COLUMNS)})")
    header = [h.strip().lower() for h in header]
    missing = [c for c in COLUMNS if c not in header]
    unknown = [h for h in header if h not in COLUMNS]
    if missing or unknown or len(set(header)) != len(header):
        raise TerminologyError(
            f"{path}:1: header: must name the columns {', '.join(COLUMNS)} once each"
            f" (missing: {missing or 'none'}; unknown: {unknown or 'none'})"
        )
    concepts: list[Concept] = []
    seen: dict[tuple[str, str, str], int] = {}
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise TerminologyError(f"{path}:{line}: row: has {len(row)} fields, the header {len(header)}")
        cells = {name: cell.strip() for name, cell in zip(header, row, strict=True)}
        concept = _concept(path, line, cells, allowed)
        key = (concept.system, concept.code, concept.language)
        if key in seen:
            raise TerminologyError(
                f"{path}:{line}: code: duplicate code {concept.code!r} of {concept.system} in language "
                f"{concept.language!r} (first on line {seen[key]})"
            )
        seen[key] = line
        concepts.append(concept)
    if not concepts:
        raise TerminologyError(f"{path}:2: code: the file has no codes")
    return Terminology(path, concepts)


def _concept(path: Path, line: int, cells: dict[str, str], allowed: frozenset[str] | set[str]) -> Concept:
    def refuse(field: str, why: str) -> TerminologyError:
        return TerminologyError(f"{path}:{line}: {field}: {why}")

    system = cells["system"]
    if not _URI.match(system):
        raise refuse("system", f"{system!r} is not an absolute URI")
    if system not in allowed:
        raise refuse(
            "system",
            f"unknown system {system!r} (known: {', '.join(sorted(KNOWN_SYSTEMS))}; "
            "declare another in the manifest's terminologies[].systems)",
        )
    code = cells["code"]
    if not code:
        raise refuse("code", "empty")
    if not _CODE.match(code) or code == NONE or '"' in code or "\\" in code:
        raise refuse("code", f"{code!r} is not a code (at most 64 characters, no quotes or backslashes, not 'none')")
    display = cells["display"]
    if not display:
        raise refuse("display", f"empty display for code {code!r}")
    if len(display) > _MAX_DISPLAY:
        raise refuse("display", f"longer than {_MAX_DISPLAY} characters")
    synonyms = tuple(s.strip() for s in cells["synonyms"].split("|") if s.strip())
    language = cells["language"]
    if not _LANGUAGE.match(language):
        raise refuse("language", f"{language!r} is not an ISO 639 language code (it, en, ...)")
    return Concept(system, code, display, synonyms, language)
