from __future__ import annotations

import itertools
import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from app.settings import REPO_ROOT
from app.tasks.chunking import Chunk
from app.tasks.grounding import ground_answer, ground_spans
from app.tasks.manifests import load_tasks
from app.tasks.types.base import Task
from app.training.synthetic import examples_for_task, write_jsonl
from app.training.synthetic.notes import MAX_ENTITIES, MAX_ENTITY_CHARS, MAX_NOTE_CHARS, MIN_NOTE_CHARS, _parse
from app.training.synthetic.vocab import IT, VOCABS, Lang
from tests.conftest import SHIPPED_TASKS, shipped_task

TASK_NAMES = list(SHIPPED_TASKS)
NER_TASKS: dict[Lang, str] = {"it": "ner-it-clinical", "en": "ner-en-clinical"}
N = 150


def ner_examples(lang: Lang, n: int, seed: int) -> list[dict[str, Any]]:
    return examples_for_task(shipped_task(NER_TASKS[lang]), n, seed)


def qa_examples(n: int, seed: int) -> list[dict[str, Any]]:
    return examples_for_task(shipped_task("qa-it-clinical"), n, seed)


def classification_examples(n: int, seed: int) -> list[dict[str, Any]]:
    return examples_for_task(shipped_task("classify-it-note-type"), n, seed)


@pytest.fixture(scope="module")
def tasks() -> dict[str, Task]:
    return load_tasks(REPO_ROOT / "adapters", REPO_ROOT / "schemas")


def dumps(rows: list[dict[str, Any]]) -> str:
    return "\n".join(json.dumps(row, ensure_ascii=False) for row in rows)


def note_text(row: dict[str, Any]) -> str:
    return str(row.get("text", row.get("context")))


@pytest.mark.parametrize("task_name", TASK_NAMES)
def test_same_seed_gives_identical_output(task_name: str) -> None:
    task = shipped_task(task_name)
    assert dumps(examples_for_task(task, 40, seed=3)) == dumps(examples_for_task(task, 40, seed=3))


@pytest.mark.parametrize("task_name", TASK_NAMES)
def test_different_seeds_give_different_notes(task_name: str) -> None:
    first = [note_text(r) for r in examples_for_task(shipped_task(task_name), 40, seed=1)]
    second = [note_text(r) for r in examples_for_task(shipped_task(task_name), 40, seed=2)]
    assert first != second
    assert sum(a != b for a, b in zip(first, second, strict=True)) > 30


def test_generation_leaves_global_random_state_alone() -> None:
    random.seed(1234)
    before = random.getstate()
    for task_name in TASK_NAMES:
        examples_for_task(shipped_task(task_name), 10, seed=0)
    assert random.getstate() == before


def test_notes_within_a_call_differ() -> None:
    texts = [r["text"] for r in ner_examples("it", N, seed=0)]
    assert len(set(texts)) == len(texts)


@pytest.mark.parametrize("lang", ["it", "en"])
def test_ner_spans_are_exact_sorted_and_non_overlapping(lang: Lang) -> None:
    for row in ner_examples(lang, N, seed=11):
        text, entities = row["text"], row["entities"]
        for entity in entities:
            assert text[entity["start"] : entity["end"]] == entity["text"], (row["id"], entity)
            assert entity["text"] == entity["text"].strip() and entity["text"]
        for before, after in itertools.pairwise(entities):
            assert before["end"] <= after["start"], (row["id"], before, after)


@pytest.mark.parametrize("lang", ["it", "en"])
def test_ner_gold_spans_ground_back_to_their_own_offsets(lang: Lang) -> None:
    # The service places the k-th (text, label) on the k-th aligned occurrence of the text;
    # a perfect model emitting the gold entities in order must land on the gold offsets.
    for row in ner_examples(lang, N, seed=5):
        candidates = [(e["text"], e["label"], e["attributes"]) for e in row["entities"]]
        grounded = ground_spans(row["text"], candidates)
        assert not grounded.dropped, (row["id"], grounded.dropped)
        assert [(s.start, s.end) for s in grounded.spans] == [(e["start"], e["end"]) for e in row["entities"]]


@pytest.mark.parametrize("lang", ["it", "en"])
def test_ner_attributes_and_labels_match_the_manifest(lang: Lang, tasks: dict[str, Task]) -> None:
    task = tasks[NER_TASKS[lang]]
    seen_labels: set[str] = set()
    seen_true: Counter[str] = Counter()
    for row in ner_examples(lang, N, seed=2):
        for entity in row["entities"]:
            assert list(entity["attributes"]) == task.attribute_names
            assert all(isinstance(v, bool) for v in entity["attributes"].values())
            assert entity["label"] in task.label_names
            seen_labels.add(entity["label"])
            seen_true.update(name for name, value in entity["attributes"].items() if value)
    assert seen_labels == set(task.label_names)
    assert set(seen_true) == set(task.attribute_names)


