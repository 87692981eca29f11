"""Writing one synthetic Italian emergency-department note about dyspnea, with the case-report
form it fills (the shipped task `crf-it-dyspnea`).

One invented case is drawn first (a scenario, its severity and measurements that fit them);
the note then states a random subset of the form's items about it, each at most once, part
by part: a part records where each item's evidence lies while its text is written, so
`text[start:end] == evidence.text` by construction. An item the note does not state is
absent from the form (unknown). Everything is invented; deterministic: all randomness comes
from the caller's `random.Random`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

from app.tasks.agreement import IT_MONTHS
from app.tasks.grounding import aligned_occurrences, piece_boundaries
from app.tasks.types.base import FormNote, FormValue, NoteSpan

DYSPNEA_ITEMS: tuple[str, ...] = (
    "visit_date",
    "age",
    "sex",
    "dyspnea_onset",
    "dyspnea_days",
    "dyspnea_at_rest",
    "orthopnea",
    "chest_pain",
    "fever",
    "cough",
    "leg_edema",
    "spo2",
    "resp_rate",
    "heart_rate",
    "systolic_bp",
    "temperature",
    "oxygen_therapy",
    "oxygen_flow",
    "oxygen_device",
    "ph",
    "nt_probnp",
    "chest_xray",
    "diuretic_given",
    "bronchodilator_given",
    "known_copd",
    "known_heart_failure",
    "working_diagnosis",
    "disposition",
)

OXYGEN_DEVICES = ("occhialini nasali", "maschera di Venturi", "maschera con reservoir", "CPAP", "NIV")
XRAY_FINDINGS = (
    "negativo",
    "congestione polmonare",
    "versamento pleurico",
    "addensamento",
    "pneumotorace",
    "cardiomegalia",
)
DISPOSITIONS = (
    "dimissione a domicilio",
    "ricovero in reparto",
    "ricovero in terapia intensiva",
    "osservazione breve intensiva",
    "trasferimento ad altro ospedale",
)

MIN_NOTE_CHARS = 300
MAX_NOTE_CHARS = 1400
MAX_EVIDENCE_CHARS = 120

# How often a note states an item it could state: high enough to teach the wording, low
# enough that "unknown" is a common answer for every item.
_P_STATED: dict[str, float] = {
    "visit_date": 0.75,
    "age": 0.75,
    "sex": 0.65,
    "dyspnea_onset": 0.6,
    "dyspnea_days": 0.6,
    "dyspnea_at_rest": 0.55,
    "orthopnea": 0.55,
    "chest_pain": 0.65,
    "fever": 0.6,
    "cough": 0.6,
    "leg_edema": 0.6,
    "spo2": 0.8,
    "resp_rate": 0.6,
    "heart_rate": 0.75,
    "systolic_bp": 0.7,
    "temperature": 0.65,
    "oxygen_therapy": 0.75,
    "oxygen_flow": 0.75,
    "oxygen_device": 0.8,
    "ph": 0.6,
    "nt_probnp": 0.55,
    "chest_xray": 0.7,
    "diuretic_given": 0.6,
    "bronchodilator_given": 0.6,
    "known_copd": 0.6,
    "known_heart_failure": 0.6,
    "working_diagnosis": 0.75,
    "disposition": 0.75,
}

Value = str | bool | int | float | tuple[str, ...]

# --------------------------------------------------------------------------- the case


@dataclass(frozen=True)
class _Case:
    """What is true of the invented patient; the note states part of it."""

    scenario: str
    severity: int  # 0 mild, 1 moderate, 2 severe
    visit: date
    age: int
    sex: str
    onset: str
    days: int
    at_rest: bool
    orthopnea: bool
    chest_pain: bool
    fever: bool
    cough: bool
    leg_edema: bool
    spo2: int
    resp_rate: int
    heart_rate: int
    systolic_bp: int
    diastolic_bp: int
    temperature: int  # tenths of °C
    oxygen: bool
    device: str | None
    flow: int | None  # tenths of L/min
    ph: int  # hundredths
    nt_probnp: int
    xray: tuple[str, ...]
    diuretic: bool
    bronchodilator: bool
    copd: bool
    heart_failure: bool
    side: str  # destro / sinistro, for a pneumonia or a pneumothorax
    diagnosis: str
    disposition: str


_SCENARIOS = ("hf", "copd", "pneumonia", "pe", "ptx", "asthma", "anxiety")
_SCENARIO_WEIGHTS = (30, 20, 20, 10, 7, 6, 7)

# Per scenario: P(true) of orthopnea, chest pain, fever, cough, leg edema, sudden onset.
_SYMPTOM_ODDS: dict[str, tuple[float, float, float, float, float, float]] = {
    "hf": (0.8, 0.2, 0.1, 0.3, 0.75, 0.3),
    "copd": (0.3, 0.1, 0.35, 0.85, 0.15, 0.15),
    "pneumonia": (0.1, 0.25, 0.85, 0.9, 0.1, 0.1),
    "pe": (0.1, 0.55, 0.1, 0.2, 0.3, 0.85),
    "ptx": (0.05, 0.85, 0.05, 0.15, 0.05, 0.95),
    "asthma": (0.2, 0.1, 0.1, 0.7, 0.05, 0.5),
    "anxiety": (0.05, 0.3, 0.05, 0.05, 0.05, 0.8),
}

_DIAGNOSES: dict[str, tuple[str, ...]] = {
    "hf": (
        "scompenso cardiaco acuto",
        "edema polmonare acuto",
        "insufficienza cardiaca acuta",
        "scompenso cardiaco acuto in fibrillazione atriale ad elevata risposta ventricolare",
    ),
    "copd": (
        "riacutizzazione di BPCO",
        "BPCO riacutizzata",
        "insufficienza respiratoria acuta su cronica in BPCO riacutizzata",
    ),
    "pneumonia": ("polmonite basale {side}", "polmonite comunitaria", "infezione delle basse vie respiratorie"),
    "pe": ("embolia polmonare", "sospetta embolia polmonare", "tromboembolia polmonare acuta"),
    "ptx": ("pneumotorace spontaneo {side}",),
    "asthma": ("crisi asmatica", "riacutizzazione asmatica"),
    "anxiety": ("dispnea su base ansiosa", "sindrome da iperventilazione"),
}

_FEMININE_SIDE = {"destro": "destra", "sinistro": "sinistra"}


def _chance(rng: random.Random, p: float) -> bool:
    return rng.random() < p


def _visit_date(rng: random.Random) -> date:
    first, last = date(2015, 1, 1), date(2030, 12, 31)
    return first + timedelta(days=rng.randint(0, (last - first).days))


def _age(rng: random.Random, scenario: str) -> int:
    if scenario in ("asthma", "anxiety", "ptx"):
        return rng.randint(18, 55)
    return rng.randint(45, 101)


def _days(rng: random.Random, onset: str, scenario: str) -> int:
    if onset == "improvviso":
        return rng.choice((0, 0, 0, 1, 1, 2, 3))
    if scenario == "ptx":
        return rng.choice((1, 2))
    return rng.choice((1, 2, 3, 3, 4, 5, 6, 7, 7, 10, 14, 21, 30))


def _severity(rng: random.Random, scenario: str) -> int:
    if scenario == "anxiety":
        return 0
    if scenario == "ptx":
        return rng.choice((0, 1, 1))
    return rng.choices((0, 1, 2), weights=(30, 40, 30))[0]


def _vitals(rng: random.Random, scenario: str, severity: int, fever: bool) -> tuple[int, int, int, int, int, int]:
    """SpO2, respiratory rate, heart rate, systolic and diastolic pressure, temperature."""
    spo2 = rng.randint(*((94, 99), (87, 93), (72, 88))[severity])
    resp = rng.randint(*((14, 22), (20, 28), (26, 40))[severity])
    heart = rng.randint(*((62, 100), (85, 120), (100, 150))[severity])
    if scenario == "anxiety":
        spo2, resp = rng.randint(96, 100), rng.randint(22, 32)
    if scenario == "hf" and severity == 2:
        systolic = rng.choice((rng.randint(160, 220), rng.randint(80, 105)))
    else:
        systolic = rng.randint(100, 175)
    diastolic = rng.randint(45, min(115, systolic - 30))
    if fever and _chance(rng, 0.6):
        temperature = rng.randint(375, 395)
    else:
        temperature = rng.randint(358, 373)
    return spo2, resp, heart, systolic, diastolic, temperature


def _oxygen(rng: random.Random, scenario: str, severity: int, spo2: int) -> tuple[bool, str | None, int | None]:
    if not (spo2 < 92 or (scenario != "anxiety" and _chance(rng, 0.12))):
        return False, None, None
    if severity == 2:
        device = rng.choice(
            {
                "hf": ("CPAP", "CPAP", "NIV", "maschera con reservoir"),
                "copd": ("NIV", "NIV", "maschera di Venturi"),
            }.get(scenario, ("maschera con reservoir", "maschera con reservoir", "CPAP", "NIV"))
        )
    elif severity == 1:
        device = rng.choice(
            ("maschera di Venturi", "maschera di Venturi", "occhialini nasali")
            if scenario == "copd"
            else ("occhialini nasali", "occhialini nasali", "maschera di Venturi", "maschera con reservoir")
        )
    else:
        device = "occhialini nasali"
    flow = {
        "occhialini nasali": lambda: 5 * rng.randint(1, 8),
        "maschera di Venturi": lambda: 10 * rng.choice((4, 6, 8, 10, 12, 15)),
        "maschera con reservoir": lambda: 10 * rng.randint(10, 15),
    }.get(device)
    return True, device, flow() if flow else None


def _ph(rng: random.Random, scenario: str, severity: int) -> int:
    if scenario in ("anxiety", "asthma") and severity < 2:
        return rng.randint(744, 752)
    if severity == 2:
        return rng.randint(718, 732) if scenario == "copd" else rng.randint(722, 738)
    return rng.randint(733 + 3 * (1 - severity), 746)


def _xray(rng: random.Random, scenario: str) -> tuple[str, ...]:
    """The chest X-ray findings, in the form's option order."""
    found = _findings(rng, scenario)
    return tuple(f for f in XRAY_FINDINGS if f in found)


