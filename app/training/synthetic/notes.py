"""Writing one synthetic note: templated sentences whose slots are filled from the vocabulary,
with every entity's offsets tracked while the text is built (a span is never searched for
afterwards), so `text[start:end] == span text` by construction.

Generation is deterministic: everything is drawn from the caller's `random.Random`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from typing import TypeVar

from app.tasks.grounding import aligned_occurrences, piece_boundaries
from app.tasks.types.base import NoteSpan, SyntheticNote
from app.training.synthetic.codes import planted_codes
from app.training.synthetic.vocab import (
    Disorder,
    Drug,
    Exam,
    Imaging,
    Lab,
    NoteType,
    Relative,
    Surgery,
    Vocab,
)

# Bounds chosen so a tiny model can learn from the data and every output fits the schemas
# (which allow 64 entities of up to 80 characters and QA answers of up to 200).
MAX_ENTITIES = 20
MAX_ENTITY_CHARS = 60
MAX_ANSWER_CHARS = 100
MIN_NOTE_CHARS = 150
MAX_NOTE_CHARS = 900

_FLAG_NAMES = {"neg": "negated", "unc": "uncertain", "hist": "historical", "fam": "family"}

T = TypeVar("T")

# --------------------------------------------------------------------------- rendering


@dataclass
class _Sentence:
    """One rendered sentence; offsets are relative to its own start."""

    text: str = ""
    spans: list[NoteSpan] = field(default_factory=list)
    facts: list[NoteSpan] = field(default_factory=list)  # label holds the QA key
    mentions: set[str] = field(default_factory=set)
    cap_next: bool = False

    def add(self, piece: str) -> tuple[int, int]:
        if self.cap_next and piece:
            piece = piece[0].upper() + piece[1:]
            self.cap_next = False
        start = len(self.text)
        self.text += piece
        return start, len(self.text)

    def entity(self, piece: str, label: str, flags: frozenset[str]) -> tuple[int, int]:
        start, end = self.add(piece)
        text = self.text[start:end]
        self.spans.append(NoteSpan(start, end, text, label, flags, planted_codes(text, label)))
        return start, end

    def fact(self, key: str, start: int, end: int) -> None:
        self.facts.append(NoteSpan(start, end, self.text[start:end], key))
        self.mentions.add(key)


class _Skip(Exception):
    """A slot cannot be filled sensibly in this note; drop the sentence."""


@dataclass
class _Ctx:
    """Per-note state: what was already said, and the scenario sentences must agree on."""

    rng: random.Random
    vocab: Vocab
    used: set[str] = field(default_factory=set)
    imaging: Imaging | None = None
    surgery: Surgery | None = None
    exam: Exam | None = None
    relative: Relative | None = None  # per sentence: "{Rel} con {famdis:fam}"

    def pick(self, items: Sequence[T], key: Callable[[T], str]) -> T:
        # Only items not yet used in this note: "nega dispnea" next to "riferisce dispnea"
        # would teach the model contradictions. Nothing left: the sentence is dropped.
        fresh = [item for item in items if key(item) not in self.used]
        if not fresh:
            raise _Skip
        choice = self.rng.choice(fresh)
        self.used.add(key(choice))
        return choice


@dataclass(frozen=True)
class _Slot:
    kind: str
    cap: bool
    flags: frozenset[str]
    fact: str | None
    stem: str | None


_SLOT = re.compile(r"\{(?P<kind>[A-Za-z_]+)(?::(?P<flags>[a-z+]+))?(?:@(?P<fact>[a-z_]+))?(?:\^(?P<stem>[^}]+))?\}")


@cache
def _parse(template: str) -> tuple[str | _Slot, ...]:
    tokens: list[str | _Slot] = []
    pos = 0
    for match in _SLOT.finditer(template):
        if match.start() > pos:
            tokens.append(template[pos : match.start()])
        kind = match["kind"]
        flags = frozenset(_FLAG_NAMES[f] for f in (match["flags"] or "").split("+") if f)
        if kind.lower() not in _HANDLERS:
            raise ValueError(f"unknown slot {kind!r} in template {template!r}")
        tokens.append(_Slot(kind.lower(), kind[0].isupper(), flags, match["fact"], match["stem"]))
        pos = match.end()
    if pos < len(template):
        tokens.append(template[pos:])
    return tuple(tokens)


def _render(template: str, ctx: _Ctx) -> _Sentence | None:
    """Fill a template's slots, or None if one cannot be filled in this note."""
    try:
        return _fill(template, ctx)
    except _Skip:
        return None


def _fill(template: str, ctx: _Ctx) -> _Sentence:
    sentence = _Sentence()
    ctx.relative = None
    for token in _parse(template):
        if isinstance(token, str):
            sentence.add(token)
        else:
            sentence.cap_next = token.cap
            _HANDLERS[token.kind](sentence, ctx, token)
            sentence.cap_next = False
    return sentence


