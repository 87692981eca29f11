"""A form value against its evidence (app/tasks/agreement.py): the numbers and dates a note's
text states, in the notations Italian and English notes use."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest

from app.tasks.agreement import date_agrees, dates_in, number_agrees, numbers_in


@pytest.mark.parametrize(
    ("text", "means"),
    [
        ("FR 28 atti/min", {28}),
        ("TC 36,5 °C", {Decimal("36.5")}),
        ("GB 8.450/mmc", {8450, Decimal("8.45")}),  # Italian thousands, or an English decimal
        ("WBC 8,450", {8450, Decimal("8.45")}),
        ("1,234.5 mL", {Decimal("1234.5")}),
        ("1.234,5 mL", {Decimal("1234.5")}),
        ("PA 150/90", {150, 90}),
        ("SpO2 86%", {86}),
        ("K+ 3.2", {Decimal("3.2")}),
        ("temp -2", {-2}),
        ("12 000 UI", {12000}),
    ],
)
def test_numbers_are_read_every_way_their_notation_allows(text: str, means: set[Decimal | int]) -> None:
    assert {Decimal(str(m)) for m in means} <= numbers_in(text)


def test_digits_inside_words_are_not_numbers() -> None:
    assert numbers_in("SpO2 in aria, ST in V4-V6, COVID19") == set()


def test_a_value_that_its_evidence_does_not_state_disagrees() -> None:
    assert number_agrees(28, ["FR 28 atti/min"])
    assert not number_agrees(31, ["FR 28 atti/min"])
    assert number_agrees(36.5, ["TC 36,5 °C"])
    assert not number_agrees(36, ["TC 36,5 °C"])
    assert number_agrees(8450, ["GB 8.450/mmc"])


def test_a_declared_unit_conversion_counts() -> None:
    assert number_agrees(1000, ["amoxicillina 1 g ogni 8 ore"], {"g": 1000})
    assert not number_agrees(1000, ["amoxicillina 1 g ogni 8 ore"])
    assert not number_agrees(1000, ["1 mg"], {"g": 1000})  # "g" only as a unit of its own


@pytest.mark.parametrize(
    ("text", "day"),
    [
        ("accesso del 12/03/2024", datetime.date(2024, 3, 12)),
        ("il 8.10.2019", datetime.date(2019, 10, 8)),
        ("il 08/10/19", datetime.date(2019, 10, 8)),
        ("on 10/08/2019", datetime.date(2019, 10, 8)),  # month first, American
        ("2019-10-08", datetime.date(2019, 10, 8)),
        ("l'8 ottobre 2019", datetime.date(2019, 10, 8)),
        ("1° gennaio 2020", datetime.date(2020, 1, 1)),
        ("on Oct 8, 2019", datetime.date(2019, 10, 8)),
        ("8 October 2019", datetime.date(2019, 10, 8)),
    ],
)
def test_dates_are_read_in_the_notations_notes_use(text: str, day: datetime.date) -> None:
    assert day in dates_in(text)


def test_a_date_that_its_evidence_does_not_state_disagrees() -> None:
    assert date_agrees("2024-03-12", ["Accesso in PS del 12/03/2024"])
    assert not date_agrees("2024-03-13", ["Accesso in PS del 12/03/2024"])
    assert not date_agrees("2024-02-30", ["30/02/2024"])  # no such day, however written


def test_numbers_written_as_words_count() -> None:
    assert number_agrees(6, ["da sei giorni"]) and number_agrees(3, ["for three days"])
    assert not number_agrees(5, ["da sei giorni"])
    assert number_agrees(23, ["da ventitré giorni"]) and number_agrees(21, ["twenty-one days"])
    assert Decimal(1) not in numbers_in("una volta al giorno")  # an article, not a count


def test_evidence_that_states_no_number_or_date_cannot_contradict_the_value() -> None:
    assert number_agrees(0, ["insorta nella notte"])
    assert number_agrees(1, ["dal giorno precedente"])
    assert date_agrees("2024-03-12", ["accesso odierno"])
    assert not date_agrees("2024-03-12", ["accesso dell'11/03/2024"])


def test_a_conversion_reads_the_number_before_its_unit_in_digits_or_words() -> None:
    weeks = {"settimana": 7, "settimane": 7}
    assert number_agrees(14, ["da 2 settimane"], weeks) and number_agrees(21, ["da circa tre settimane"], weeks)
    assert number_agrees(7, ["da una settimana"], weeks)  # no number stated: nothing contradicts 7
    assert not number_agrees(14, ["da 3 settimane"], weeks)