def _findings(rng: random.Random, scenario: str) -> tuple[str, ...]:
    if scenario == "hf":
        found = [f for f in ("congestione polmonare", "versamento pleurico", "cardiomegalia") if _chance(rng, 0.6)]
        return tuple(found) or ("congestione polmonare",)
    if scenario == "pneumonia":
        return ("addensamento", "versamento pleurico") if _chance(rng, 0.3) else ("addensamento",)
    if scenario == "pe" and _chance(rng, 0.3):
        return ("versamento pleurico",)
    if scenario == "ptx":
        return ("pneumotorace",)
    if scenario == "copd" and _chance(rng, 0.15):
        return ("cardiomegalia",)
    return ("negativo",)


def _disposition(rng: random.Random, scenario: str, severity: int) -> str:
    if scenario == "anxiety":
        return "dimissione a domicilio"
    weights = ((55, 5, 0, 40, 0), (0, 60, 5, 25, 10), (0, 35, 50, 0, 15))[severity]
    return rng.choices(DISPOSITIONS, weights=weights)[0]


def _case(rng: random.Random) -> _Case:
    scenario = rng.choices(_SCENARIOS, weights=_SCENARIO_WEIGHTS)[0]
    severity = _severity(rng, scenario)
    orthopnea, chest_pain, fever, cough, edema, sudden = (_chance(rng, p) for p in _SYMPTOM_ODDS[scenario])
    onset = "improvviso" if sudden else "graduale"
    spo2, resp, heart, systolic, diastolic, temperature = _vitals(rng, scenario, severity, fever)
    oxygen, device, flow = _oxygen(rng, scenario, severity, spo2)
    side = rng.choice(("destro", "sinistro"))
    heart_failure = _chance(rng, 0.6 if scenario == "hf" else 0.12)
    copd = scenario == "copd" or _chance(rng, 0.12)
    diagnosis = rng.choice(_DIAGNOSES[scenario]).format(side=side if scenario == "ptx" else _FEMININE_SIDE[side])
    return _Case(
        scenario=scenario,
        severity=severity,
        visit=_visit_date(rng),
        age=_age(rng, scenario),
        sex=rng.choice(("M", "F")),
        onset=onset,
        days=_days(rng, onset, scenario),
        at_rest=_chance(rng, (0.15, 0.6, 1.0)[severity]),
        orthopnea=orthopnea,
        chest_pain=chest_pain,
        fever=fever,
        cough=cough,
        leg_edema=edema,
        spo2=spo2,
        resp_rate=resp,
        heart_rate=heart,
        systolic_bp=systolic,
        diastolic_bp=diastolic,
        temperature=temperature,
        oxygen=oxygen,
        device=device,
        flow=flow,
        ph=_ph(rng, scenario, severity),
        nt_probnp=rng.randint(1200, 35000) if scenario == "hf" else rng.randint(20, 3000 if scenario == "pe" else 900),
        xray=_xray(rng, scenario),
        diuretic=_chance(rng, 0.9 if scenario == "hf" else 0.05),
        bronchodilator=_chance(rng, {"copd": 0.95, "asthma": 1.0, "pneumonia": 0.3, "hf": 0.15}.get(scenario, 0.05)),
        copd=copd,
        heart_failure=heart_failure,
        side=side,
        diagnosis=diagnosis,
        disposition=_disposition(rng, scenario, severity),
    )


