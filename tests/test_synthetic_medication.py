from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from app.tasks.grounding import aligned_occurrences, ground_spans, piece_boundaries
from app.tasks.types.base import RelationNote
from app.training.synthetic.medication import ENTITY_LABELS, RELATION_TAILS, compose_medication_note
from app.training.synthetic.medication_vocab import MED_VOCABS, MedVocab
from app.training.synthetic.notes import MAX_ENTITIES, MAX_ENTITY_CHARS, MAX_NOTE_CHARS, MIN_NOTE_CHARS

LANGUAGES = ("it", "en")
SEEDS = (0, 1, 7, 2024)
PER_SEED = 100  # 400 notes per language


def compose_many(language: str, seed: int, n: int) -> list[RelationNote]:
    rng = random.Random(seed)
    return [compose_medication_note(language, rng) for _ in range(n)]


@pytest.fixture(scope="module", params=LANGUAGES)
def notes(request: pytest.FixtureRequest) -> list[RelationNote]:
    return [note for seed in SEEDS for note in compose_many(request.param, seed, PER_SEED)]


def attribute_strings(vocab: MedVocab) -> set[str]:
    strings = {*vocab.durations}
    for med in vocab.medications:
        strings |= {med.name, *med.doses, *med.routes, *med.frequencies}
    return strings


def test_span_offsets_hold_their_text_in_order_without_overlap(notes: list[RelationNote]) -> None:
    for note in notes:
        for span in note.spans:
            assert note.text[span.start : span.end] == span.text
        assert list(note.spans) == sorted(note.spans, key=lambda s: (s.start, s.end))
        for before, after in zip(note.spans, note.spans[1:], strict=False):
            assert before.end <= after.start, note.text


def test_spans_are_piece_aligned_stripped_and_unflagged(notes: list[RelationNote]) -> None:
    for note in notes:
        bounds = piece_boundaries(note.text)
        for span in note.spans:
            assert span.start in bounds and span.end in bounds, span
            assert span.text == span.text.strip() and span.text
            assert span.label in ENTITY_LABELS
            assert span.flags == frozenset()


def test_the_service_grounds_every_span_where_the_gold_puts_it(notes: list[RelationNote]) -> None:
    for note in notes:
        # A perfect model emits the spans in document order; grounding must land on the gold.
        result = ground_spans(note.text, [(s.text, s.label, {}) for s in note.spans])
        assert [(s.start, s.end, s.label) for s in result.spans] == [(s.start, s.end, s.label) for s in note.spans]
        assert not result.dropped
        seen: Counter[tuple[str, str]] = Counter()
        bounds = piece_boundaries(note.text)
        for span in note.spans:
            k = seen[(span.text, span.label)]
            seen[(span.text, span.label)] += 1
            assert aligned_occurrences(note.text, span.text, bounds)[k] == span.start


def test_relations_link_a_drug_to_an_attribute_of_the_label_their_type_requires(notes: list[RelationNote]) -> None:
    for note in notes:
        for kind, head, tail in note.relations:
            assert note.spans[head].label == "DRUG"
            assert note.spans[tail].label == RELATION_TAILS[kind]
        assert len(set(note.relations)) == len(note.relations)


def test_every_attribute_is_the_tail_of_exactly_one_relation(notes: list[RelationNote]) -> None:
    for note in notes:
        tails = Counter(tail for _, _, tail in note.relations)
        for i, span in enumerate(note.spans):
            assert tails[i] == (0 if span.label == "DRUG" else 1), (note.text, span)


def test_a_drug_and_its_attributes_sit_on_one_line(notes: list[RelationNote]) -> None:
    for note in notes:
        for _, head, tail in note.relations:
            lo, hi = sorted((note.spans[head].start, note.spans[tail].start))
            assert "\n" not in note.text[lo:hi]


def test_notes_respect_the_length_and_entity_bounds(notes: list[RelationNote]) -> None:
    for note in notes:
        assert MIN_NOTE_CHARS <= len(note.text) <= MAX_NOTE_CHARS
        assert len(note.spans) <= MAX_ENTITIES
        assert all(len(s.text) <= MAX_ENTITY_CHARS and "\n" not in s.text for s in note.spans)


