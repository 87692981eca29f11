from __future__ import annotations

import itertools
import random
import re
from collections import Counter
from datetime import date

import pytest

from app.tasks.grounding import aligned_occurrences, piece_boundaries
from app.tasks.spec import FormItemSpec
from app.tasks.types.base import FormNote, FormValue
from app.training.synthetic.dyspnea import (
    DISPOSITIONS,
    DYSPNEA_ITEMS,
    MAX_EVIDENCE_CHARS,
    MAX_NOTE_CHARS,
    MIN_NOTE_CHARS,
    OXYGEN_DEVICES,
    XRAY_FINDINGS,
    compose_dyspnea_note,
)
from tests.conftest import shipped_task

SEEDS = (0, 1, 7, 2024)
PER_SEED = 100  # 400 notes


def _item_facts(item: FormItemSpec) -> tuple[str, str, object]:
    """(name, kind, bounds) of one shipped item: what the generator's values must respect."""
    if item.kind == "choice":
        return item.name, "multiple" if item.multiple else "choice", tuple(item.options or ())
    if item.kind == "integer":
        return item.name, "integer", (int(item.min or 0), int(item.max or 0))
    if item.kind == "decimal":
        return item.name, "decimal", (item.min, item.max, item.decimals)
    return item.name, item.kind, None


# The shipped form `crf-it-dyspnea`: the notes are written for it.
FORM = tuple(_item_facts(item) for item in shipped_task("crf-it-dyspnea").manifest.items)
KIND = {name: kind for name, kind, _ in FORM}
BOUNDS = {name: bounds for name, _, bounds in FORM}

# Words that must be in an evidence for it to state its item at all.
TOPIC = {
    "dyspnea_at_rest": r"riposo|sforz",
    "orthopnea": r"ortopnea",
    "chest_pain": r"dolore toracico",
    "fever": r"febbr",
    "cough": r"tosse",
    "leg_edema": r"edemi",
    "oxygen_therapy": r"ossigenoterapia|o2-terapia",
    "diuretic_given": r"furosemide|diuretic",
    "bronchodilator_given": r"salbutamolo|broncodilatator",
    "known_copd": r"bpco|broncopneumopatia cronica ostruttiva",
    "known_heart_failure": r"scompenso cardiaco|insufficienza cardiaca",
}
NEGATION = re.compile(r"\b(non|nega|né|assenza)\b|solo da sforzo")

# What in an evidence tells each option of a choice item.
OPTION_WORDS: dict[str, dict[str, str]] = {
    "sex": {"M": r"\buomo\b|maschile|\bsig\.(?!ra)|sesso m\b", "F": r"\bdonna\b|femminile|\bsig\.ra\b|sesso f\b"},
    "dyspnea_onset": {"improvviso": r"improvvis|brusc", "graduale": r"gradual|ingravescente"},
    "oxygen_device": {
        "occhialini nasali": r"occhialini",
        "maschera di Venturi": r"venturi",
        "maschera con reservoir": r"reservoir",
        "CPAP": r"\bcpap\b",
        "NIV": r"\bniv\b|ventilazione non invasiva",
    },
    "chest_xray": {
        "negativo": r"negativo|norma|senza alterazioni",
        "congestione polmonare": r"congestione",
        "versamento pleurico": r"versamento",
        "addensamento": r"addensamento",
        "pneumotorace": r"pneumotorace",
        "cardiomegalia": r"cardiomegalia|ombra cardiaca",
    },
    "disposition": {
        "dimissione a domicilio": r"domicilio",
        "ricovero in reparto": r"ricover[oa] in (medicina|cardiologia|pneumologia|geriatria|chirurgia)",
        "ricovero in terapia intensiva": r"terapia intensiva|rianimazione|utic",
        "osservazione breve intensiva": r"\bobi\b|osservazione breve",
        "trasferimento ad altro ospedale": r"trasferimento (ad|presso) altro",
    },
}
MONTHS = "gennaio febbraio marzo aprile maggio giugno luglio agosto settembre ottobre novembre dicembre".split()
WORD_NUMBERS = {"un": 1, "una": 1, "due": 2, "tre": 3, "quattro": 4, "cinque": 5, "sei": 6, "dieci": 10}
UNIT_DAYS = {"giorno": 1, "giorni": 1, "gg": 1, "settimana": 7, "settimane": 7, "mese": 30, "mesi": 30}


