"""Regular expressions that match exactly the JSON numbers and ISO dates a bounded schema admits.

A number is written in its one shortest form: no leading zeros, no `-0`, no exponent, a
fraction only when needed and without trailing zeros (`37.5`, `38`, `0.05`). That is also
what `json.dumps` writes for the value (see `canonical_number`), so training targets and
the grammar agree on every digit, and the decoder has exactly one way to write each value.
Every value inside the bounds can be written; nothing outside them can.
"""

from __future__ import annotations

import calendar
from decimal import Decimal
from typing import Any, TypeGuard

Digits = list[tuple[int, int]]  # one (low, high) digit class per position

MAX_DECIMALS = 4  # beyond 4, Python writes small floats with an exponent (1e-05)
MAX_MAGNITUDE = 10**12


def is_number(value: Any) -> TypeGuard[int | float]:
    """A JSON number: bool is an int subclass in Python, `true` is not the number 1."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def scaled(value: float | int, decimals: int) -> int | None:
    """`value * 10**decimals` as an int, or None when the value has more decimals than that."""
    exact = Decimal(str(value)) * (Decimal(10) ** decimals)
    return int(exact) if exact == exact.to_integral_value() else None


def canonical_number(value: float | int, decimals: int) -> int | float:
    """The value as the grammar writes it: an int when whole, else rounded to `decimals`."""
    rounded = round(float(value), decimals)
    return int(rounded) if rounded.is_integer() else rounded


def format_number(value: float | int, decimals: int) -> str:
    """The shortest form of a value with at most `decimals` decimals (what the grammar admits)."""
    text = f"{float(value):.{decimals}f}" if decimals else str(int(value))
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _fixed_width(lo: str, hi: str) -> list[Digits]:
    """Digit-class sequences matching exactly the digit strings of len(lo) between lo and hi
    (leading zeros allowed); lo <= hi, same length."""
    if not lo:
        return [[]]
    a, b, rest_lo, rest_hi = int(lo[0]), int(hi[0]), lo[1:], hi[1:]
    if a == b:
        return [[(a, a), *seq] for seq in _fixed_width(rest_lo, rest_hi)]
    n = len(rest_lo)
    head: list[Digits] = []
    tail: list[Digits] = []
    first, last = a, b
    if rest_lo != "0" * n:
        head = [[(a, a), *seq] for seq in _fixed_width(rest_lo, "9" * n)]
        first = a + 1
    if rest_hi != "9" * n:
        tail = [[(b, b), *seq] for seq in _fixed_width("0" * n, rest_hi)]
        last = b - 1
    middle = [[(first, last), *[(0, 9)] * n]] if first <= last else []
    return head + middle + tail


def _integers(lo: int, hi: int) -> list[Digits]:
    """Sequences for the non-negative integers lo..hi written without leading zeros."""
    out: list[Digits] = []
    for width in range(len(str(lo)), len(str(hi)) + 1):
        a = max(lo, 10 ** (width - 1) if width > 1 else 0)
        b = min(hi, 10**width - 1)
        if a <= b:
            out += _fixed_width(str(a), str(b))
    return out


def _class(lo: int, hi: int) -> str:
    # Never \d: in llguidance's regexes (Rust's) it is any Unicode digit (２, ٧, ໑), which the
    # grammar would then admit and JSON cannot parse.
    if lo == hi:
        return str(lo)
    return f"[{lo}-{hi}]"


def _regex(seqs: list[Digits]) -> str:
    alternatives = ["".join(_class(lo, hi) for lo, hi in seq) for seq in seqs]
    return alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"


def _fraction(lo: int, hi: int, decimals: int) -> str:
    """The optional fraction (`.` and 1..decimals digits, the last not 0) whose value, padded to
    `decimals` digits, lies in lo..hi; empty fraction included when lo is 0."""
    alternatives: list[str] = []
    for width in range(1, decimals + 1):
        step = 10 ** (decimals - width)
        a, b = -(-lo // step), hi // step  # values of `width` digits whose padding is in range
        if a > b:
            continue
        seqs = []
        for seq in _fixed_width(str(a).zfill(width), str(b).zfill(width)):
            low, high = seq[-1]
            if high >= 1:  # a trailing zero would be the shorter form's padding
                seqs.append([*seq[:-1], (max(low, 1), high)])
        if seqs:
            alternatives.append(_regex(seqs))
    if not alternatives:
        return ""
    body = alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"
    return f"(?:\\.{body})" + ("?" if lo == 0 else "")


def _non_negative(lo: int, hi: int, decimals: int) -> list[str]:
    """Alternatives for the values lo..hi (scaled by 10**decimals, lo >= 0)."""
    if decimals == 0:
        return [_regex(_integers(lo, hi))]
    scale = 10**decimals
    (whole_lo, frac_lo), (whole_hi, frac_hi) = divmod(lo, scale), divmod(hi, scale)
    if whole_lo == whole_hi:
        return [str(whole_lo) + _fraction(frac_lo, frac_hi, decimals)]
    out = [str(whole_lo) + _fraction(frac_lo, scale - 1, decimals)]
    if whole_lo + 1 <= whole_hi - 1:
        out.append(_regex(_integers(whole_lo + 1, whole_hi - 1)) + _fraction(0, scale - 1, decimals))
    out.append(str(whole_hi) + _fraction(0, frac_hi, decimals))
    return out


def number_regex(minimum: float | int, maximum: float | int, decimals: int = 0) -> str:
    """A regex matching exactly the shortest forms of the values in [minimum, maximum] that have
    at most `decimals` decimals. The bounds must themselves have at most `decimals` decimals."""
    lo, hi = scaled(minimum, decimals), scaled(maximum, decimals)
    if lo is None or hi is None or lo > hi:
        raise ValueError(f"bad bounds [{minimum}, {maximum}] for {decimals} decimals")
    alternatives: list[str] = []
    if lo < 0:  # negative values: "-" and a magnitude of at least one step (no "-0")
        alternatives += ["-" + a for a in _non_negative(max(1, -hi), -lo, decimals)]
    if hi >= 0:
        alternatives += _non_negative(max(lo, 0), hi, decimals)
    return alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"


def number_width(minimum: float | int, maximum: float | int, decimals: int = 0) -> int:
    """The most characters a value in the bounds takes in its shortest form."""
    widths = [len(str(int(abs(bound)))) + (bound < 0) for bound in (minimum, maximum)]
    return max(widths) + (decimals + 1 if decimals else 0)


def date_regex(first_year: int, last_year: int) -> str:
    """A regex matching exactly the valid ISO 8601 dates (YYYY-MM-DD) of those years: months of
    30 and 31 days, February of 28, and the 29th only in leap years."""
    if not 1000 <= first_year <= last_year <= 9999:
        raise ValueError(f"bad year range {first_year}..{last_year}")
    year = _regex(_integers(first_year, last_year))
    month_day = (
        r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
        r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
        r"|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    )
    leap = [str(y) for y in range(first_year, last_year + 1) if calendar.isleap(y)]
    out = f"{year}-{month_day}"
    if leap:
        out = f"(?:{out}|(?:{'|'.join(leap)})-02-29)"
    return out
