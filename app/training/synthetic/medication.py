"""Writing one synthetic medication note (an Italian discharge letter or an English discharge
summary) with its drugs, their attributes and the relations between them tracked while the
text is built, so `text[start:end] == span.text` and every relation points at the words it
links, by construction.

A drug mention carries a random subset of its attributes in one of several orders and
formats, and some sentences hold two drugs, so a model has to link an attribute to its drug
by structure rather than by position. Deterministic: everything is drawn from the caller's
`random.Random`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from app.tasks.types.base import NoteSpan, RelationNote
from app.training.synthetic.medication_vocab import MED_VOCABS, Medication, MedVocab
from app.training.synthetic.notes import MAX_ENTITIES, MAX_NOTE_CHARS, MIN_NOTE_CHARS, _groundable

ENTITY_LABELS = ("DRUG", "DOSAGE", "FREQUENCY", "ROUTE", "DURATION")
# Relation type -> the label of its tail; the head is always a DRUG.
RELATION_TAILS: dict[str, str] = {
    "dosage": "DOSAGE",
    "frequency": "FREQUENCY",
    "route": "ROUTE",
    "duration": "DURATION",
}
_RELATION_OF = {label: kind for kind, label in RELATION_TAILS.items()}

# Orders of a drug's attributes after its name; the ones a mention lacks are skipped.
_ORDERS = (
    ("DOSAGE", "ROUTE", "FREQUENCY", "DURATION"),
    ("DOSAGE", "FREQUENCY", "ROUTE", "DURATION"),
    ("ROUTE", "DOSAGE", "FREQUENCY", "DURATION"),
    ("DOSAGE", "FREQUENCY", "DURATION", "ROUTE"),
)

_TEMPLATE_SLOT = re.compile(r"(\{[mdr]\})")


@dataclass
class _Part:
    """One sentence or list line; span offsets and relation indices are its own."""

    text: str = ""
    spans: list[NoteSpan] = field(default_factory=list)
    relations: list[tuple[str, int, int]] = field(default_factory=list)

    def add(self, piece: str) -> None:
        self.text += piece

    def entity(self, piece: str, label: str) -> int:
        start = len(self.text)
        self.text += piece
        self.spans.append(NoteSpan(start, len(self.text), piece, label))
        return len(self.spans) - 1


class _Exhausted(Exception):
    """Every drug was mentioned already in this note."""


@dataclass
class _Ctx:
    rng: random.Random
    vocab: MedVocab
    used: set[str] = field(default_factory=set)

    def medication(self) -> Medication:
        # Each drug once per note: "Si sospende warfarin" beside "warfarin 5 mg la sera" would
        # be a contradiction, and two mentions would need their attributes told apart by luck.
        fresh = [m for m in self.vocab.medications if m.name not in self.used]
        if not fresh:
            raise _Exhausted
        choice = self.rng.choice(fresh)
        self.used.add(choice.name)
        return choice


def _attributes(med: Medication, durations: tuple[str, ...], rng: random.Random) -> dict[str, str]:
    """Which attributes this mention states: often dosage and frequency, sometimes the
    route, a duration only for a short course; never none."""
    chosen: dict[str, str] = {}
    if rng.random() < 0.85:
        chosen["DOSAGE"] = rng.choice(med.doses)
    if rng.random() < 0.75:
        chosen["FREQUENCY"] = rng.choice(med.frequencies)
    if rng.random() < 0.35:
        chosen["ROUTE"] = rng.choice(med.routes)
    if med.course and rng.random() < 0.4:
        chosen["DURATION"] = rng.choice(durations)
    if not chosen:
        chosen["DOSAGE"] = rng.choice(med.doses)
    return chosen


def _mention(part: _Part, ctx: _Ctx, listed: bool) -> None:
    """A drug with some of its attributes, each linked to it: "amoxicillina 1 g per os ogni
    8 ore", "1 g di amoxicillina ogni 8 ore", "amoxicillina 1 g, ogni 8 ore, per 7 giorni",
    "amoxicillina (1 g) ogni 8 ore" or, in a list,
    "amoxicillina: 1 g ogni 8 ore"."""
    rng, vocab = ctx.rng, ctx.vocab
    med = ctx.medication()
    attrs = _attributes(med, vocab.durations, rng)
    order = [label for label in rng.choice(_ORDERS) if label in attrs]
    styles = ["plain", "plain", "comma"]
    if order[0] == "DOSAGE":
        styles += ["paren", "dose_of"]
    if listed:
        styles.append("colon")
    style = rng.choice(styles)

    tails: list[int] = []
    if style == "dose_of":
        tails.append(part.entity(attrs[order.pop(0)], "DOSAGE"))
        part.add(vocab.of)
        head = part.entity(med.name, "DRUG")
    elif style == "paren":
        head = part.entity(med.name, "DRUG")
        part.add(" (")
        tails.append(part.entity(attrs[order.pop(0)], "DOSAGE"))
        part.add(")")
    else:
        head = part.entity(med.name, "DRUG")
    for i, label in enumerate(order):
        if i == 0:
            part.add(": " if style == "colon" else " ")
        else:
            part.add(", " if style == "comma" else " ")
        tails.append(part.entity(attrs[label], label))
    if not med.course and rng.random() < 0.2:
        # Open-ended therapy is plain text: "fino a nuova indicazione" is not a DURATION.
        part.add((", " if style == "comma" else " ") + rng.choice(vocab.open_ended))
    part.relations += [(_RELATION_OF[part.spans[t].label], head, t) for t in tails]


def _sentence(template: str, ctx: _Ctx) -> _Part:
    """Fill a narrative template: {m} a drug with attributes, {d} a bare drug, {r} a reason."""
    part = _Part()
    for token in _TEMPLATE_SLOT.split(template):
        if token == "{m}":
            _mention(part, ctx, listed=False)
        elif token == "{d}":
            part.entity(ctx.medication().name, "DRUG")  # stopped: a drug with no relations
        elif token == "{r}":
            part.add(ctx.rng.choice(ctx.vocab.stop_reasons))
        else:
            part.add(token)
    return part


def _narrative(ctx: _Ctx) -> _Part:
    roll = ctx.rng.random()
    if roll < 0.5:
        return _sentence(ctx.rng.choice(ctx.vocab.prescribe), ctx)
    if roll < 0.8:
        return _sentence(ctx.rng.choice(ctx.vocab.prescribe_two), ctx)
    return _sentence(ctx.rng.choice(ctx.vocab.stop), ctx)


def _prescription(ctx: _Ctx) -> _Part:
    return _sentence(ctx.rng.choice(ctx.vocab.prescribe), ctx)


def _list_line(ctx: _Ctx) -> _Part:
    part = _Part("- ")
    _mention(part, ctx, listed=True)
    return part


@dataclass
class _Builder:
    text: str = ""
    spans: list[NoteSpan] = field(default_factory=list)
    relations: list[tuple[str, int, int]] = field(default_factory=list)

    def try_append(self, part: _Part, sep: str) -> bool:
        """Append unless the note would break a bound or a span could not be grounded (the
        part is then dropped whole, never fixed up)."""
        sep = sep if self.text else ""
        text = self.text + sep + part.text
        if len(text) > MAX_NOTE_CHARS or len(self.spans) + len(part.spans) > MAX_ENTITIES:
            return False
        shift = len(self.text) + len(sep)
        moved = [NoteSpan(s.start + shift, s.end + shift, s.text, s.label) for s in part.spans]
        spans = self.spans + moved
        # Separators are whitespace, so earlier spans' occurrences cannot move.
        if not _groundable(text, spans, len(self.spans)):
            return False
        base = len(self.spans)
        self.text = text
        self.spans = spans
        self.relations += [(kind, head + base, tail + base) for kind, head, tail in part.relations]
        return True

    def mark(self) -> tuple[int, int, int]:
        return len(self.text), len(self.spans), len(self.relations)

    def reset(self, mark: tuple[int, int, int]) -> None:
        self.text = self.text[: mark[0]]
        del self.spans[mark[1] :]
        del self.relations[mark[2] :]

    def has_drug_with_attributes(self) -> bool:
        return bool(self.relations)


def _append(builder: _Builder, make: Callable[[_Ctx], _Part], ctx: _Ctx, sep: str) -> bool:
    try:
        part = make(ctx)
    except _Exhausted:
        return False
    return builder.try_append(part, sep)


def compose_medication_note(language: str, rng: random.Random) -> RelationNote:
    """One note: a header, 1-3 context sentences, then the therapy as narrative sentences,
    a list, or both; sometimes a closing line. Every DOSAGE, FREQUENCY, ROUTE and DURATION
    is the tail of exactly one relation, whose head is the DRUG it belongs to."""
    vocab = MED_VOCABS.get(language)
    if vocab is None:
        raise ValueError(f"no synthetic medication notes in {language!r} (languages: {sorted(MED_VOCABS)})")
    ctx = _Ctx(rng, vocab)
    builder = _Builder()
    builder.try_append(_Part(rng.choice(vocab.headers)), "")
    for i, context in enumerate(rng.sample(vocab.contexts, rng.randint(1, 3))):
        builder.try_append(_Part(context), "\n" if i == 0 else " ")

    layout = rng.choices(("list", "narrative", "both"), weights=(4, 3, 3))[0]
    if layout != "list":
        for i in range(rng.randint(1, 3)):
            _append(builder, _narrative, ctx, "\n" if i == 0 else rng.choice((" ", " ", "\n")))
    if layout != "narrative":
        mark = builder.mark()
        builder.try_append(_Part(rng.choice(vocab.list_titles)), "\n")
        lines = [_append(builder, _list_line, ctx, "\n") for _ in range(rng.randint(2, 6))]
        if not any(lines):
            builder.reset(mark)  # a title with nothing under it
    # Rarely every sentence was refused (bounds, grounding): the note must still prescribe.
    for _ in range(10):
        if builder.has_drug_with_attributes():
            break
        _append(builder, _prescription, ctx, "\n")

    closings = list(vocab.closings)
    rng.shuffle(closings)
    if rng.random() < 0.6:
        builder.try_append(_Part(closings.pop()), "\n")
    # Top up short notes so every note reaches MIN_NOTE_CHARS.
    while len(builder.text) < MIN_NOTE_CHARS and closings:
        builder.try_append(_Part(closings.pop()), "\n")
    relations = sorted(builder.relations, key=lambda r: (r[1], r[2]))
    return RelationNote(builder.text, tuple(builder.spans), tuple(relations))
