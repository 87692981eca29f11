"""Gold dates: only the YYYY-MM-DD a form's date items are written in (the schema's and grammar's form)."""

from __future__ import annotations

import datetime

import pytest

from app.tasks.gold import iso_date
from app.tasks.types.base import BadRecord
from tests.conftest import shipped_task


def test_a_calendar_date_in_yyyy_mm_dd_is_read() -> None:
    assert iso_date("2024-03-12") == datetime.date(2024, 3, 12)


@pytest.mark.parametrize(
    "text",
    [
        "2024-W10-1",  # an ISO week date: Python 3.11's date.fromisoformat reads it as 2024-03-04
        "20240312",  # the basic format, also read by date.fromisoformat
        "2024W101",
        "2024-02-30",  # the right shape, but no such day
        "2024-3-12",
        "2024-03-12 ",
        "２０２４-03-12",  # digits, but not ASCII ones
        "",
    ],
)
def test_any_other_form_of_a_date_is_refused(text: str) -> None:
    assert iso_date(text) is None


@pytest.mark.parametrize("value", ["2024-W10-1", "20240312", "2024-03-12"])
def test_a_gold_form_date_must_be_written_as_the_grammar_writes_it(value: str) -> None:
    task = shipped_task("crf-it-dyspnea")
    text = f"Accesso del {value}. Dispnea."
    record = {
        "id": "n",
        "text": text,
        "items": [{"name": "visit_date", "value": value, "evidence": [{"start": 12, "end": 12 + len(value)}]}],
    }
    if value == "2024-03-12":
        _, gold = task.kind.parse_gold(task, record)
        assert gold["items"]["visit_date"]["value"] == "2024-03-12"
    else:
        with pytest.raises(BadRecord, match="must be an ISO date YYYY-MM-DD"):
            task.kind.parse_gold(task, record)