# --------------------------------------------------------------------------- writing parts


@dataclass
class _Part:
    """One sentence or line; evidence offsets are its own. A filler states no item and may
    be left out to keep the note within its length bounds."""

    text: str = ""
    items: list[tuple[str, Value, int, int]] = field(default_factory=list)
    filler: bool = False

    def add(self, piece: str) -> _Part:
        self.text += piece
        return self

    def item(self, name: str, value: Value, piece: str) -> _Part:
        start = len(self.text)
        self.text += piece
        self.items.append((name, value, start, len(self.text)))
        return self

    def prefixed(self, prefix: str) -> _Part:
        shift = len(prefix)
        return _Part(prefix + self.text, [(n, v, s + shift, e + shift) for n, v, s, e in self.items], self.filler)


def _filler(text: str) -> _Part:
    return _Part(text, filler=True)


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _decimal(scaled: int, decimals: int) -> str:
    # Integers scaled by 10**decimals: the digits written are the value's, no float formatting.
    whole, frac = divmod(scaled, 10**decimals)
    return f"{whole},{frac:0{decimals}d}"


def _join(part: _Part, entries: Sequence[tuple[str | None, Value, str, str]]) -> None:
    """Write a list "a, b e c"; an entry is (item or None for a filler, value, evidence, tail)."""
    for i, (name, value, text, tail) in enumerate(entries):
        if i:
            part.add(" e " if i == len(entries) - 1 else ", ")
        if name is None:
            part.add(text)
        else:
            part.item(name, value, text)
        part.add(tail)


def _date_text(rng: random.Random, d: date) -> str:
    style = rng.randrange(3)
    if style == 0:
        return f"{d.day:02d}/{d.month:02d}/{d.year}"
    if style == 1:
        return f"{d.day}.{d.month}.{d.year}"
    return f"{d.day} {IT_MONTHS[d.month - 1]} {d.year}"


def _clock(rng: random.Random) -> str:
    return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"


def _header(rng: random.Random) -> _Part:
    return _Part(
        rng.choice(
            (
                "Pronto Soccorso - Verbale di accesso",
                "PRONTO SOCCORSO - VERBALE DI ACCESSO",
                "Verbale di Pronto Soccorso",
                "U.O. Pronto Soccorso e Medicina d'Urgenza - Verbale di accesso",
                "Presidio Ospedaliero - Pronto Soccorso",
            )
        )
    )


def _date_line(rng: random.Random, case: _Case, say: set[str]) -> _Part:
    triage = rng.choice(("", "", f" - Codice triage: {rng.choice(('giallo', 'arancione', 'verde', 'azzurro'))}"))
    if "visit_date" not in say:
        return _filler(f"Ora di accesso: {_clock(rng)}{triage}")
    written = _date_text(rng, case.visit)
    lead, tail = rng.choice(
        (
            ("Data accesso: ", ""),
            ("Data di accesso: ", f", ore {_clock(rng)}"),
            ("Accesso del ", f" ore {_clock(rng)}"),
            ("Data: ", ""),
        )
    )
    return _Part().add(lead).item("visit_date", case.visit.isoformat(), written).add(tail + triage)


_SURNAMES = ("Rossetti", "Ferrandi", "Colombara", "Bianchelli", "Moretto", "Galvani", "Serafini", "Lombi")


def _demographics(case: _Case, say: set[str]) -> _Part:
    """A header line: "Paziente: sesso F, età 78 anni"."""
    part = _Part("Paziente: ")
    if "sex" in say:
        part.item("sex", case.sex, f"sesso {case.sex}")
        if "age" in say:
            part.add(", ")
    if "age" in say:
        part.add("età ").item("age", case.age, f"{case.age} anni")
    return part


def _who(rng: random.Random, case: _Case, sex: bool, age: bool) -> tuple[_Part, str]:
    """The subject of the first sentence, and what joins it to "giunge in PS"."""
    male = case.sex == "M"
    years = f"{case.age} anni"
    part = _Part()
    if sex and age:
        style = rng.randrange(4)
        if style == 0:
            part.item("sex", case.sex, "Uomo" if male else "Donna").add(" di ").item("age", case.age, years)
            return part, " "
        if style == 1:
            part.add("Paziente di ").item("sex", case.sex, "sesso maschile" if male else "sesso femminile")
            part.add(", ").item("age", case.age, years)
            return part, ", "
        if style == 2:
            part.add("Il " if male else "La ").item("sex", case.sex, "sig." if male else "sig.ra")
            part.add(f" {rng.choice(_SURNAMES)}, ").item("age", case.age, years)
            return part, ", "
        part.add("Si tratta di un " if male else "Si tratta di una ").item("sex", case.sex, "uomo" if male else "donna")
        part.add(" di ").item("age", case.age, years)
        return part, " che "
    if age:
        if _chance(rng, 0.5):
            return part.add("Paziente di ").item("age", case.age, years), " "
        return part.add("Paziente di ").item("age", case.age, f"anni {case.age}"), " "
    if sex:
        style = rng.randrange(3)
        if style == 0:
            part.add("Paziente di ").item("sex", case.sex, "sesso maschile" if male else "sesso femminile")
            return part, " "
        if style == 1:
            part.add("Il " if male else "La ").item("sex", case.sex, "sig." if male else "sig.ra")
            return part.add(f" {rng.choice(_SURNAMES)}"), " "
        part.add("Si tratta di un " if male else "Si tratta di una ").item("sex", case.sex, "uomo" if male else "donna")
        return part, " che "
    return part.add(rng.choice(("Paziente", "", ""))), " "