def test_every_note_prescribes_a_drug_with_an_attribute(notes: list[RelationNote]) -> None:
    assert all(note.relations for note in notes)


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_same_seed_gives_identical_notes(language: str) -> None:
    assert compose_many(language, 5, 30) == compose_many(language, 5, 30)


@pytest.mark.parametrize("language", LANGUAGES)
def test_different_seeds_give_different_notes(language: str) -> None:
    first, second = compose_many(language, 5, 30), compose_many(language, 6, 30)
    assert [n.text for n in first] != [n.text for n in second]
    assert len({n.text for n in first}) == 30


def test_an_unknown_language_is_refused() -> None:
    with pytest.raises(ValueError, match="de"):
        compose_medication_note("de", random.Random(0))


@pytest.mark.parametrize("language", LANGUAGES)
def test_plain_text_holds_no_medication_content(language: str) -> None:
    # An unannotated "la sera" or drug name would take the grounding of a later gold span.
    vocab = MED_VOCABS[language]
    templates = [*vocab.prescribe, *vocab.prescribe_two, *vocab.stop]
    plain = [
        *vocab.headers,
        *vocab.contexts,
        *vocab.list_titles,
        *vocab.closings,
        *vocab.stop_reasons,
        *vocab.open_ended,
        *(piece for t in templates for piece in re.split(r"\{[mdr]\}", t)),
    ]
    strings = attribute_strings(vocab)
    for text in plain:
        bounds = piece_boundaries(text)
        assert not [s for s in strings if aligned_occurrences(text, s, bounds)], text
    assert len(vocab.contexts) >= 20
    assert not any(re.search(r"\d", c) for c in vocab.contexts)


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_vocabulary_lists_about_thirty_distinct_drugs(language: str) -> None:
    meds = MED_VOCABS[language].medications
    assert len(meds) >= 30
    assert len({m.name for m in meds}) == len(meds)
    assert all(m.doses and m.routes and m.frequencies for m in meds)


def test_open_ended_therapy_is_plain_text_not_a_duration(notes: list[RelationNote]) -> None:
    open_ended = {p for vocab in MED_VOCABS.values() for p in vocab.open_ended}
    stated = 0
    for note in notes:
        stated += any(p in note.text for p in open_ended)
        for span in note.spans:
            assert not any(p in span.text for p in open_ended)
    assert stated > 10


def test_decimals_follow_the_language() -> None:
    for note in compose_many("it", 3, 300):
        assert not [s for s in note.spans if s.label == "DOSAGE" and re.search(r"\d\.\d{1,2}\b", s.text)]
    for note in compose_many("en", 3, 300):
        assert not [s for s in note.spans if s.label == "DOSAGE" and re.search(r"\d,\d{1,2}\b", s.text)]
    assert any("2,5 mg" in n.text for n in compose_many("it", 3, 300))
    assert any("2.5 mg" in n.text for n in compose_many("en", 3, 300))


def test_mentions_vary_so_linking_needs_structure(notes: list[RelationNote]) -> None:
    labels: Counter[str] = Counter()
    dose_first = two_on_a_line = bare_drugs = listed = 0
    for note in notes:
        labels.update(s.label for s in note.spans)
        heads = {head for _, head, _ in note.relations}
        dose_first += any(tail < head for _, head, tail in note.relations)
        bare_drugs += any(s.label == "DRUG" and i not in heads for i, s in enumerate(note.spans))
        listed += "\n- " in note.text
        lines: Counter[int] = Counter(note.text.count("\n", 0, note.spans[h].start) for h in heads)
        two_on_a_line += any(count >= 2 for count in lines.values())
    assert set(labels) == set(ENTITY_LABELS)
    assert labels["DOSAGE"] > labels["ROUTE"] > 0 and labels["FREQUENCY"] > labels["DURATION"] > 0
    for count in (dose_first, two_on_a_line, bare_drugs, listed):
        assert count > len(notes) // 20