def compose_many(seed: int, n: int) -> list[FormNote]:
    rng = random.Random(seed)
    return [compose_dyspnea_note(rng) for _ in range(n)]


@pytest.fixture(scope="module")
def notes() -> list[FormNote]:
    return [note for seed in SEEDS for note in compose_many(seed, PER_SEED)]


def values(notes: list[FormNote], name: str) -> list[FormValue]:
    return [note.values[name] for note in notes if name in note.values]


def italian(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}".replace(".", ",")


def days_stated(text: str) -> int | None:
    """How many days ago an Italian phrase says the dyspnea began."""
    t = text.lower()
    if re.search(r"stamane|mattina|notte|\bore\b", t):
        return 0
    if re.search(r"ieri|giorno precedente", t):
        return 1
    match = re.search(r"(\d+|un|una|due|tre|quattro|cinque|sei|dieci) (giorn[oi]|gg|settiman[ae]|mes[ei])\b", t)
    if match is None:
        return None
    count = int(match[1]) if match[1].isdigit() else WORD_NUMBERS[match[1]]
    return count * UNIT_DAYS[match[2]]


def test_form_items_are_exported_in_form_order() -> None:
    assert tuple(name for name, _, _ in FORM) == DYSPNEA_ITEMS
    assert BOUNDS["oxygen_device"] == OXYGEN_DEVICES
    assert BOUNDS["chest_xray"] == XRAY_FINDINGS
    assert BOUNDS["disposition"] == DISPOSITIONS


def test_values_name_form_items_in_form_order(notes: list[FormNote]) -> None:
    for note in notes:
        names = list(note.values)
        assert names == [name for name in DYSPNEA_ITEMS if name in note.values]


def test_evidence_offsets_hold_its_text(notes: list[FormNote]) -> None:
    for note in notes:
        for fv in note.values.values():
            assert note.text[fv.evidence.start : fv.evidence.end] == fv.evidence.text
            assert fv.evidence.label == ""
            assert fv.evidence.flags == frozenset()


def test_evidence_is_stripped_single_line_short_and_piece_aligned(notes: list[FormNote]) -> None:
    for note in notes:
        bounds = piece_boundaries(note.text)
        for name, fv in note.values.items():
            text = fv.evidence.text
            assert text and text == text.strip(), name
            assert "\n" not in text, name
            assert len(text) <= MAX_EVIDENCE_CHARS, name
            assert fv.evidence.start in bounds and fv.evidence.end in bounds, (name, text)


def test_evidence_is_the_first_aligned_occurrence_of_its_text(notes: list[FormNote]) -> None:
    # The service grounds an evidence string on its first aligned occurrence in the note.
    for note in notes:
        bounds = piece_boundaries(note.text)
        for name, fv in note.values.items():
            assert aligned_occurrences(note.text, fv.evidence.text, bounds)[0] == fv.evidence.start, name


def test_evidence_of_different_items_do_not_overlap(notes: list[FormNote]) -> None:
    for note in notes:
        spans = sorted((fv.evidence.start, fv.evidence.end) for fv in note.values.values())
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start


def test_values_respect_the_form_kinds_and_bounds(notes: list[FormNote]) -> None:
    for note in notes:
        for name, fv in note.values.items():
            value, kind, bounds = fv.value, KIND[name], BOUNDS[name]
            if kind == "date":
                assert isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value)
                assert 2015 <= date.fromisoformat(value).year <= 2030
            elif kind == "integer":
                assert isinstance(bounds, tuple)
                assert type(value) is int and bounds[0] <= value <= bounds[1], (name, value)
            elif kind == "decimal":
                assert isinstance(bounds, tuple)
                low, high, decimals = bounds
                assert type(value) is float and low <= value <= high, (name, value)
                assert round(value, decimals) == value, (name, value)
            elif kind == "boolean":
                assert type(value) is bool
            elif kind == "choice":
                assert isinstance(bounds, tuple) and value in bounds, (name, value)
            elif kind == "multiple":
                assert isinstance(bounds, tuple) and isinstance(value, tuple) and value
                assert list(value) == [option for option in bounds if option in value], value
            else:
                assert isinstance(value, str) and 0 < len(value) <= MAX_EVIDENCE_CHARS