def _number(ctx: _Ctx, low: float, high: float, decimals: int) -> str:
    # Integers scaled by 10**decimals: no float formatting surprises, same digits everywhere.
    scale = 10**decimals
    value = ctx.rng.randint(round(low * scale), round(high * scale))
    if decimals == 0:
        return str(value)
    whole, frac = divmod(value, scale)
    return f"{whole}{ctx.vocab.decimal}{frac:0{decimals}d}"


def _disorder(s: _Sentence, ctx: _Ctx, slot: _Slot, disorder: Disorder) -> None:
    if slot.stem:
        s.add(slot.stem + ("a " if disorder.gender == "f" else "o "))
    start, end = s.entity(disorder.text, "DISORDER", slot.flags)
    if "uncertain" in slot.flags:
        s.fact("suspected", start, end)
    if ctx.relative is not None and "family" in slot.flags and "negated" not in slot.flags:
        s.fact(f"family:{ctx.relative.word}", start, end)
    if slot.fact:
        s.fact(slot.fact, start, end)


def _text_of(d: Disorder) -> str:
    return d.text


def _slot_dis(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    _disorder(s, ctx, slot, ctx.pick(ctx.vocab.acute, _text_of))


def _slot_chr(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    _disorder(s, ctx, slot, ctx.pick(ctx.vocab.chronic, _text_of))


def _slot_famdis(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    _disorder(s, ctx, slot, ctx.pick(ctx.vocab.familial, _text_of))


def _scenario(ctx: _Ctx) -> Imaging:
    if ctx.imaging is None:
        ctx.imaging = ctx.rng.choice(ctx.vocab.imaging)
    return ctx.imaging


def _slot_finding(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    # Findings fit the region last imaged in this note (a brain bleed on a knee MRI would be
    # noise a small model cannot learn from).
    _disorder(s, ctx, slot, ctx.pick(_scenario(ctx).findings, _text_of))


def _imaging(s: _Sentence, ctx: _Ctx, slot: _Slot, with_prep: bool) -> None:
    ctx.imaging = ctx.rng.choice(ctx.vocab.imaging)
    test = ctx.rng.choice(ctx.imaging.tests)
    part = ctx.imaging.part
    start, _ = s.entity(test, "TEST", slot.flags)
    s.add(" " + (part.of if with_prep else ""))
    _, end = s.entity(part.name, "BODY_PART", frozenset())
    s.fact("imaging", start, end)


def _slot_img(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    _imaging(s, ctx, slot, with_prep=True)


def _slot_imgh(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    _imaging(s, ctx, slot, with_prep=False)


def _surgery(ctx: _Ctx) -> Surgery:
    if ctx.surgery is None:
        ctx.surgery = ctx.rng.choice(ctx.vocab.surgeries)
    return ctx.surgery


def _slot_opdis(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    _disorder(s, ctx, slot, _surgery(ctx).diagnosis)


def _slot_proc(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    s.add(_surgery(ctx).procedure)  # no PROCEDURE label in the shipped tasks: plain text


def _slot_opbp_of(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    part = _surgery(ctx).part
    s.add(part.of)
    s.entity(part.name, "BODY_PART", slot.flags)


def _slot_sym(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    start, end = s.entity(ctx.pick(ctx.vocab.symptoms, str), "SYMPTOM", slot.flags)
    if "negated" in slot.flags:
        s.fact("neg_symptom", start, end)


def _slot_fever(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    ctx.used.add(ctx.vocab.fever)
    s.entity(ctx.vocab.fever, "SYMPTOM", slot.flags)


def _slot_pain(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    s.entity(ctx.vocab.pain, "SYMPTOM", slot.flags)


def _slot_sore_to(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    part = ctx.pick(ctx.vocab.sore_parts, lambda p: p.name)
    s.add(part.to)
    s.entity(part.name, "BODY_PART", slot.flags)


def _slot_joint_of(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    part = ctx.pick(ctx.vocab.joints, lambda p: p.name)
    s.add(part.of)
    s.entity(part.name, "BODY_PART", slot.flags)


def _drug(s: _Sentence, ctx: _Ctx, slot: _Slot, drug: Drug, with_dose: bool) -> None:
    start, end = s.entity(drug.name, "DRUG", slot.flags)
    s.mentions.add(f"dose:{drug.name}")
    if drug.antibiotic:
        s.mentions.add("antibiotic")
        # Only a current prescription answers "Quale antibiotico assume il paziente?", not
        # "In passato terapia con ..." or "Si sospende ...".
        if with_dose and not slot.flags:
            s.fact("antibiotic", start, end)
    if with_dose:
        s.add(" ")
        start, end = s.entity(ctx.rng.choice(drug.doses), "DOSAGE", slot.flags)
        s.fact(f"dose:{drug.name}", start, end)


def _drug_name(d: Drug) -> str:
    return d.name


def _slot_drugdose(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    _drug(s, ctx, slot, ctx.pick(ctx.vocab.drugs, _drug_name), with_dose=True)


def _slot_abxdose(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    antibiotics = [d for d in ctx.vocab.drugs if d.antibiotic]
    _drug(s, ctx, slot, ctx.pick(antibiotics, _drug_name), with_dose=True)


def _slot_drug(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    _drug(s, ctx, slot, ctx.pick(ctx.vocab.drugs, _drug_name), with_dose=False)


def _slot_allergen(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    start, end = s.entity(ctx.pick(ctx.vocab.allergens, str), "DRUG", slot.flags)
    s.fact("allergy", start, end)


def _lab(s: _Sentence, ctx: _Ctx, slot: _Slot, labs: Sequence[Lab]) -> None:
    lab = ctx.pick(labs, lambda x: x.name)
    value = _number(ctx, lab.low, lab.high, lab.decimals) + (f" {lab.unit}" if lab.unit else "")
    # One TEST span covers name and value ("emoglobina 10,2 g/dL": the label includes lab
    # values); the QA answer is the value alone.
    _, end = s.entity(f"{lab.name} {value}", "TEST", slot.flags)
    s.fact(f"lab:{lab.name}", end - len(value), end)


def _panel(ctx: _Ctx, panel: str) -> list[Lab]:
    return [lab for lab in ctx.vocab.labs if lab.panel == panel]


def _slot_cbc(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    _lab(s, ctx, slot, _panel(ctx, "cbc"))


def _slot_chem(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    _lab(s, ctx, slot, _panel(ctx, "chem"))


def _slot_coag(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    _lab(s, ctx, slot, _panel(ctx, "coag"))


def _slot_labs(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    count = ctx.rng.randint(2, 4)
    for i in range(count):
        if i:
            s.add(", " if i < count - 1 else (" e " if ctx.vocab.lang == "it" else " and "))
        _lab(s, ctx, slot, ctx.vocab.labs)


def _slot_exam(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    ctx.exam = ctx.pick(ctx.vocab.exams, lambda e: e.name)
    s.entity(ctx.exam.name, "TEST", slot.flags)


def _slot_result(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    exam = ctx.exam or ctx.rng.choice(ctx.vocab.exams)
    s.add(ctx.rng.choice(exam.results))


def _slot_histo(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    s.entity(ctx.vocab.histology, "TEST", slot.flags)


def _slot_rel(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    ctx.relative = ctx.pick(ctx.vocab.relatives, lambda r: r.word)
    s.add(ctx.relative.word)
    s.mentions.add(f"family:{ctx.relative.word}")


def _plain(make: Callable[[_Ctx], str]) -> Callable[[_Sentence, _Ctx, _Slot], None]:
    def handler(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
        s.add(make(ctx))

    return handler


def _date(ctx: _Ctx) -> str:
    return f"{ctx.rng.randint(1, 28):02d}/{ctx.rng.randint(1, 12):02d}/{ctx.rng.randint(2019, 2025)}"


def _hour(ctx: _Ctx) -> str:
    return f"{ctx.rng.randint(7, 18):02d}:{ctx.rng.choice(('00', '15', '30', '45'))}"


_HANDLERS: dict[str, Callable[[_Sentence, _Ctx, _Slot], None]] = {
    "dis": _slot_dis,
    "chr": _slot_chr,
    "famdis": _slot_famdis,
    "finding": _slot_finding,
    "img": _slot_img,
    "imgh": _slot_imgh,
    "opdis": _slot_opdis,
    "proc": _slot_proc,
    "opbp_of": _slot_opbp_of,
    "sym": _slot_sym,
    "fever": _slot_fever,
    "pain": _slot_pain,
    "sore_to": _slot_sore_to,
    "joint_of": _slot_joint_of,
    "drugdose": _slot_drugdose,
    "abxdose": _slot_abxdose,
    "drug": _slot_drug,
    "allergen": _slot_allergen,
    "cbc": _slot_cbc,
    "chem": _slot_chem,
    "coag": _slot_coag,
    "labs": _slot_labs,
    "exam": _slot_exam,
    "result": _slot_result,
    "histo": _slot_histo,
    "rel": _slot_rel,
    "age": _plain(lambda c: str(c.rng.randint(25, 92))),
    "days": _plain(lambda c: str(c.rng.randint(2, 10))),
    "few": _plain(lambda c: str(c.rng.randint(2, 6))),
    "temp": _plain(lambda c: _number(c, 37.5, 39.9, 1)),
    "pa": _plain(lambda c: f"{c.rng.randint(100, 180)}/{c.rng.randint(60, 100)}"),
    "fc": _plain(lambda c: str(c.rng.randint(55, 125))),
    "deg": _plain(lambda c: str(c.rng.choice((30, 45, 60, 90, 110)))),
    "ml": _plain(lambda c: str(10 * c.rng.randint(2, 40))),
    "room": _plain(lambda c: str(c.rng.randint(1, 8))),
    "date": _plain(_date),
    "hour": _plain(_hour),
    "ward": _plain(lambda c: c.rng.choice(c.vocab.wards)),
    "anest": _plain(lambda c: c.rng.choice(c.vocab.anesthesia)),
}


# --------------------------------------------------------------------------- note assembly


@dataclass
class _NoteBuilder:
    text: str = ""
    spans: list[NoteSpan] = field(default_factory=list)
    facts: list[NoteSpan] = field(default_factory=list)
    mentions: set[str] = field(default_factory=set)

    def try_append(self, sentence: _Sentence | None, sep: str) -> bool:
        """Append unless the note would break a bound or a span could not be grounded."""
        if sentence is None:
            return False
        sep = sep if self.text else ""
        text = self.text + sep + sentence.text
        if len(text) > MAX_NOTE_CHARS or len(self.spans) + len(sentence.spans) > MAX_ENTITIES:
            return False
        shift = len(self.text) + len(sep)
        moved = [replace(sp, start=sp.start + shift, end=sp.end + shift) for sp in sentence.spans]
        spans = self.spans + moved
        if not _groundable(text, spans, len(self.spans)):
            return False
        self.text = text
        self.spans = spans
        self.facts += [NoteSpan(f.start + shift, f.end + shift, f.text, f.label) for f in sentence.facts]
        self.mentions |= sentence.mentions
        return True


def _groundable(text: str, spans: Sequence[NoteSpan], first_new: int) -> bool:
    """The service grounds the k-th emitted (text, label) on the k-th aligned occurrence of
    the text (app.tasks.grounding); gold spans must sit exactly there, or a perfect model would be
    scored wrong. E.g. "dolore" after "dolore toracico" would ground inside the earlier span.
    Spans before `first_new` were checked already: text appended after a whitespace
    separator cannot move an earlier occurrence.
    """
    bounds = piece_boundaries(text)
    seen: dict[tuple[str, str], int] = {}
    for i, span in enumerate(spans):
        k = seen.get((span.text, span.label), 0)
        seen[(span.text, span.label)] = k + 1
        if i < first_new:
            continue
        occurrences = aligned_occurrences(text, span.text, bounds)
        if k >= len(occurrences) or occurrences[k] != span.start:
            return False
    return True


def compose_note(kind: NoteType, vocab: Vocab, rng: random.Random) -> SyntheticNote:
    """One note: a header, 3–8 sentences in random order (usually led by the reason for the
    note), usually a closing line."""
    ctx = _Ctx(rng, vocab)
    templates = vocab.notes[kind]
    builder = _NoteBuilder()
    builder.try_append(_render(rng.choice(templates.headers), ctx), "")
    order = list(templates.body)
    rng.shuffle(order)
    wanted = rng.randint(3, 8)
    chosen, spare = order[:wanted], order[wanted:]
    if rng.random() < 0.8:
        chosen = [rng.choice(templates.leads), *chosen[:-1]]
    closing = rng.choice(templates.closings) if rng.random() < 0.7 else None

    for i, template in enumerate(chosen):
        # The body starts on a new line; later sentences mostly run on, a few start a line.
        builder.try_append(_render(template, ctx), "\n" if i == 0 else rng.choice((" ", " ", " ", "\n")))
    # Top up short notes from the unused templates so every note reaches MIN_NOTE_CHARS.
    while len(builder.text) < MIN_NOTE_CHARS and spare:
        builder.try_append(_render(spare.pop(), ctx), " ")
    if closing is not None:
        builder.try_append(_render(closing, ctx), rng.choice((" ", "\n")))
    return SyntheticNote(kind, builder.text, tuple(builder.spans), _unambiguous(builder), frozenset(builder.mentions))


def _unambiguous(builder: _NoteBuilder) -> dict[str, NoteSpan]:
    """QA answers: keys stated exactly once, whose text first occurs right at the answer
    (the service grounds an answer on its first aligned occurrence)."""
    counts: dict[str, int] = {}
    for f in builder.facts:
        counts[f.label] = counts.get(f.label, 0) + 1
    bounds = piece_boundaries(builder.text)
    facts: dict[str, NoteSpan] = {}
    for f in builder.facts:
        if counts[f.label] != 1 or len(f.text) > MAX_ANSWER_CHARS:
            continue
        occurrences = aligned_occurrences(builder.text, f.text, bounds)
        if occurrences and occurrences[0] == f.start:
            facts[f.label] = f
    return facts