_ONSET = {
    "improvviso": ("a insorgenza improvvisa", "a esordio improvviso", "a esordio brusco", "insorta improvvisamente"),
    "graduale": ("a insorgenza graduale", "a esordio graduale", "progressivamente ingravescente", "ingravescente"),
}
_NUMBER_WORDS = {2: "due", 3: "tre", 4: "quattro", 5: "cinque", 6: "sei", 10: "dieci"}


def _days_text(rng: random.Random, days: int, after_insorta: bool) -> str:
    if days == 0:
        if after_insorta:
            return rng.choice(("stamane", "nella notte"))
        return rng.choice(("insorta stamane", "da alcune ore", "da questa mattina", "insorta nella notte"))
    if days == 1:
        return rng.choice(("da ieri", "dal giorno precedente", "da 1 giorno"))
    weeks = {7: ("una", "1"), 14: ("due", "2"), 21: ("tre", "3")}
    if days in weeks:
        word, digit = weeks[days]
        unit = "settimana" if days == 7 else "settimane"
        return rng.choice((f"da circa {word} {unit}", f"da {digit} {unit}", f"da {days} giorni"))
    if days == 30:
        return rng.choice(("da circa un mese", "da un mese", "da 30 giorni"))
    options = [f"da {days} giorni", f"da {days} gg"]
    if days in _NUMBER_WORDS:
        options.append(f"da {_NUMBER_WORDS[days]} giorni")
    return rng.choice(options)


def _intro(rng: random.Random, case: _Case, say: set[str]) -> _Part:
    """ "Uomo di 78 anni giunge in PS per dispnea a insorgenza improvvisa, insorta stamane." """
    part, glue = _who(rng, case, "sex" in say, "age" in say)
    arrival = rng.choice(
        (
            "giunge in PS",
            "giunge in PS con mezzi propri",
            "giunge in PS tramite 118",
            "accede in PS su invio del curante",
        )
    )
    part.add((glue + arrival) if part.text else _cap(arrival))
    part.add(" per " + rng.choice(("dispnea", "dispnea", "difficoltà respiratoria")))
    onset = ""
    if "dyspnea_onset" in say:
        onset = rng.choice(_ONSET[case.onset])
        part.add(" ").item("dyspnea_onset", case.onset, onset)
    if "dyspnea_days" in say:
        days = _days_text(rng, case.days, onset.startswith("insorta"))
        part.add(", " if days.startswith("insorta") and onset else " ").item("dyspnea_days", case.days, days)
    return part.add(".")


def _at_rest(rng: random.Random, case: _Case) -> _Part:
    if case.at_rest:
        lead, text = rng.choice(
            (
                ("Riferisce ", "dispnea anche a riposo"),
                ("", "Dispnea presente anche a riposo"),
                ("", "Dispnea a riposo"),
            )
        )
    else:
        lead, text = rng.choice(
            (
                ("", "Dispnea solo da sforzo"),
                ("Lamenta ", "dispnea per sforzi lievi, non a riposo"),
                ("Riferisce ", "dispnea solo da sforzo"),
            )
        )
    return _Part(lead).item("dyspnea_at_rest", case.at_rest, text).add(".")


# Positive wording: (evidence, tail); negative wording: the words after "nega" / "non".
_SYMPTOMS_YES: dict[str, tuple[tuple[str, str], ...]] = {
    "orthopnea": (("ortopnea", ""), ("ortopnea", " (dorme con 3 cuscini)"), ("ortopnea", " notturna")),
    "chest_pain": (("dolore toracico", ""), ("dolore toracico oppressivo", ""), ("dolore toracico puntorio", "")),
    "fever": (("febbre", ""), ("febbre", " con brivido"), ("rialzo febbrile", "")),
    "cough": (("tosse produttiva", ""), ("tosse secca", ""), ("tosse", " con espettorato purulento"), ("tosse", "")),
}
_SYMPTOMS_NO = {"orthopnea": "ortopnea", "chest_pain": "dolore toracico", "fever": "febbre", "cough": "tosse"}


def _symptoms(rng: random.Random, case: _Case, say: set[str]) -> list[_Part]:
    """ "Riferisce tosse produttiva e ortopnea." and "Non febbre né dolore toracico." """
    names = [n for n in _SYMPTOMS_NO if n in say]
    rng.shuffle(names)
    truth = {"orthopnea": case.orthopnea, "chest_pain": case.chest_pain, "fever": case.fever, "cough": case.cough}
    parts = []
    yes = [n for n in names if truth[n]]
    if yes:
        part = _Part(rng.choice(("Riferisce ", "Lamenta ", "Associata a ")))
        _join(part, [(n, True, *rng.choice(_SYMPTOMS_YES[n])) for n in yes])
        parts.append(part.add("."))
    no = [n for n in names if not truth[n]]
    if no:
        part = _Part()
        lead = rng.choice(("Nega", "Non"))
        for i, name in enumerate(no):
            if i == 0:
                part.item(name, False, f"{lead} {_SYMPTOMS_NO[name]}")
            elif lead == "Non" and _chance(rng, 0.6):
                part.add(" ").item(name, False, f"né {_SYMPTOMS_NO[name]}")
            else:
                part.add(", ").item(name, False, f"{rng.choice(('nega', 'non'))} {_SYMPTOMS_NO[name]}")
        parts.append(part.add("."))
    return parts


