"""Synthetic clinical notes with gold annotations, for training and evaluating demo adapters.

Everything here is invented: names, values and sentences come from the templates and
vocabularies in `vocab.py`, never from patients. `notes.py` writes one note with its
entities, facts and document type tracked; each task type turns such notes into its own
gold records (`TaskType.synthesize`), so `medlora synth` covers every type that does.
Deterministic: the same (task, n, seed) gives byte-identical output on every run.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from app.tasks.types.base import FormNote, PhiNote, RelationNote, SyntheticNote, Task
from app.training.synthetic.dyspnea import compose_dyspnea_note
from app.training.synthetic.medication import compose_medication_note
from app.training.synthetic.notes import compose_note
from app.training.synthetic.phi import compose_phi_note
from app.training.synthetic.vocab import NOTE_TYPES, QUESTIONS, VOCABS, Vocab


class World:
    """The note generator for one language (a `NoteWorld`)."""

    note_kinds: tuple[str, ...] = NOTE_TYPES

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.language: str = vocab.lang

    def compose(self, rng: random.Random, kind: str) -> SyntheticNote:
        if kind not in NOTE_TYPES:
            raise ValueError(f"no {kind!r} notes: the generator writes {NOTE_TYPES}")
        return compose_note(kind, self.vocab, rng)

    def compose_relations(self, rng: random.Random) -> RelationNote:
        return compose_medication_note(self.language, rng)

    def compose_form(self, rng: random.Random, form: str) -> FormNote:
        writer = _FORM_WRITERS.get((self.language, form))
        if writer is None:
            known = sorted(name for lang, name in _FORM_WRITERS if lang == self.language)
            raise ValueError(f"no synthetic {form!r} notes in {self.language!r} (forms: {known})")
        return writer(rng)

    def compose_phi(self, rng: random.Random) -> PhiNote:
        return compose_phi_note(self.language, rng)

    def question_keys(self) -> list[str]:
        """Every fact a question can ask about (answered in some notes, absent from others)."""
        if self.language != "it":
            raise ValueError(f"no synthetic questions in {self.language!r}: the generator asks them in Italian")
        vocab = self.vocab
        return [
            *QUESTIONS,
            *(f"lab:{lab.name}" for lab in vocab.labs),
            *(f"family:{rel.word}" for rel in vocab.relatives),
            *(f"dose:{drug.name}" for drug in vocab.drugs),
        ]

    def question(self, key: str, rng: random.Random) -> str:
        """An Italian question about fact `key`."""
        kind, _, arg = key.partition(":")
        if kind == "lab":
            return next(lab.question for lab in self.vocab.labs if lab.name == arg)
        if kind == "family":
            return next(rel.question for rel in self.vocab.relatives if rel.word == arg)
        if kind == "dose":
            return rng.choice((f"Qual è la posologia di {arg}?", f"Quale dose di {arg} è prescritta?"))
        return rng.choice(QUESTIONS[key])


# The forms the generator can fill, by (language, task name): each writer knows its form's items.
_FORM_WRITERS: dict[tuple[str, str], Callable[[random.Random], FormNote]] = {
    ("it", "crf-it-dyspnea"): compose_dyspnea_note,
}


def world_for(language: str) -> World:
    vocab = VOCABS.get(language)  # type: ignore[call-overload]
    if vocab is None:
        raise ValueError(f"no synthetic notes in {language!r} (languages: {sorted(VOCABS)})")
    return World(vocab)


def examples_for_task(task: Task, n: int, seed: int) -> list[dict[str, Any]]:
    """`n` invented annotated records for `task`, in its language; a task of several languages
    (deid) gets its records shared out among them in turn, each language with its own seed."""
    languages = task.manifest.languages
    if len(languages) == 1:
        return task.kind.synthesize(task, world_for(languages[0]), n, seed)
    per_language = [
        task.kind.synthesize(task, world_for(lang), len(range(k, n, len(languages))), seed + k)
        for k, lang in enumerate(languages)
    ]
    return [row for rows in zip(*per_language, strict=False) for row in rows] + [
        row for rows in per_language for row in rows[min(map(len, per_language)) :]
    ]


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write one JSON object per line (UTF-8, non-ASCII kept as is); return the row count."""
    count = 0
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for row in rows:
            out.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
            count += 1
    return count
