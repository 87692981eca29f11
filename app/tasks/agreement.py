"""Whether a form value agrees with its evidence: the number or date the model wrote must be one
the evidence states, in any of the notations clinical notes use.

A note's numbers are read every way they can be: `8.450` is 8450 in Italian and 8.45 in English,
`36,5` is 36.5, `1,234.5` is 1234.5; a date `8.10.2019` or `08/10/19` is the 8th of October or
the 10th of August (day first in Italian, month first in American English), `8 ottobre 2019`
and `Oct 8, 2019` are spelled out. Numbers written as words count too (`da sei giorni`, `three days`), up
to thirty-one. A value agrees when it is one of the readings (numbers after the item's declared
unit conversions), or when its evidence states no number (or no date) at all: `insorta nella
notte` for 0 days cannot contradict it. Reading generously means a mismatch found is a real
one: a value its evidence states otherwise.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation

# A number as notes write it: digits with optional group separators (. , thin or no-break
# space, apostrophe) and one decimal separator; a sign where it is one.
_NUMBER = re.compile(
    r"(?<![\w.,])[-−+]?\d{1,3}(?:[.,'\u202f\u00a0 ]\d{3})+(?:[.,]\d+)?(?!\w)"  # grouped
    r"|(?<![\w.,])[-−+]?\d+(?:[.,]\d+)?(?!\w)"  # plain
)
_DATE_NUMERIC = re.compile(r"(?<!\d)(\d{1,4})([./-])(\d{1,2})\2(\d{2,4})(?!\d)")
IT_MONTHS = tuple(
    "gennaio febbraio marzo aprile maggio giugno luglio agosto settembre ottobre novembre dicembre".split()
)
EN_MONTHS = tuple("january february march april may june july august september october november december".split())
_ABBREVIATIONS = (
    "gen feb mar apr mag giu lug ago set ott nov dic".split(),
    "jan feb mar apr may jun jul aug sep oct nov dec".split(),
)
_MONTHS = {
    name.lower(): number
    for names in (IT_MONTHS, EN_MONTHS, *_ABBREVIATIONS)
    for number, name in enumerate(names, start=1)
}
_MONTH_NAMES = "|".join(sorted(_MONTHS, key=len, reverse=True))
_DAY_MONTH_YEAR = re.compile(rf"(?<!\d)(\d{{1,2}})(?:°|º)?\s+({_MONTH_NAMES})\.?\s+(\d{{4}})(?!\d)", re.IGNORECASE)
_MONTH_DAY_YEAR = re.compile(rf"\b({_MONTH_NAMES})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})(?!\d)", re.IGNORECASE)


_IT_WORDS = (
    "zero uno due tre quattro cinque sei sette otto nove dieci undici dodici tredici quattordici quindici sedici "
    "diciassette diciotto diciannove venti ventuno ventidue ventitré ventitre ventiquattro venticinque ventisei "
    "ventisette ventotto ventinove trenta trentuno"
).split()
_IT_VALUES = [*range(23), 23, *range(23, 32)]  # "ventitré" and "ventitre" are both 23
_EN_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty twenty-one twenty-two twenty-three twenty-four twenty-five twenty-six "
    "twenty-seven twenty-eight twenty-nine thirty thirty-one"
).split()
# Articles ("un", "una", "a") are left out: "una volta al giorno" states no count of days.
_NUMBER_WORDS = {**dict(zip(_IT_WORDS, _IT_VALUES, strict=True)), **{w: i for i, w in enumerate(_EN_WORDS)}}
_WORD = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)?")


def _decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def _readings(token: str) -> set[Decimal]:
    """Every number a written token can mean."""
    sign = "-" if token[0] in "-−" else ""
    digits = token.lstrip("-−+")
    readings: set[Decimal] = set()
    separators = [c for c in digits if not c.isdigit()]
    if not separators:
        readings.add(Decimal(sign + digits))
        return readings
    kinds = set(separators)
    last = max(digits.rfind(c) for c in kinds)
    groups = re.split(r"[.,'\u202f\u00a0 ]", digits)
    grouped = all(len(g) == 3 for g in groups[1:]) and 1 <= len(groups[0]) <= 3
    if len(kinds) == 1 and len(separators) == 1:
        mark = separators[0]
        if mark in ".,":  # a decimal mark, or (three digits after it) a thousands separator
            readings.add(Decimal(sign + digits.replace(mark, ".")))
        if grouped:
            readings.add(Decimal(sign + re.sub(r"\D", "", digits)))
        return {r for r in readings if r is not None}
    # Several separators: the last one is the decimal mark when it differs from the others.
    head, tail = digits[:last], digits[last + 1 :]
    if digits[last] in ".," and digits[last] not in head and len(set(c for c in head if not c.isdigit())) <= 1:
        value = _decimal(sign + re.sub(r"\D", "", head) + "." + tail)
        if value is not None:
            readings.add(value)
    if grouped:
        readings.add(Decimal(sign + re.sub(r"\D", "", digits)))
    return readings


def numbers_in(text: str) -> set[Decimal]:
    """Every number the text may state, each read every way its notation allows."""
    found: set[Decimal] = set()
    for match in _NUMBER.finditer(text):
        found |= _readings(match.group(0).strip())
    for word in _WORD.findall(text):
        found |= _word_number(word)
    return found


def _word_number(word: str) -> set[Decimal]:
    value = _NUMBER_WORDS.get(word.lower())
    return set() if value is None else {Decimal(value)}


def _year(text: str) -> int:
    year = int(text)
    return year + (2000 if year < 70 else 1900) if len(text) == 2 else year


def _date(year: int, month: int, day: int) -> datetime.date | None:
    try:
        return datetime.date(year, month, day)
    except ValueError:
        return None


def dates_in(text: str) -> set[datetime.date]:
    """Every calendar date the text may state (numeric dates read day first and month first)."""
    found: set[datetime.date | None] = set()
    for a, _, b, c in _DATE_NUMERIC.findall(text):
        if len(a) == 4:  # 2019-10-08
            found.add(_date(int(a), int(b), int(c)))
        elif len(c) in (2, 4):
            found |= {_date(_year(c), int(b), int(a)), _date(_year(c), int(a), int(b))}
    for day, month, year in _DAY_MONTH_YEAR.findall(text):
        found.add(_date(int(year), _MONTHS[month.lower()], int(day)))
    for month, day, year in _MONTH_DAY_YEAR.findall(text):
        found.add(_date(int(year), _MONTHS[month.lower()], int(day)))
    return {d for d in found if d is not None}


def _converted(text: str, conversions: Mapping[str, float]) -> set[Decimal]:
    """The numbers `text` writes before a declared unit, in the item's unit."""
    found: set[Decimal] = set()
    for unit, factor in conversions.items():
        # The number right before the unit: digits, or a number word.
        pattern = rf"(?:([-−+]?\d[\d.,'\u202f\u00a0]*)\s*|([^\W\d_]+(?:-[^\W\d_]+)?)\s+){re.escape(unit)}(?![^\W\d_])"
        for match in re.finditer(pattern, text, re.IGNORECASE):
            digits, word = match.groups()
            readings = _readings(digits.strip()) if digits else _word_number(word)
            found |= {reading * Decimal(str(factor)) for reading in readings}
    return found


def stated_numbers(text: str, conversions: Mapping[str, float] | None = None) -> set[Decimal]:
    """Every number a text may state, in every reading and through the declared conversions."""
    return numbers_in(text) | _converted(text, conversions or {})


def number_agrees(value: float | int, evidence: Iterable[str], conversions: Mapping[str, float] | None = None) -> bool:
    """Whether `value` is a number its evidence states, directly or through a declared unit
    conversion (`{"g": 1000}`: the evidence says grams, the item holds milligrams; the factor
    applies to a number the evidence writes with that unit after it)."""
    target = Decimal(str(value))
    texts = list(evidence)
    stated = [numbers_in(text) for text in texts]
    if not any(stated):
        return True  # nothing stated to contradict it
    return any(target in numbers for numbers in stated) or any(
        target in _converted(text, conversions or {}) for text in texts
    )


def date_agrees(value: str, evidence: Iterable[str]) -> bool:
    """Whether the ISO date `value` is a date its evidence states."""
    try:
        day = datetime.date.fromisoformat(value)
    except ValueError:
        return False
    stated = [dates_in(text) for text in evidence]
    return not any(stated) or any(day in dates for dates in stated)