_COMORBIDITIES = (
    "ipertensione arteriosa",
    "diabete mellito tipo 2",
    "fibrillazione atriale permanente",
    "cardiopatia ischemica",
    "insufficienza renale cronica",
    "dislipidemia",
    "obesità",
    "ipotiroidismo",
    "pregresso ictus ischemico",
)
_HISTORY_YES: dict[str, tuple[tuple[str, str], ...]] = {
    "known_copd": (("BPCO", ""), ("BPCO", " in terapia inalatoria"), ("broncopneumopatia cronica ostruttiva", "")),
    "known_heart_failure": (
        ("scompenso cardiaco cronico", ""),
        ("scompenso cardiaco", " con FE ridotta"),
        ("insufficienza cardiaca cronica", ""),
    ),
}
_HISTORY_NO = {"known_copd": "BPCO", "known_heart_failure": "scompenso cardiaco"}
_KNOWN = {"known_copd": "nota", "known_heart_failure": "noto"}


def _history(rng: random.Random, case: _Case, say: set[str]) -> _Part | None:
    """ "APR: ipertensione arteriosa, BPCO e dislipidemia; non storia di scompenso cardiaco." """
    truth = {"known_copd": case.copd, "known_heart_failure": case.heart_failure}
    names = [n for n in truth if n in say]
    entries: list[tuple[str | None, Value, str, str]] = [
        (None, "", c, "") for c in rng.sample(_COMORBIDITIES, rng.randint(0, 3))
    ]
    if case.scenario == "asthma":
        entries.append((None, "", "asma bronchiale", ""))
    entries += [(n, True, *rng.choice(_HISTORY_YES[n])) for n in names if truth[n]]
    no = [n for n in names if not truth[n]]
    if not entries and not no:
        return None
    rng.shuffle(entries)
    part = _Part(rng.choice(("APR: ", "In anamnesi: ", "Anamnesi patologica remota: ")))
    _join(part, entries)
    storia = True
    for i, name in enumerate(no):
        noun = _HISTORY_NO[name]
        if i == 0:
            storia = _chance(rng, 0.6)
            words = f"non storia di {noun}" if storia else f"non {noun} {_KNOWN[name]}"
            part.add("; " if entries else "").item(name, False, words)
        elif storia:
            part.add(" ").item(name, False, f"né di {noun}")
        else:
            part.add(", ").item(name, False, f"non storia di {noun}")
    return part.add(".")


def _history_fillers(rng: random.Random, case: _Case) -> list[_Part]:
    pool = [
        "Allergie: nessuna nota.",
        "Allergia riferita a penicillina.",
        "Vive con il coniuge.",
        "Autonomia nelle attività quotidiane conservata.",
        "Vaccinazione antinfluenzale eseguita.",
        "Fumo di sigaretta (20 sigarette/die).",
        f"Precedente accesso in PS nel {case.visit.year - rng.randint(1, 6)} per analoga sintomatologia.",
    ]
    # Home therapy only where it fits the history, else it would contradict a stated "no".
    if case.heart_failure:
        pool.append("Terapia domiciliare: ramipril 5 mg, bisoprololo 2,5 mg e furosemide 25 mg.")
    if case.copd or case.scenario == "asthma":
        pool.append("Terapia domiciliare: tiotropio inalatorio e salmeterolo/fluticasone.")
    if case.scenario == "pe":
        pool.append("Recente viaggio aereo di lunga durata.")
    return [_filler(text) for text in rng.sample(pool, 2)]


_AUSCULTATION = {
    "hf": "Torace: rantoli crepitanti bibasali.",
    "copd": "Torace: sibili espiratori diffusi, espirio prolungato.",
    "pneumonia": "Torace: crepitii alla base {side_f}, ipofonesi basale.",
    "pe": "Torace: murmure vescicolare presente bilateralmente, non rumori aggiunti.",
    "ptx": "Torace: murmure vescicolare abolito all'emitorace {side}.",
    "asthma": "Torace: sibili espiratori diffusi.",
    "anxiety": "Torace: murmure vescicolare fisiologico, non rumori aggiunti.",
}


def _exam(rng: random.Random, case: _Case, say: set[str]) -> list[_Part]:
    parts = [_filler(rng.choice(("Vigile e collaborante.", "Vigile, collaborante, in lieve distress respiratorio.")))]
    side = case.side
    parts.append(_filler(_AUSCULTATION[case.scenario].format(side=side, side_f=_FEMININE_SIDE[side])))
    if "leg_edema" in say:
        if case.leg_edema:
            text = rng.choice(("Edemi declivi bilaterali", "Edemi declivi", "Edemi malleolari bilaterali"))
        else:
            text = rng.choice(("Non edemi declivi", "Assenza di edemi declivi", "Non edemi agli arti inferiori"))
        parts.append(_Part().item("leg_edema", case.leg_edema, text).add("."))
    return parts


def _vital_signs(rng: random.Random, case: _Case, say: set[str]) -> _Part | None:
    """ "PA 150/90 mmHg, FC 110 bpm, SpO2 88% in aria ambiente, TC 37,8 °C." """
    t = _decimal(case.temperature, 1)
    s, d = case.systolic_bp, case.diastolic_bp
    written: dict[str, Callable[[], tuple[str, str]]] = {
        "systolic_bp": lambda: rng.choice(
            ((f"PA {s}/{d} mmHg", ""), (f"PA {s}/{d}", ""), (f"pressione arteriosa {s}/{d} mmHg", ""))
        ),
        "heart_rate": lambda: rng.choice(
            (
                (f"FC {case.heart_rate} bpm", ""),
                (f"FC {case.heart_rate}/min", ""),
                (f"frequenza cardiaca {case.heart_rate} bpm", ""),
            )
        ),
        "resp_rate": lambda: rng.choice(
            (
                (f"FR {case.resp_rate} atti/min", ""),
                (f"FR {case.resp_rate}/min", ""),
                (f"frequenza respiratoria {case.resp_rate} atti/min", ""),
            )
        ),
        "spo2": lambda: rng.choice(
            (
                (f"SpO2 {case.spo2}%", " in aria ambiente"),
                (f"SatO2 {case.spo2}%", " in AA"),
                (f"saturazione {case.spo2}%", ""),
            )
        ),
        "temperature": lambda: rng.choice(
            ((f"TC {t} °C", ""), (f"T {t} °C", ""), (f"temperatura {t} °C", ""), (f"TC {t}°C", ""))
        ),
    }
    values: dict[str, Value] = {
        "systolic_bp": s,
        "heart_rate": case.heart_rate,
        "resp_rate": case.resp_rate,
        "spo2": case.spo2,
        "temperature": round(case.temperature / 10, 1),
    }
    names = [n for n in written if n in say]
    if not names:
        return _filler("Parametri vitali: vedi scheda di triage.") if _chance(rng, 0.3) else None
    if _chance(rng, 0.5):
        rng.shuffle(names)
    part = _Part(rng.choice(("Parametri vitali: ", "PV: ", "All'arrivo: ", "Parametri: ")))
    for i, name in enumerate(names):
        text, tail = written[name]()
        part.add(", " if i else "").item(name, values[name], text).add(tail)
    if _chance(rng, 0.3):
        part.add(", GCS 15")
    return part.add(".")