@pytest.mark.parametrize("lang", ["it", "en"])
def test_ner_output_validates_against_the_task_schema(lang: Lang, tasks: dict[str, Task]) -> None:
    task = tasks[NER_TASKS[lang]]
    for row in ner_examples(lang, N, seed=8):
        (output,) = task.kind.targets(task, {"entities": row["entities"]}, Chunk(0, row["text"]))
        assert len(output["entities"]) == len(row["entities"])
        errors = [e.message for e in task.validator.iter_errors(output)]
        assert not errors, (row["id"], errors)


@pytest.mark.parametrize("lang", ["it", "en"])
def test_ner_notes_respect_size_bounds_and_id_format(lang: Lang) -> None:
    rows = ner_examples(lang, N, seed=4)
    assert len(rows) == N
    assert [r["id"] for r in rows] == [f"{lang}-ner-{i:06d}" for i in range(N)]
    for row in rows:
        assert MIN_NOTE_CHARS <= len(row["text"]) <= MAX_NOTE_CHARS, row["id"]
        assert len(row["entities"]) <= MAX_ENTITIES
        assert all(len(e["text"]) <= MAX_ENTITY_CHARS for e in row["entities"])


def test_italian_notes_contain_accented_characters() -> None:
    text = "".join(r["text"] for r in ner_examples("it", N, seed=0))
    for char in "èàù°":
        assert char in text, char


def test_qa_answers_are_exact_groundable_spans(tasks: dict[str, Task]) -> None:
    task = tasks["qa-it-clinical"]
    rows = qa_examples(N, seed=6)
    assert len({r["id"] for r in rows}) == N
    for row in rows:
        answer = row["answer"]
        assert row["question"].endswith("?")
        assert MIN_NOTE_CHARS <= len(row["context"]) <= MAX_NOTE_CHARS
        output = {"answer": None if answer is None else answer["text"]}
        assert not list(task.validator.iter_errors(output)), row
        if answer is not None:
            assert set(answer) == {"start", "end", "text"}
            assert row["context"][answer["start"] : answer["end"]] == answer["text"]
            assert 0 < len(answer["text"]) <= 100
            span, _ = ground_answer(row["context"], answer["text"])
            assert span is not None and span.start == answer["start"], row


def test_qa_has_answerable_and_about_one_fifth_unanswerable_items() -> None:
    rows = qa_examples(100, seed=9)
    unanswerable = [r for r in rows if r["answer"] is None]
    assert len(unanswerable) == 20
    assert len({r["question"] for r in rows if r["answer"] is not None}) > 10


def test_unanswerable_lab_questions_ask_about_a_lab_absent_from_the_note() -> None:
    lab_by_question = {lab.question: lab.name for lab in IT.labs}
    checked = 0
    for row in qa_examples(300, seed=1):
        if row["answer"] is None and row["question"] in lab_by_question:
            assert not re.search(rf"\b{re.escape(lab_by_question[row['question']])}\b", row["context"])
            checked += 1
    assert checked > 0


def test_classification_is_balanced_with_valid_labels(tasks: dict[str, Task]) -> None:
    task = tasks["classify-it-note-type"]
    rows = classification_examples(61, seed=0)
    counts = Counter(label for r in rows for label in r["labels"])
    assert set(counts) == set(task.label_names)
    assert max(counts.values()) - min(counts.values()) <= 1
    for row in rows:
        assert len(row["labels"]) == 1
        assert not list(task.validator.iter_errors({"labels": row["labels"]}))
        assert MIN_NOTE_CHARS <= len(row["text"]) <= MAX_NOTE_CHARS


@pytest.mark.parametrize("lang", ["it", "en"])
def test_every_template_parses(lang: Lang) -> None:
    for templates in VOCABS[lang].notes.values():
        for template in (*templates.headers, *templates.leads, *templates.body, *templates.closings):
            assert _parse(template), template


def test_examples_for_task_rejects_a_language_the_generator_does_not_write() -> None:
    task = shipped_task("ner-it-clinical")
    french = task.with_manifest(task.manifest.model_copy(update={"languages": ["fr"]}))
    with pytest.raises(ValueError, match="no synthetic notes in 'fr'"):
        examples_for_task(french, 1, seed=0)


def test_examples_for_task_covers_every_shipped_task(tasks: dict[str, Task]) -> None:
    assert sorted(tasks) == sorted(TASK_NAMES)
    for name in tasks:
        assert len(examples_for_task(shipped_task(name), 3, seed=0)) == 3


def test_write_jsonl_round_trips_utf8(tmp_path: Path) -> None:
    rows = [*ner_examples("it", 20, seed=0), {"id": "x", "text": "più caffè", "entities": []}]
    path = tmp_path / "ner.jsonl"
    assert write_jsonl(path, rows) == 21
    raw = path.read_bytes()
    assert "è".encode() in raw and b"\\u00e8" not in raw
    lines = raw.decode("utf-8").splitlines()
    assert [json.loads(line) for line in lines] == rows
    assert write_jsonl(tmp_path / "empty.jsonl", []) == 0
    assert (tmp_path / "empty.jsonl").read_bytes() == b""
