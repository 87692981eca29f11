"""A note with its PHI spans masked (`[NAME]`) or replaced by consistent surrogates.

Surrogates are invented (Faker's it_IT or en_US locale, picked by the note's language)
from a seed drawn afresh for each note, never derived from the note: rerunning gives other
surrogates, and nothing about the original can be recomputed from them. Within a note the
same original always gets the same surrogate (names token by token, so "Mario Rossi" and a
later "Rossi" stay one person). Dates move by one shift per note (1-365 days either way),
so intervals between them still hold; each is written back in its own format. A surrogate
codice fiscale has a valid check character, a tessera sanitaria number keeps its 80380
prefix and gets a Luhn check digit; other identifiers keep their shape (a digit for a digit,
a letter for a letter). Ages over 89 become "90+", as Safe Harbor aggregates them.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from app.tasks.grounding import Span

ReplaceMode = Literal["mask", "surrogate"]

_MONTHS = {
    "it": (
        "gennaio febbraio marzo aprile maggio giugno luglio agosto settembre ottobre novembre dicembre".split(),
        "gen feb mar apr mag giu lug ago set ott nov dic".split(),
    ),
    "en": (
        "january february march april may june july august september october november december".split(),
        "jan feb mar apr may jun jul aug sep oct nov dec".split(),
    ),
}
_ITALIAN_HINTS = re.compile(r"(?i)\b(?:il|della|del|con|paziente|anni|nato|nata|ricovero|dimesso|dimessa)\b")
_NUMERIC_DATE = re.compile(r"^(\d{1,4})([/.-])(\d{1,2})\2(\d{1,4})$")
_NAMED_DATE = re.compile(
    r"^(?:(\d{1,2})\s+([A-Za-z]+)(\.?)\s+(\d{4})|([A-Za-z]+)(\.?)\s+(\d{1,2})(st|nd|rd|th)?(,?)\s+(\d{4}))$"
)


@dataclass(frozen=True)
class Replacement:
    """One span as it stands in the de-identified text, and what it replaced."""

    start: int  # offsets in the de-identified text
    end: int
    text: str
    original: str
    label: str
    original_start: int
    original_end: int


def note_language(text: str) -> str:
    return "it" if len(_ITALIAN_HINTS.findall(text)) >= 2 else "en"


def deidentify(
    text: str, spans: Sequence[Span], mode: ReplaceMode, seed: int | None = None
) -> tuple[str, list[Replacement]]:
    """The text with each span (non-overlapping, in document order) replaced, and where each went."""
    make = _Surrogates(note_language(text), secrets.randbits(64) if seed is None else seed)
    out: list[str] = []
    replacements: list[Replacement] = []
    cursor, length = 0, 0
    for span in spans:
        out.append(text[cursor : span.start])
        length += span.start - cursor
        new = f"[{span.label}]" if mode == "mask" else make(span.label, span.text)
        replacements.append(Replacement(length, length + len(new), new, span.text, span.label, span.start, span.end))
        out.append(new)
        length += len(new)
        cursor = span.end
    out.append(text[cursor:])
    return "".join(out), replacements


class _Surrogates:
    def __init__(self, language: str, seed: int):
        from faker import Faker

        self.language = language
        self.rng = random.Random(seed)
        self.faker = Faker("it_IT" if language == "it" else "en_US")
        self.faker.seed_instance(seed)
        # A codice fiscale comes from it_IT (the only locale whose ssn() is one) in any note.
        self.fiscal = self.faker if language == "it" else Faker("it_IT")
        self.fiscal.seed_instance(seed)
        days = self.rng.randint(1, 365)
        self.shift = dt.timedelta(days=days if self.rng.random() < 0.5 else -days)
        self.seen: dict[tuple[str, str], str] = {}
        self.writers: dict[str, Callable[[str], str]] = {
            "NAME": self._name,
            "DATE": self._date,
            "AGE": lambda _: "90+",
            "CODICE_FISCALE": lambda original: _same_case(original, self.fiscal.ssn()),
            "TESSERA_SANITARIA": lambda _: _luhn_complete("80380" + _digits(self.rng, 14)),
            "PHONE": lambda _: self.faker.phone_number(),
            "EMAIL": lambda _: self.faker.email(safe=True),
            "URL": lambda _: f"https://www.{self.faker.domain_word()}.example.org/",
            "ADDRESS": lambda _: self.faker.street_address(),
        }

    def __call__(self, label: str, original: str) -> str:
        key = (label, " ".join(original.casefold().split()))
        if key not in self.seen:
            self.seen[key] = self.writers.get(label, self._same_shape)(original)
        return self.seen[key]

    def _name(self, original: str) -> str:
        # Token by token, so that a surname alone later in the note gets the same surrogate.
        tokens = re.findall(r"\w+|\W+", original)
        words = [t for t in tokens if t[0].isalnum() or t[0] == "_"]
        out = []
        for token in tokens:
            if not (token[0].isalnum() or token[0] == "_"):
                out.append(token)
                continue
            key = ("NAME:token", token.casefold())
            if key not in self.seen:
                first = len(words) > 1 and token is words[0]
                if len(token) <= 2:  # an initial ("M.") stays an initial
                    made = self.rng.choice("ABCDEFGILMNOPRSTV")[: len(token)]
                else:
                    made = self.faker.first_name() if first else self.faker.last_name()
                self.seen[key] = made
            out.append(_same_case(token, self.seen[key]))
        return "".join(out)

    def _date(self, original: str) -> str:
        shifted = _shift_date(original.strip(), self.shift, self.language)
        if shifted is not None:
            return shifted
        fake = self.faker.date_between(start_date="-30y", end_date="today")
        return fake.strftime("%d/%m/%Y" if self.language == "it" else "%m/%d/%Y")

    def _same_shape(self, original: str) -> str:
        return "".join(
            str(self.rng.randrange(10))
            if c.isdigit()
            else _same_case(c, self.rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ"))
            if c.isalpha()
            else c
            for c in original
        )


def _same_case(original: str, made: str) -> str:
    if original.isupper():
        return made.upper()
    if original.islower():
        return made.lower()
    return made


def _digits(rng: random.Random, n: int) -> str:
    return "".join(str(rng.randrange(10)) for _ in range(n))


def _luhn_complete(digits: str) -> str:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return digits + str((10 - total % 10) % 10)


def _shift_date(text: str, shift: dt.timedelta, language: str) -> str | None:
    numeric = _NUMERIC_DATE.match(text)
    if numeric:
        a, sep, b, c = numeric.groups()
        try:
            if len(a) == 4:
                moved = dt.date(int(a), int(b), int(c)) + shift
                return f"{moved.year:04d}{sep}{moved.month:0{len(b)}d}{sep}{moved.day:0{len(c)}d}"
            year = int(c) + (2000 if len(c) == 2 and int(c) < 50 else 1900 if len(c) == 2 else 0)
            day_first = language == "it" or int(a) > 12
            day, month = (int(a), int(b)) if day_first else (int(b), int(a))
            moved = dt.date(year, month, day) + shift
        except ValueError:
            return None
        first, second = (moved.day, moved.month) if day_first else (moved.month, moved.day)
        shown_year = f"{moved.year % 100:02d}" if len(c) == 2 else f"{moved.year:04d}"
        return f"{first:0{len(a)}d}{sep}{second:0{len(b)}d}{sep}{shown_year}"
    named = _NAMED_DATE.match(text)
    if not named:
        return None
    g = named.groups()
    day_s, month_s, dot, year_s = (g[0], g[1], g[2], g[3]) if g[0] else (g[6], g[4], g[5], g[9])
    found = _month(month_s)
    if found is None:
        return None
    lang, abbreviated, month = found
    try:
        moved = dt.date(int(year_s), month, int(day_s)) + shift
    except ValueError:
        return None
    names = _MONTHS[lang][1 if abbreviated else 0]
    name = names[moved.month - 1]
    name = name.capitalize() if month_s[0].isupper() else name
    if g[0]:
        return f"{moved.day} {name}{dot} {moved.year}"
    suffix = _ordinal(moved.day) if g[7] else ""
    return f"{name}{dot} {moved.day}{suffix}{g[8]} {moved.year}"


def _month(word: str) -> tuple[str, bool, int] | None:
    lowered = word.casefold()
    for lang, (full, short) in _MONTHS.items():
        if lowered in full:
            return lang, False, full.index(lowered) + 1
        if lowered in short or (lowered == "sept" and lang == "en"):
            return lang, True, short.index(lowered[:3]) + 1
    return None


def _ordinal(day: int) -> str:
    return "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