def _blood_gas(rng: random.Random, case: _Case, say: set[str]) -> _Part | None:
    if "ph" not in say:
        return _filler(rng.choice(("EGA non eseguita.", "EGA in corso."))) if _chance(rng, 0.2) else None
    hypercapnic = case.scenario == "copd" and case.severity == 2
    pco2 = rng.randint(60, 85) if hypercapnic else rng.randint(28, 46)
    po2 = rng.randint(45, 60) if case.severity == 2 else rng.randint(60, 95)
    lead = rng.choice(("EGA in aria ambiente: ", "EGA arteriosa: ", "All'EGA "))
    part = _Part(lead).item("ph", round(case.ph / 100, 2), f"pH {_decimal(case.ph, 2)}")
    return part.add(f", pCO2 {pco2} mmHg, pO2 {po2} mmHg.")


def _lab_fillers(rng: random.Random, case: _Case) -> list[str]:
    pool = [
        f"troponina hs {rng.randint(4, 90)} ng/L",
        f"creatinina {_decimal(rng.randint(6, 25), 1)} mg/dL",
        f"PCR {_decimal(rng.randint(2, 250) if case.scenario == 'pneumonia' else rng.randint(1, 30), 1)} mg/dL",
        f"Hb {_decimal(rng.randint(95, 155), 1)} g/dL",
        f"D-dimero {rng.randint(1200, 6000) if case.scenario == 'pe' else rng.randint(150, 700)} ng/mL",
    ]
    return rng.sample(pool, rng.randint(0, 3))


def _labs(rng: random.Random, case: _Case, say: set[str]) -> _Part | None:
    entries: list[tuple[str | None, Value, str, str]] = [(None, "", text, "") for text in _lab_fillers(rng, case)]
    if "nt_probnp" in say:
        n = case.nt_probnp
        number = f"{n // 1000}.{n % 1000:03d}" if n >= 1000 and _chance(rng, 0.3) else str(n)
        entries.insert(rng.randint(0, len(entries)), ("nt_probnp", n, f"NT-proBNP {number} pg/mL", ""))
    if not entries:
        return None
    part = _Part(rng.choice(("Esami ematici: ", "Agli esami ematici ", "Laboratorio: ")))
    _join(part, entries)
    part.filler = not part.items
    return part.add(".")


_XRAY_TEXT: dict[str, tuple[str, ...]] = {
    "negativo": (
        "negativo per lesioni pleuro-parenchimali in atto",
        "nei limiti della norma",
        "senza alterazioni pleuro-parenchimali di rilievo",
    ),
    "congestione polmonare": ("congestione polmonare", "segni di congestione del piccolo circolo"),
    "versamento pleurico": (
        "versamento pleurico bilaterale",
        "modesto versamento pleurico {side}",
        "falda di versamento pleurico",
    ),
    "addensamento": ("addensamento parenchimale basale {side}", "area di addensamento al lobo inferiore {side}"),
    "pneumotorace": ("pneumotorace {side}", "falda di pneumotorace apicale {side}"),
    "cardiomegalia": ("cardiomegalia", "aumento dell'ombra cardiaca"),
}


def _chest_xray(rng: random.Random, case: _Case, say: set[str]) -> _Part | None:
    """ "Rx torace: congestione polmonare e versamento pleurico bilaterale." """
    lead = rng.choice(("Rx torace: ", "Rx del torace: ", "Radiografia del torace: "))
    if "chest_xray" not in say:
        return _filler(lead + rng.choice(("in attesa di referto.", "richiesta."))) if _chance(rng, 0.2) else None
    side = case.side
    texts = [rng.choice(_XRAY_TEXT[f]).format(side=side) for f in case.xray]
    rng.shuffle(texts)
    written = texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " e " + texts[-1]
    return _Part(lead).item("chest_xray", case.xray, written).add(".")


def _ecg(rng: random.Random, case: _Case) -> _Part:
    return _filler(
        rng.choice(
            (
                "ECG: ritmo sinusale, non alterazioni acute della ripolarizzazione.",
                "ECG: fibrillazione atriale a media risposta ventricolare.",
                "ECG: tachicardia sinusale.",
                "ECG: ritmo sinusale, blocco di branca destra incompleto.",
            )
        )
    )


