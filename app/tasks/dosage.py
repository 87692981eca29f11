"""A medication's dose, frequency and duration spans read as FHIR R4 Dosage parts.

Only the shapes that can be read without guessing become structure (`1 g` -> 1 g in UCUM,
`ogni 8 ore` -> every 8 h, `due volte al giorno` -> twice a day, `per 7 giorni` -> bounded to
7 days); anything else stays in `Dosage.text`, which always carries the spans as the note
wrote them. Digits are read in the notation of the task's language (`25.000 UI` is 25000 in
Italian, `50,000 units` in English), numbers in words as agreement.py reads them.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from app.tasks.agreement import numbers_in

UCUM = "http://unitsofmeasure.org"

# The units of doses in clinical notes, as UCUM codes; None: a unit UCUM has no code for
# (a tablet), kept as the Quantity's unit text only.
DOSE_UNITS: dict[str, str | None] = {
    "mg": "mg",
    "g": "g",
    "mcg": "ug",
    "µg": "ug",
    "ug": "ug",
    "mcg/h": "ug/h",
    "ml": "mL",
    "mL": "mL",
    "ui": "[iU]",
    "UI": "[iU]",
    "IU": "[iU]",
    "units": "[iU]",
    "unità": "[iU]",
    "mEq": "meq",
    "gtt": "[drp]",
    "gocce": "[drp]",
    "drops": "[drp]",
    "compressa": None,
    "compresse": None,
    "tablet": None,
    "tablets": None,
    "puff": None,
    "capsula": None,
    "capsule": None,
    "capsules": None,
}
_DOSE = re.compile(r"^\s*(\d[\d.,]*)\s*([^\W\d][\w/µ]*)\s*$")

_HOURS = r"(?:ore|ora|hours?|h)"
_EVERY_N = re.compile(rf"^(?:ogni|every|q)\s*(.+?)\s*{_HOURS}$", re.IGNORECASE)
_PERIOD = r"(?:al\s+|a\s+|per\s+|each\s+|/\s*)?(giorno|die|day|daily|settimana|week|weekly)"
_TIMES_A = re.compile(rf"^(.+?)\s*(?:volt[ae]|times?)\s*{_PERIOD}$", re.IGNORECASE)
_ADVERB_A = re.compile(rf"^(once|twice|thrice)\s+{_PERIOD}$", re.IGNORECASE)
_ADVERBS = {"once": 1, "twice": 2, "thrice": 3}
_PERIODS = {"giorno": "d", "die": "d", "day": "d", "daily": "d", "settimana": "wk", "week": "wk", "weekly": "wk"}
_WHEN = {
    "la mattina": "MORN",
    "al mattino": "MORN",
    "in the morning": "MORN",
    "la sera": "EVE",
    "alla sera": "EVE",
    "in the evening": "EVE",
    "at night": "NIGHT",
    "at bedtime": "HS",
    "ai pasti": "C",
    "with meals": "C",
}
_AS_NEEDED = ("al bisogno", "as needed", "prn", "if needed", "se necessario")
_DURATION = re.compile(r"^(?:per|for)\s+(?:altri|another|complessivi|a total of)?\s*(.+?)\s*(\w+)$", re.IGNORECASE)
_DURATION_UNITS = {
    "giorno": "d",
    "giorni": "d",
    "day": "d",
    "days": "d",
    "settimana": "wk",
    "settimane": "wk",
    "week": "wk",
    "weeks": "wk",
    "mese": "mo",
    "mesi": "mo",
    "month": "mo",
    "months": "mo",
}


_DIGITS = re.compile(r"^\d{1,3}(?:([.,])\d{3})*(?:([.,])\d+)?$|^\d+(?:[.,]\d+)?$")
_ONE = {"una", "un", "uno", "one", "a", "an"}


def _number(text: str, lang: str) -> Decimal | None:
    """A positive number written in digits (in the note's language's notation) or in words."""
    text = text.strip()
    if _DIGITS.match(text):
        group, decimal = (".", ",") if lang == "it" else (",", ".")
        readings = {Decimal(text.replace(group, "").replace(decimal, "."))} if text.count(decimal) <= 1 else set()
    elif text.lower() in _ONE:
        readings = {Decimal(1)}
    else:
        readings = numbers_in(text)
    if len(readings) != 1:
        return None
    (value,) = readings
    return value if value > 0 else None


def _plain(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def dose_quantity(text: str, lang: str) -> dict[str, Any] | None:
    """`1 g` as a FHIR Quantity (UCUM where the unit has a code); None if not that shape."""
    match = _DOSE.match(text)
    if match is None or match.group(2) not in DOSE_UNITS:
        return None
    value = _number(match.group(1), lang)
    if value is None:
        return None
    unit = match.group(2)
    quantity: dict[str, Any] = {"value": _plain(value), "unit": unit}
    code = DOSE_UNITS[unit]
    if code is not None:
        quantity |= {"system": UCUM, "code": code}
    return quantity


def frequency(text: str, lang: str) -> dict[str, Any]:
    """A frequency span as Dosage fields: `timing.repeat` or `asNeededBoolean`; {} if unread."""
    phrase = " ".join(text.lower().split())
    if phrase in _AS_NEEDED:
        return {"asNeededBoolean": True}
    if phrase in _WHEN:
        return {"timing": {"repeat": {"when": [_WHEN[phrase]]}}}
    every = _EVERY_N.match(phrase)
    if every is not None:
        hours = _number(every.group(1), lang)
        if hours is not None:
            return {"timing": {"repeat": {"frequency": 1, "period": _plain(hours), "periodUnit": "h"}}}
        return {}
    adverb = _ADVERB_A.match(phrase)
    times = _TIMES_A.match(phrase)
    count: Decimal | None
    if adverb is not None:  # "once daily", "twice a day"
        count, period = Decimal(_ADVERBS[adverb.group(1)]), _PERIODS[adverb.group(2)]
    elif times is not None:  # "tre volte al giorno", "1 volta/die", "three times a day"
        count, period = _number(times.group(1), lang), _PERIODS[times.group(2)]
    elif phrase in ("daily", "weekly"):
        count, period = Decimal(1), _PERIODS[phrase]
    else:
        return {}
    if count is None or count != count.to_integral_value():
        return {}
    return {"timing": {"repeat": {"frequency": int(count), "period": 1, "periodUnit": period}}}


def duration(text: str, lang: str) -> dict[str, Any]:
    """A duration span as `timing.repeat.boundsDuration`; {} if unread."""
    match = _DURATION.match(" ".join(text.split()))
    if match is None or match.group(2).lower() not in _DURATION_UNITS:
        return {}
    value = _number(match.group(1), lang)
    if value is None:
        return {}
    code = _DURATION_UNITS[match.group(2).lower()]
    bounds = {"value": _plain(value), "unit": match.group(2), "system": UCUM, "code": code}
    return {"timing": {"repeat": {"boundsDuration": bounds}}}