def test_numbers_are_written_in_their_evidence_in_italian_format(notes: list[FormNote]) -> None:
    for note in notes:
        for name, fv in note.values.items():
            text, value = fv.evidence.text, fv.value
            if name in ("age", "spo2", "resp_rate", "heart_rate"):
                assert re.search(rf"(?<![\d,]){value}(?![\d,])", text), (name, text)
            elif name == "systolic_bp":
                assert re.search(rf"(?<!\d){value}/\d", text), text
            elif name == "nt_probnp":
                assert re.search(rf"(?<!\d){value}(?!\d)", re.sub(r"(?<=\d)\.(?=\d{3})", "", text)), text
                assert "NT-proBNP" in text
            elif name in ("temperature", "ph"):
                assert isinstance(value, float)
                assert italian(value, 1 if name == "temperature" else 2) in text, text
            elif name == "oxygen_flow":
                assert isinstance(value, float)
                written = str(int(value)) if value.is_integer() else italian(value, 1)
                assert re.search(rf"(?<![\d,]){written} [lL]/min", text), text


def test_visit_date_evidence_writes_the_date(notes: list[FormNote]) -> None:
    for fv in values(notes, "visit_date"):
        assert isinstance(fv.value, str)
        d = date.fromisoformat(fv.value)
        forms = {
            f"{d.day:02d}/{d.month:02d}/{d.year}",
            f"{d.day}.{d.month}.{d.year}",
            f"{d.day} {MONTHS[d.month - 1]} {d.year}",
        }
        assert fv.evidence.text in forms


def test_dyspnea_days_evidence_says_how_long_ago(notes: list[FormNote]) -> None:
    for fv in values(notes, "dyspnea_days"):
        assert days_stated(fv.evidence.text) == fv.value, fv.evidence.text


def test_boolean_evidence_names_the_item_and_is_negative_exactly_when_false(notes: list[FormNote]) -> None:
    for note in notes:
        for name, fv in note.values.items():
            if KIND[name] != "boolean":
                continue
            text = fv.evidence.text.lower()
            assert re.search(TOPIC[name], text), (name, text)
            assert bool(NEGATION.search(text)) == (fv.value is False), (name, text)


def test_choice_evidence_tells_its_option(notes: list[FormNote]) -> None:
    for name, options in OPTION_WORDS.items():
        for fv in values(notes, name):
            text = fv.evidence.text.lower()
            told = tuple(option for option, words in options.items() if re.search(words, text))
            expected = fv.value if isinstance(fv.value, tuple) else (fv.value,)
            assert told == expected, (name, fv.evidence.text)


def test_working_diagnosis_is_its_evidence_verbatim(notes: list[FormNote]) -> None:
    for fv in values(notes, "working_diagnosis"):
        assert fv.value == fv.evidence.text


def test_oxygen_details_only_come_with_oxygen_therapy_given(notes: list[FormNote]) -> None:
    for note in notes:
        if "oxygen_flow" in note.values or "oxygen_device" in note.values:
            assert note.values["oxygen_therapy"].value is True
        device = note.values.get("oxygen_device")
        if device is not None and device.value in ("CPAP", "NIV"):
            assert "oxygen_flow" not in note.values
    assert any(
        "oxygen_therapy" in n.values and len({"oxygen_flow", "oxygen_device"} & n.values.keys()) == 0 for n in notes
    )


def test_note_length_is_within_bounds(notes: list[FormNote]) -> None:
    for note in notes:
        assert MIN_NOTE_CHARS <= len(note.text) <= MAX_NOTE_CHARS


def test_every_item_is_stated_in_some_notes_and_unknown_in_others(notes: list[FormNote]) -> None:
    counts = Counter(name for note in notes for name in note.values)
    for name in DYSPNEA_ITEMS:
        assert 0.1 * len(notes) <= counts[name] <= 0.9 * len(notes), (name, counts[name])


def test_every_option_and_both_booleans_occur(notes: list[FormNote]) -> None:
    for name, kind, bounds in FORM:
        seen: set[object] = set()
        for fv in values(notes, name):
            seen |= set(fv.value) if isinstance(fv.value, tuple) else {fv.value}
        if kind in ("choice", "multiple"):
            assert isinstance(bounds, tuple)
            assert seen == set(bounds), (name, set(bounds) - seen)
        elif kind == "boolean":
            assert seen == {True, False}, name


def test_same_seed_gives_the_same_notes() -> None:
    assert compose_many(5, 30) == compose_many(5, 30)


def test_different_seeds_give_different_notes() -> None:
    first, second = compose_many(5, 30), compose_many(6, 30)
    assert len({n.text for n in first} & {n.text for n in second}) == 0