def _oxygen_part(rng: random.Random, case: _Case, say: set[str]) -> _Part | None:
    """ "Si avvia ossigenoterapia con occhialini nasali a 2 L/min." """
    if "oxygen_therapy" not in say:
        return None
    if not case.oxygen:
        text = rng.choice(("Non necessità di ossigenoterapia", "Non indicazione a O2-terapia"))
        return _Part().item("oxygen_therapy", False, text).add(".")
    lead, therapy = rng.choice(
        (("Si avvia ", "ossigenoterapia"), ("Avviata ", "O2-terapia"), ("Si imposta ", "ossigenoterapia"))
    )
    part = _Part(lead).item("oxygen_therapy", True, therapy)
    device = case.device if "oxygen_device" in say else None
    flow = case.flow if "oxygen_flow" in say and case.flow is not None else None
    if device in ("CPAP", "NIV"):
        part.add("; per persistente ipossiemia si posiziona ")
        written = device if device == "CPAP" or _chance(rng, 0.6) else "ventilazione non invasiva"
        part.item("oxygen_device", device, written)
        part.add(" (PEEP 8 cmH2O)" if device == "CPAP" else " (IPAP 14, EPAP 6 cmH2O)")
    elif device is not None:
        part.add(" con ").item("oxygen_device", device, device)
        if device == "maschera di Venturi" and _chance(rng, 0.5):
            part.add(f" (FiO2 {rng.choice((28, 31, 35, 40, 50))}%)")
    if flow is not None:
        number = str(flow // 10) if flow % 10 == 0 else _decimal(flow, 1)
        part.add(" a ").item("oxygen_flow", round(flow / 10, 1), f"{number} {rng.choice(('L/min', 'l/min'))}")
    return part.add(".")


_DIURETIC = ("furosemide {} mg ev", "furosemide {} mg e.v.", "furosemide {} mg in bolo ev")
_BRONCHODILATOR = (
    "aerosol con salbutamolo e ipratropio bromuro",
    "salbutamolo 5 mg per aerosol",
    "broncodilatatori per via inalatoria",
    "aerosolterapia con salbutamolo",
)
_OTHER_DRUGS = {
    "hf": ("nitroglicerina in infusione continua", "morfina 2 mg ev"),
    "copd": ("metilprednisolone 40 mg ev",),
    "asthma": ("metilprednisolone 40 mg ev", "idrocortisone 200 mg ev"),
    "pneumonia": ("ceftriaxone 2 g ev", "paracetamolo 1 g ev"),
    "pe": ("enoxaparina 6000 UI sc",),
    "ptx": ("paracetamolo 1 g ev",),
    "anxiety": ("lorazepam 1 mg per os",),
}


def _drugs(rng: random.Random, case: _Case, say: set[str]) -> list[_Part]:
    """ "Si somministra furosemide 40 mg ev e metilprednisolone 40 mg ev." and the ones not given."""
    given = {"diuretic_given": case.diuretic, "bronchodilator_given": case.bronchodilator}
    entries: list[tuple[str | None, Value, str, str]] = []
    if "diuretic_given" in say and case.diuretic:
        entries.append(("diuretic_given", True, rng.choice(_DIURETIC).format(rng.choice((20, 40, 80))), ""))
    if "bronchodilator_given" in say and case.bronchodilator:
        entries.append(("bronchodilator_given", True, rng.choice(_BRONCHODILATOR), ""))
    if _chance(rng, 0.6):
        entries.append((None, "", rng.choice(_OTHER_DRUGS[case.scenario]), ""))
    rng.shuffle(entries)
    parts = []
    if entries:
        part = _Part(rng.choice(("Si somministra ", "Si pratica terapia con ", "Somministrati: ")))
        _join(part, entries)
        part.filler = not part.items
        parts.append(part.add("."))
    no = [n for n in given if n in say and not given[n]]
    words = {"diuretic_given": "diuretici", "bronchodilator_given": "broncodilatatori"}
    if no:
        part = _Part()
        for i, name in enumerate(no):
            if i:
                part.add(" ").item(name, False, f"né {words[name]}")
            else:
                part.item(name, False, f"{rng.choice(('Non somministrati', 'Non indicazione a'))} {words[name]}")
        parts.append(part.add("."))
    return parts


def _disposition_text(rng: random.Random, case: _Case) -> str:
    ward = {
        "hf": ("Cardiologia", "Medicina Interna"),
        "copd": ("Pneumologia", "Medicina Interna"),
        "ptx": ("Chirurgia Toracica",),
    }.get(case.scenario, ("Medicina Interna", "Medicina d'Urgenza", "Geriatria"))
    intensive = ("Terapia Intensiva", "Rianimazione", "UTIC" if case.scenario == "hf" else "Terapia Intensiva")
    options = {
        "dimissione a domicilio": ("dimissione a domicilio", "si dimette a domicilio", "rientro a domicilio"),
        "ricovero in reparto": (f"ricovero in {rng.choice(ward)}", f"si ricovera in {rng.choice(ward)}"),
        "ricovero in terapia intensiva": (
            f"ricovero in {rng.choice(intensive)}",
            f"si ricovera in {rng.choice(intensive)}",
        ),
        "osservazione breve intensiva": ("si trattiene in OBI", "osservazione breve intensiva (OBI)"),
        "trasferimento ad altro ospedale": (
            "trasferimento ad altro ospedale",
            "trasferimento presso altro presidio ospedaliero",
        ),
    }
    return rng.choice(options[case.disposition])


def _outcome(rng: random.Random, case: _Case, say: set[str]) -> list[_Part]:
    """The diagnosis and the disposition: two lines, or one sentence with both."""
    dx, disp = "working_diagnosis" in say, "disposition" in say
    if dx and disp and _chance(rng, 0.3):
        written = _disposition_text(rng, case)
        part = _Part().item("disposition", case.disposition, _cap(written))
        part.add(" per " if written.startswith(("si", "ricovero", "trasferimento")) else " con diagnosi di ")
        return [part.item("working_diagnosis", case.diagnosis, case.diagnosis).add(".")]
    parts = []
    if dx:
        lead = rng.choice(("Diagnosi: ", "Diagnosi di PS: ", "Conclusioni diagnostiche: ", "Ipotesi diagnostica: "))
        parts.append(_Part(lead).item("working_diagnosis", case.diagnosis, case.diagnosis).add("."))
    if disp:
        written = _disposition_text(rng, case)
        if _chance(rng, 0.5):
            part = _Part(rng.choice(("Esito: ", "Disposizione: "))).item("disposition", case.disposition, written)
        else:
            part = _Part().item("disposition", case.disposition, _cap(written))
        stable = case.disposition != "ricovero in terapia intensiva" and _chance(rng, 0.3)
        parts.append(part.add(" in condizioni cliniche stabili." if stable else "."))
    elif _chance(rng, 0.3):
        parts.append(_filler(rng.choice(("In attesa di consulenza specialistica.", "Si rivaluta dopo terapia."))))
    return parts


def _closing(rng: random.Random) -> _Part:
    return _filler(rng.choice(("Il medico di PS.", "Firmato digitalmente.", f"Verbale chiuso alle ore {_clock(rng)}.")))


# --------------------------------------------------------------------------- the note


def _stated(rng: random.Random, case: _Case) -> set[str]:
    """Which items this note states (drawn in form order, so the draw is the same every run)."""
    say = {name for name in DYSPNEA_ITEMS if _chance(rng, _P_STATED[name])}
    # Oxygen details only beside the therapy they describe, and only what the device has.
    if "oxygen_therapy" not in say or not case.oxygen:
        say -= {"oxygen_device", "oxygen_flow"}
    if case.flow is None:
        say.discard("oxygen_flow")
    return say


def _blocks(rng: random.Random, case: _Case, say: set[str]) -> list[tuple[str, list[_Part]]]:
    """The note's lines, each a heading and its parts, in the order of a PS verbale."""
    demographics = "sex" in say or "age" in say
    demographics = demographics and _chance(rng, 0.25)
    intro_say = say - {"sex", "age"} if demographics else say
    anamnesis: list[_Part] = [_intro(rng, case, intro_say)]
    middle = _symptoms(rng, case, say)
    if "dyspnea_at_rest" in say:
        middle.insert(rng.randint(0, len(middle)), _at_rest(rng, case))
    anamnesis += middle
    history = _history(rng, case, say)
    history_fillers = _history_fillers(rng, case)
    exams = [p for p in (_blood_gas(rng, case, say), _labs(rng, case, say), _chest_xray(rng, case, say)) if p]
    if _chance(rng, 0.5):
        exams.insert(rng.randint(0, len(exams)), _ecg(rng, case))
    therapy = [p for p in [_oxygen_part(rng, case, say), *_drugs(rng, case, say)] if p]
    if _chance(rng, 0.5):
        therapy.reverse()
    vitals = _vital_signs(rng, case, say)
    exam = _exam(rng, case, say)
    blocks: list[tuple[str, list[_Part]]] = [("", [_header(rng)]), ("", [_date_line(rng, case, say)])]
    if demographics:
        blocks.append(("", [_demographics(case, say)]))
    blocks.append((rng.choice(("Anamnesi: ", "Motivo dell'accesso: ", "")), anamnesis))
    blocks.append(("", [history, *history_fillers] if history else history_fillers))
    body = [(rng.choice(("Esame obiettivo: ", "E.O.: ")), exam), ("", [vitals] if vitals else [])]
    if _chance(rng, 0.4):
        body.reverse()
    blocks += body
    blocks.append(("", exams))
    blocks.append((rng.choice(("Terapia in PS: ", "In PS: ", "Terapia: ")), therapy))
    blocks.append(("", _outcome(rng, case, say)))
    blocks.append(("", [_closing(rng)]))
    return blocks


def _fit(rng: random.Random, blocks: list[tuple[str, list[_Part]]]) -> list[tuple[str, list[_Part]]]:
    """Leave out some fillers at random, then restore or drop more until the note fits its bounds."""
    fillers = [p for _, parts in blocks for p in parts if p.filler]
    dropped = {id(p) for p in fillers if _chance(rng, 0.4)}

    def length() -> int:
        lines = [
            len(heading) + sum(len(p.text) + 1 for p in parts if id(p) not in dropped)
            for heading, parts in blocks
            if any(id(p) not in dropped for p in parts)
        ]
        return sum(lines)

    order = fillers[:]
    rng.shuffle(order)
    for part in order:
        if length() >= MIN_NOTE_CHARS + 40:
            break
        dropped.discard(id(part))
    for part in order:
        if length() <= MAX_NOTE_CHARS:
            break
        dropped.add(id(part))
    return [(heading, [p for p in parts if id(p) not in dropped]) for heading, parts in blocks]


@dataclass
class _Note:
    text: str = ""
    values: dict[str, FormValue] = field(default_factory=dict)

    def append(self, part: _Part, sep: str) -> bool:
        """Append unless an evidence would not be the first aligned occurrence of its text
        (the service grounds an evidence string there), or the note would grow too long."""
        sep = sep if self.text else ""
        text = self.text + sep + part.text
        if len(text) > MAX_NOTE_CHARS:
            return False
        shift = len(self.text) + len(sep)
        new = {
            name: FormValue(value, NoteSpan(start + shift, end + shift, text[start + shift : end + shift], ""))
            for name, value, start, end in part.items
        }
        assert not new.keys() & self.values.keys(), "an item is stated twice"
        values = {**self.values, **new}
        bounds = piece_boundaries(text)
        for value in values.values():
            if aligned_occurrences(text, value.evidence.text, bounds)[:1] != [value.evidence.start]:
                return False
        self.text, self.values = text, values
        return True


# Rarely needed: a note whose parts were mostly left out still reaches MIN_NOTE_CHARS.
_LAST_FILLERS = (
    "Si consegna copia del verbale, con le indicazioni del caso.",
    "Informati i familiari delle condizioni cliniche e del percorso diagnostico previsto.",
    "Si raccomanda di ripresentarsi in PS in caso di peggioramento della sintomatologia respiratoria.",
    "Consenso informato al trattamento dei dati acquisito secondo la normativa vigente.",
)


def compose_dyspnea_note(rng: random.Random) -> FormNote:
    """One invented Italian PS note about a patient with dyspnea, and the dyspnea form it fills."""
    case = _case(rng)
    say = _stated(rng, case)
    note = _Note()
    for heading, parts in _fit(rng, _blocks(rng, case, say)):
        first = True
        for part in parts:
            if first and heading:
                part = part.prefixed(heading)
            if note.append(part, "\n" if first else " "):
                first = False
    for text in _LAST_FILLERS:
        if len(note.text) >= MIN_NOTE_CHARS:
            break
        note.append(_filler(text), " ")
    ordered = {name: note.values[name] for name in DYSPNEA_ITEMS if name in note.values}
    return FormNote(note.text, ordered)
