"""Notes with invented PHI planted at known offsets, for the deid task (training, evaluation,
bench/deid.py). Italian and English.

Every identifier is made up: names, towns and streets by Faker (it_IT, en_US) seeded from the
note's generator, codici fiscali by python-codicefiscale from those invented names (so the
check character holds), phone numbers, record and card numbers from random digits. Clinical
sentences around them carry numbers that are not PHI (doses, readings, ages under 90), so
precision is measured too. The same seed gives the same notes (Faker is pinned).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from app.tasks.types.base import NoteSpan, PhiNote

_IT_MONTHS = "gennaio febbraio marzo aprile maggio giugno luglio agosto settembre ottobre novembre dicembre".split()
_EN_MONTHS = "January February March April May June July August September October November December".split()

# Sentences: literal text and {SLOT} placeholders; a slot's value is planted with its label.
_IT_PHI = (
    "Paziente {NAME}, nato il {DATE} a {TOWN}.",
    "Paziente: {NAME}; data di nascita {DATE}.",
    "Codice fiscale {CODICE_FISCALE}.",
    "CF: {CODICE_FISCALE}, tessera sanitaria n. {TESSERA_SANITARIA}.",
    "Residente in {ADDRESS}.",
    "Recapito telefonico {PHONE}, e-mail {EMAIL}.",
    "Contattare la figlia {NAME} al numero {PHONE}.",
    "Ricoverato il {DATE}, cartella clinica n. {RECORD_ID}.",
    "Dimesso in data {DATE}.",
    "Paziente di {AGE} anni, vive con la moglie.",
    "Referti consultabili su {URL}.",
    "Medico curante: dott. {NAME}, email {EMAIL}.",
    "Nosologico {RECORD_ID}; accesso in PS il {DATE}.",
    "Visita di controllo prevista per il {DATE} presso l'ambulatorio di {TOWN}.",
)
_IT_CLINICAL = (
    "Riferisce dispnea da 3 giorni e tosse produttiva.",
    "PA 130/80 mmHg, FC 88 bpm, SpO2 94% in aria ambiente.",
    "In terapia con amoxicillina 1 g ogni 8 ore per 7 giorni.",
    "Creatinina 1.2 mg/dl, emoglobina 11.8 g/dl.",
    "Paziente di 74 anni con BPCO e ipertensione arteriosa.",
    "Nega dolore toracico. Apiretico.",
    "RX torace: non addensamenti parenchimali.",
    "Si consiglia controllo ematochimico tra 15 giorni.",
)
_EN_PHI = (
    "Patient {NAME}, born {DATE} in {TOWN}.",
    "Name: {NAME}. Date of birth: {DATE}.",
    "Lives at {ADDRESS}.",
    "Phone {PHONE}, e-mail {EMAIL}.",
    "Contact his daughter {NAME} at {PHONE}.",
    "Admitted on {DATE}, MRN: {RECORD_ID}.",
    "Discharged on {DATE}.",
    "She is a {AGE}-year-old woman living alone.",
    "Reports available at {URL}.",
    "Primary care physician: Dr. {NAME}, email {EMAIL}.",
    "Italian fiscal code {CODICE_FISCALE} on file.",
    "Medical record number {RECORD_ID}; seen in the ED on {DATE}.",
    "Follow-up visit on {DATE} at the {TOWN} clinic.",
)
_EN_CLINICAL = (
    "Reports shortness of breath for 3 days and productive cough.",
    "BP 130/80 mmHg, HR 88 bpm, SpO2 94% on room air.",
    "Started on amoxicillin 1 g every 8 hours for 7 days.",
    "Creatinine 1.2 mg/dL, hemoglobin 11.8 g/dL.",
    "A 74-year-old man with COPD and hypertension.",
    "Denies chest pain. Afebrile.",
    "Chest X-ray: no consolidation.",
    "Repeat blood tests in 2 weeks.",
)


@dataclass
class _Writer:
    parts: list[str] = field(default_factory=list)
    spans: list[NoteSpan] = field(default_factory=list)
    length: int = 0

    def write(self, text: str, label: str = "") -> None:
        if label:
            self.spans.append(NoteSpan(self.length, self.length + len(text), text, label))
        self.parts.append(text)
        self.length += len(text)


def compose_phi_note(language: str, rng: random.Random) -> PhiNote:
    from faker import Faker

    faker = Faker("it_IT" if language == "it" else "en_US")
    faker.seed_instance(rng.getrandbits(32))
    phi, clinical = (_IT_PHI, _IT_CLINICAL) if language == "it" else (_EN_PHI, _EN_CLINICAL)
    sentences = rng.sample(phi, rng.randint(4, 7)) + rng.sample(clinical, rng.randint(2, 4))
    rng.shuffle(sentences)
    values = _Values(language, rng, faker)
    out = _Writer()
    for n, sentence in enumerate(sentences):
        if n:
            out.write("\n" if rng.random() < 0.3 else " ")
        rest = sentence
        while "{" in rest:
            before, _, tail = rest.partition("{")
            slot, _, rest = tail.partition("}")
            out.write(before)
            value = values.make(slot)
            out.write(value, "ADDRESS" if slot == "TOWN" else slot)
        out.write(rest)
    return PhiNote("".join(out.parts), tuple(out.spans))


class _Values:
    def __init__(self, language: str, rng: random.Random, faker: object):
        self.language, self.rng, self.faker = language, rng, faker
        self.makers: dict[str, Callable[[], str]] = {
            "NAME": self._name,
            "DATE": self._date,
            "TOWN": lambda: str(self._f("city")),
            "ADDRESS": lambda: f"{self._f('street_address')}, {self._f('city')}",
            "CODICE_FISCALE": self._codice_fiscale,
            "TESSERA_SANITARIA": lambda: "80380" + self._digits(15),
            "PHONE": self._phone,
            "EMAIL": lambda: f"{self._f('user_name')}@{self._f('domain_word')}.{rng.choice(('it', 'com', 'org'))}",
            "URL": lambda: (
                f"https://www.{self._f('domain_word')}.{rng.choice(('it', 'com'))}/referti/{self._digits(6)}"
            ),
            "RECORD_ID": self._record,
            "AGE": lambda: str(rng.randint(90, 104)),
        }

    def make(self, slot: str) -> str:
        return self.makers[slot]()

    def _f(self, method: str) -> object:
        return getattr(self.faker, method)()

    def _digits(self, n: int) -> str:
        return "".join(str(self.rng.randrange(10)) for _ in range(n))

    def _name(self) -> str:
        first, last = self._f("first_name"), self._f("last_name")
        return f"{first} {last}" if self.rng.random() < 0.7 else str(last)

    def _birth(self) -> dt.date:
        return dt.date(1925, 1, 1) + dt.timedelta(days=self.rng.randrange(365 * 80))

    def _date(self) -> str:
        day = self._birth() if self.rng.random() < 0.3 else dt.date(2019, 1, 1) + dt.timedelta(self.rng.randrange(2500))
        form = self.rng.randrange(4)
        if form == 0:
            return day.strftime("%d/%m/%Y") if self.language == "it" else day.strftime("%m/%d/%Y")
        if form == 1:
            return day.isoformat()
        if self.language == "it":
            return f"{day.day} {_IT_MONTHS[day.month - 1]} {day.year}" if form == 2 else day.strftime("%d.%m.%Y")
        return (
            f"{_EN_MONTHS[day.month - 1]} {day.day}, {day.year}"
            if form == 2
            else f"{day.day} {_EN_MONTHS[day.month - 1]} {day.year}"
        )

    def _codice_fiscale(self) -> str:
        from codicefiscale import codicefiscale

        gender: Literal["M", "F"] = self.rng.choice(("M", "F"))
        birth = self._birth()
        town = self.rng.choice(("Roma", "Milano", "Napoli", "Torino", "Bologna", "Firenze", "Bari", "Padova"))
        return str(
            codicefiscale.encode(
                lastname=str(self._f("last_name")),
                firstname=str(self._f("first_name")),
                gender=gender,
                birthdate=birth.strftime("%d/%m/%Y"),
                birthplace=town,
            )
        )

    def _phone(self) -> str:
        rng, d = self.rng, self._digits
        if self.language == "it":
            return rng.choice(
                (f"+39 0{d(1)} {d(4)} {d(4)}", f"3{d(2)} {d(3)} {d(4)}", f"0{d(2)} {d(7)}", f"+39 3{d(2)}{d(7)}")
            )
        area = f"{rng.randint(2, 9)}{d(2)}"
        return rng.choice((f"({area}) 555-{d(4)}", f"{area}-{rng.randint(2, 9)}{d(2)}-{d(4)}", f"+1 {area} 555 {d(4)}"))

    def _record(self) -> str:
        return self.rng.choice(
            (f"{self.rng.randint(2019, 2025)}/{self._digits(6)}", f"A{self._digits(7)}", self._digits(8))
        )
