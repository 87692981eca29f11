"""JSONL task data: every refusal names its line; model outputs are exactly what serving needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.settings import REPO_ROOT
from app.tasks.grounding import ground_answer
from app.tasks.manifests import load_tasks
from app.tasks.protocol import ModelInfo
from app.tasks.types.base import Answer, Ask, Tally, Task, TaskInput
from app.training.datasets import MAX_LISTED_ERRORS, DataError, Record, chunks_of, load_records, model_outputs
from app.training.synthetic import examples_for_task, write_jsonl
from tests.conftest import shipped_task

TASKS = load_tasks(REPO_ROOT / "adapters", REPO_ROOT / "schemas")
NER, QA, CLS = TASKS["ner-it-clinical"], TASKS["qa-it-clinical"], TASKS["classify-it-note-type"]
ALL_FALSE = {"negated": False, "uncertain": False, "historical": False, "family": False}

TEXT = "Paziente con febbre e tosse."  # febbre [13, 19), tosse [22, 27)
GOOD_NER = {"id": "ok", "text": TEXT, "entities": [{"start": 13, "end": 19, "label": "SYMPTOM"}]}


def write_lines(tmp_path: Path, lines: list[str | bytes | dict[str, Any]]) -> Path:
    path = tmp_path / "data.jsonl"
    raw = b""
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)  # ASCII escapes: a lone surrogate becomes \\ud800, as a client sends it
        raw += (line.encode("utf-8") if isinstance(line, str) else line) + b"\n"
    path.write_bytes(raw)
    return path


def refused(task: Task, tmp_path: Path, bad: str | bytes | dict[str, Any], *, line: int = 2) -> str:
    """Load [good, bad] (bad on line 2 unless a blank line shifts it) and return the reason for it."""
    lines: list[str | bytes | dict[str, Any]] = [GOOD_NER if task is NER else good_row(task)]
    lines += [""] * (line - 2) + [bad]
    with pytest.raises(DataError) as info:
        load_records(task, write_lines(tmp_path, lines))
    assert [n for n, _ in info.value.errors] == [line], info.value.errors
    assert f"line {line}: " in str(info.value)
    return info.value.errors[0][1]


def good_row(task: Task) -> dict[str, Any]:
    if task is QA:
        return {"id": "ok", "context": TEXT, "question": "Sintomi?", "answer": {"start": 13, "end": 19}}
    if task is CLS:
        return {"id": "ok", "text": TEXT, "labels": ["EMERGENCY_NOTE"]}
    return GOOD_NER


def ner_row(*entities: dict[str, Any], text: str = TEXT) -> dict[str, Any]:
    return {"id": "x", "text": text, "entities": list(entities)}


def ent(start: int, end: int, label: str = "SYMPTOM", **extra: Any) -> dict[str, Any]:
    return {"start": start, "end": end, "label": label, **extra}


# ------------------------------------------------------------------------------ loading


def test_loads_api_shapes_with_gold_normalised(tmp_path: Path) -> None:
    row = ner_row(
        ent(22, 27, "SYMPTOM", text="tosse", attributes={"negated": True}),
        ent(13, 19, "SYMPTOM"),
    )
    path = write_lines(tmp_path, ["", row, "   "])
    [record] = load_records(NER, path)
    assert record == Record(
        line=2,
        id="x",
        payload={"text": TEXT},
        gold={
            "entities": [
                {"start": 13, "end": 19, "text": "febbre", "label": "SYMPTOM", "attributes": ALL_FALSE},
                {
                    "start": 22,
                    "end": 27,
                    "text": "tosse",
                    "label": "SYMPTOM",
                    "attributes": {**ALL_FALSE, "negated": True},
                },
            ]
        },
    )
    qa = load_records(QA, write_lines(tmp_path, [{"id": "q", "context": TEXT, "question": "?", "answer": None}]))
    assert qa[0].payload == {"context": TEXT, "question": "?"} and qa[0].gold == {"answer": None}
    cls = load_records(CLS, write_lines(tmp_path, [good_row(CLS)]))
    assert cls[0].gold == {"labels": ["EMERGENCY_NOTE"]}


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ('{"id": "x", "text": ', "invalid JSON"),
        (b'{"id": "x", "text": "caff\xe8"}', "invalid UTF-8"),
        ("[1, 2]", "must be a JSON object"),
        ('"just a string"', "must be a JSON object"),
        ('{"id": "x", "text": NaN, "entities": []}', "invalid JSON"),
        ({"text": TEXT, "entities": []}, "id: missing"),
        ({"id": 7, "text": TEXT, "entities": []}, "id: must be a string"),
        ({"id": "", "text": TEXT, "entities": []}, "id: must be 1-256 characters"),
        ({"id": "x", "entities": []}, "text: missing"),
        ({"id": "x", "text": ["a"], "entities": []}, "text: must be a string"),
        ({"id": "x", "text": TEXT}, "entities: missing"),
        ({"id": "x", "text": TEXT, "entities": {}}, "entities: must be a list"),
        (ner_row("febbre"), "entities[0]: must be an object"),
        (ner_row(ent(13, 19), {"start": 22, "end": 27}), "entities[1].label: missing"),
        (ner_row({"end": 19, "label": "SYMPTOM"}), "entities[0].start: missing"),
        (ner_row(ent(13.0, 19)), "entities[0].start: must be an integer"),  # type: ignore[arg-type]
        (ner_row(ent("13", 19)), "entities[0].start: must be an integer"),  # type: ignore[arg-type]
        (ner_row(ent(True, 19)), "entities[0].start: must be an integer"),
        (ner_row(ent(22, 99)), "out of range"),
        (ner_row(ent(-1, 5)), "out of range"),
        (ner_row(ent(19, 19)), "out of range"),
        (ner_row(ent(19, 13)), "out of range"),
        (ner_row(ent(13, 19, text="tosse")), "text does not match"),
        (ner_row(ent(13, 19, text=5)), "entities[0].text: must be a string"),
        (ner_row(ent(14, 19)), "inside a word"),  # "ebbre"
        (ner_row(ent(13, 18)), "inside a word"),  # "febbr"
        (ner_row(ent(12, 19)), "whitespace"),  # " febbre"
        (ner_row(ent(13, 20)), "whitespace"),  # "febbre "
        (ner_row(ent(13, 19, "SINTOMO")), "unknown label 'SINTOMO'"),
        (ner_row(ent(13, 19, attributes={"negato": True})), "unknown attribute(s) ['negato']"),
        (ner_row(ent(13, 19, attributes={"negated": "yes"})), "attributes.negated: must be true or false"),
        (ner_row(ent(13, 19, attributes={"negated": 1})), "attributes.negated: must be true or false"),
        (ner_row(ent(13, 19, attributes=[])), "attributes: must be an object"),
        (ner_row(ent(13, 19, lable="X")), "unknown field(s) ['lable']"),
        (ner_row(ent(13, 19), ent(13, 19)), "entities[1]: duplicate entity"),
        (ner_row(ent(0, 81), text="a" * 20 + " " + "b" * 60), "exceeds the schema's maxLength 80"),
        ('{"id": "x", "text": "febbre \\ud800", "entities": []}', "unpaired UTF-16 surrogate"),
        ({"id": "ok", "text": TEXT, "entities": []}, "duplicate id (first on line 1)"),
    ],
)
def test_ner_refusals_name_the_line(tmp_path: Path, bad: str | bytes | dict[str, Any], reason: str) -> None:
    assert reason in refused(NER, tmp_path, bad)


def test_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    assert "inside a word" in refused(NER, tmp_path, ner_row(ent(14, 19)), line=5)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"id": "q", "context": TEXT, "question": "?"}, "answer: missing"),
        ({"id": "q", "context": TEXT, "answer": None}, "question: missing"),
        ({"id": "q", "context": TEXT, "question": " ", "answer": None}, "question: must not be empty"),
        ({"id": "q", "question": "?", "answer": None}, "context: missing"),
        ({"id": "q", "context": TEXT, "question": "?", "answer": "febbre"}, "answer: must be an object"),
        ({"id": "q", "context": TEXT, "question": "?", "answer": {"start": 13, "end": 99}}, "out of range"),
        ({"id": "q", "context": TEXT, "question": "?", "answer": {"start": 13, "end": 16}}, "inside a word"),
        ({"id": "q", "context": TEXT, "question": "?", "answer": {"start": 12, "end": 19}}, "whitespace"),
        (
            {"id": "q", "context": TEXT, "question": "?", "answer": {"start": 13, "end": 19, "text": "tosse"}},
            "text does not match",
        ),
        ({"id": "q", "context": "\ud800", "question": "?", "answer": None}, "surrogate"),
    ],
)
def test_qa_refusals(tmp_path: Path, bad: dict[str, Any], reason: str) -> None:
    assert reason in refused(QA, tmp_path, bad)


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ([], "at least one label"),
        (["DISCHARGE_SUMMARY", "LAB_REPORT"], "single-label"),
        (["NOTA"], "unknown label 'NOTA'"),
        ([3], "unknown label 3"),
        (["LAB_REPORT", "LAB_REPORT"], "repeated label"),
        ("LAB_REPORT", "labels: must be a list"),
    ],
)
def test_classification_refusals(tmp_path: Path, labels: Any, reason: str) -> None:
    assert reason in refused(CLS, tmp_path, {"id": "c", "text": TEXT, "labels": labels})


def test_every_bad_line_is_collected_and_the_message_is_capped(tmp_path: Path) -> None:
    lines: list[str | bytes | dict[str, Any]] = [GOOD_NER]
    lines += [ner_row(ent(14, 19)) | {"id": f"b{i}"} for i in range(25)]
    with pytest.raises(DataError) as info:
        load_records(NER, write_lines(tmp_path, lines))
    assert [n for n, _ in info.value.errors] == list(range(2, 27))
    message = str(info.value)
    assert "25 problem(s) on 25 line(s)" in message
    assert message.count("inside a word") == MAX_LISTED_ERRORS
    assert "line 21: " in message and "line 22: " not in message
    assert "... and 5 more" in message
    assert "febbre" not in message and "ebbre" not in message  # never the clinical text itself


def test_empty_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no records"):
        load_records(NER, write_lines(tmp_path, ["", "  "]))


# ------------------------------------------------------------------------ model outputs


def serve_ner(task: Task, record: Record, pairs: list[tuple[Ask, dict[str, Any]]]) -> list[Any]:
    """What the service returns if the model answers `pairs`: the type reads (grounds) each
    chunk's answer and merges them, as the runner has it do."""
    chunks = chunks_of(task, record)
    assert [ask.payload["text"] for ask, _ in pairs] == [c.text for c in chunks]
    item = TaskInput(record.id, record.payload, "text")
    tally = Tally()
    parts = [
        task.kind.read(task, item, chunk, [Answer(output, json.dumps(output))], tally)
        for chunk, (_, output) in zip(chunks, pairs, strict=True)
    ]
    assert not tally.dropped
    merged = task.kind.merge(task, item, parts, tally)
    return [(s.start, s.end, s.text, s.label, s.attributes) for s in merged.entities]


def serve(task: Task, record: Record, pairs: list[tuple[Ask, dict[str, Any]]]) -> dict[str, Any]:
    """The prediction (the response item read back) the service gives when the model answers
    every ask of every chunk as `pairs` has it."""
    prediction: dict[str, Any] = task.kind.prediction(served_document(task, record, pairs))
    return prediction


def served_document(task: Task, record: Record, pairs: list[tuple[Ask, dict[str, Any]]]) -> dict[str, Any]:
    """The response item the service gives when the model answers every ask of every chunk as
    `pairs` has it: read, merge and respond, as the runner does."""
    item = TaskInput(record.id, record.payload, task.kind.source_field)
    tally = Tally()
    parts, at = [], 0
    for chunk in chunks_of(task, record):
        asks = task.kind.asks(task, item.with_source(chunk.text))
        outputs = [output for _, output in pairs[at : at + len(asks)]]
        at += len(asks)
        parts.append(task.kind.read(task, item, chunk, [Answer(o, json.dumps(o)) for o in outputs], tally))
    assert at == len(pairs) and not tally.dropped
    result = task.kind.merge(task, item, parts, tally)
    response = task.kind.respond(task, ModelInfo(base="b", adapter=None, adapter_version=None), [item], [result])
    document: dict[str, Any] = response.model_dump()[task.kind.items_field][0]
    return document


def entity_key(entity: dict[str, Any]) -> tuple[int, int, str]:
    return entity["start"], entity["end"], entity["label"]


def gold_tuples(record: Record) -> list[Any]:
    return [(e["start"], e["end"], e["text"], e["label"], e["attributes"]) for e in record.gold["entities"]]


FILLER = " ".join(["Il decorso è stato regolare, senza eventi di rilievo nelle ore successive."] * 8)


def long_ner_row(n_notes: int) -> dict[str, Any]:
    """Synthetic notes and entity-free paragraphs joined by blank lines, offsets shifted: one long note.

    (The filler keeps chunks under the schema's 64 entities, so every gold entity can be served.)
    """
    text, entities = FILLER, []
    for note in examples_for_task(shipped_task("ner-it-clinical"), n_notes, seed=11):
        offset = len(text) + 2
        text = f"{text}\n\n{note['text']}\n\n{FILLER}"
        entities += [e | {"start": e["start"] + offset, "end": e["end"] + offset} for e in note["entities"]]
    return {"id": "long", "text": text, "entities": entities}


def test_long_ner_note_entities_lie_inside_their_chunks(tmp_path: Path) -> None:
    row = long_ner_row(12)
    [record] = load_records(NER, write_lines(tmp_path, [row]))
    chunks = chunks_of(NER, record)
    assert len(chunks) >= 3
    pairs = model_outputs(NER, record)
    assert len(pairs) == len(chunks)
    seen: set[tuple[int, int, str]] = set()
    in_overlaps = 0
    for chunk, (ask, output) in zip(chunks, pairs, strict=True):
        assert ask.payload == {"text": chunk.text} and ask.source == chunk.text
        expected = [e for e in record.gold["entities"] if chunk.start <= e["start"] and e["end"] <= chunk.end]
        # The lean answer: [text, label, then the attributes that hold, in the manifest's order].
        assert output["entities"] == [
            [e["text"], e["label"], *(a for a in NER.attribute_names if e["attributes"][a])] for e in expected
        ]
        for e in expected:  # offsets stay consistent once shifted into the chunk
            assert chunk.text[e["start"] - chunk.start : e["end"] - chunk.start] == e["text"]
            in_overlaps += (e["start"], e["end"], e["label"]) in seen
            seen.add((e["start"], e["end"], e["label"]))
        assert NER.validator.is_valid(output)
    # Every gold entity is in some chunk, and serving those outputs gives back exactly the gold.
    assert len(seen) == len(record.gold["entities"])
    assert in_overlaps > 0  # some entities are taught in two chunks: merging must not double them
    assert serve_ner(NER, record, pairs) == gold_tuples(record)


def test_ner_outputs_are_capped_at_max_items(tmp_path: Path) -> None:
    text = " ".join(["febbre"] * 70)
    row = ner_row(*[ent(7 * i, 7 * i + 6) for i in range(70)], text=text)
    [record] = load_records(NER, write_lines(tmp_path, [row]))
    [(_, output)] = model_outputs(NER, record)
    limit = NER.schema["properties"]["entities"]["maxItems"]
    assert len(output["entities"]) == limit == 64


def qa_long_context(answer_at_end: bool) -> tuple[str, int]:
    filler = " ".join(f"Frase numero {i} senza dati rilevanti." for i in range(150))
    target = "Terapia: furosemide 25 mg."
    context = f"{filler}\n\n{target}" if answer_at_end else f"{target}\n\n{filler}"
    return context, context.index("furosemide")


@pytest.mark.parametrize("answer_at_end", [True, False])
def test_qa_answer_only_in_the_chunks_that_hold_it(tmp_path: Path, answer_at_end: bool) -> None:
    context, start = qa_long_context(answer_at_end)
    row = {"id": "q", "context": context, "question": "Quale diuretico?", "answer": {"start": start, "end": start + 10}}
    [record] = load_records(QA, write_lines(tmp_path, [row]))
    chunks = chunks_of(QA, record)
    assert len(chunks) >= 3
    pairs = model_outputs(QA, record)
    holds = [c.start <= start and start + 10 <= c.end for c in chunks]
    assert [o["answer"] for _, o in pairs] == ["furosemide" if h else None for h in holds]
    assert holds[-1] == answer_at_end and holds[0] == (not answer_at_end)
    assert all(
        a.payload == {"context": c.text, "question": "Quale diuretico?"}
        for (a, _), c in zip(pairs, chunks, strict=True)
    )
    # Serving takes the first chunk that answers: it lands on the gold span.
    for chunk, (_, output) in zip(chunks, pairs, strict=True):
        span, _ = ground_answer(chunk.text, output["answer"])
        if span is not None:
            assert (span.start + chunk.start, span.end + chunk.start) == (start, start + 10)
            break
    else:
        pytest.fail("no chunk answers")


def test_qa_unanswerable_and_blank(tmp_path: Path) -> None:
    context, _ = qa_long_context(True)
    rows = [
        {"id": "none", "context": context, "question": "Allergie?", "answer": None},
        {"id": "blank", "context": "  \n ", "question": "Allergie?", "answer": None},
    ]
    unanswerable, blank = load_records(QA, write_lines(tmp_path, rows))
    pairs = model_outputs(QA, unanswerable)
    assert len(pairs) >= 3 and all(o == {"answer": None} for _, o in pairs)
    # The service answers a blank context without the model: nothing to learn from it.
    assert model_outputs(QA, blank) == []


def test_classification_labels_in_every_chunk(tmp_path: Path) -> None:
    text = " ".join(f"Riga {i} del referto." for i in range(300))
    [record] = load_records(CLS, write_lines(tmp_path, [{"id": "c", "text": text, "labels": ["LAB_REPORT"]}]))
    pairs = model_outputs(CLS, record)
    assert len(pairs) > 1 and all(o == {"labels": ["LAB_REPORT"]} for _, o in pairs)


def synthetic_records(tmp_path: Path, name: str, n: int, seed: int) -> tuple[list[dict[str, Any]], list[Record]]:
    """`n` synthetic rows for a shipped task, and the records loading them gives."""
    rows = examples_for_task(shipped_task(name), n, seed=seed)
    path = tmp_path / f"{name}.jsonl"
    write_jsonl(path, rows)
    return rows, load_records(TASKS[name], path)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_synthetic_round_trip(tmp_path: Path, name: str) -> None:
    task = TASKS[name]
    rows, records = synthetic_records(tmp_path, name, 60, seed=3)  # every synthetic line loads cleanly
    assert [r.id for r in records] == [row["id"] for row in rows]
    assert [r.line for r in records] == list(range(1, 61))
    for record, row in zip(records, rows, strict=True):
        pairs = model_outputs(task, record)
        assert pairs
        for _, output in pairs:
            assert task.validator.is_valid(output)
        if task.type == "ner":
            assert record.gold["entities"] == sorted(row["entities"], key=lambda e: e["start"])
            assert serve_ner(task, record, pairs) == gold_tuples(record)
        elif task.type == "deid":
            # The model answering the gold, joined with the detectors, is the gold: the rules
            # find the planted identifiers at exactly their offsets and nothing else.
            assert [entity_key(e) for e in record.gold["entities"]] == sorted(map(entity_key, row["spans"]))
            assert [entity_key(e) for e in serve(task, record, pairs)["entities"]] == [
                entity_key(e) for e in record.gold["entities"]
            ]
        elif task.type == "qa":
            assert record.gold["answer"] == row["answer"]
            assert [o["answer"] for _, o in pairs] == [row["answer"]["text"] if row["answer"] else None]
        elif task.type == "relations":
            served = serve(task, record, pairs)
            assert [entity_key(e) for e in served["entities"]] == [entity_key(e) for e in record.gold["entities"]]
            assert [r | {"confidence": None} for r in served["relations"]] == [
                r | {"confidence": None} for r in record.gold["relations"]
            ]
            assert len(record.gold["relations"]) == len(row["relations"])
        elif task.type == "form":
            served = serve(task, record, pairs)
            assert {n: {"value": v["value"], "evidence": v["evidence"]} for n, v in served["items"].items()} == (
                record.gold["items"]
            )
            assert len(record.gold["items"]) == len(row["items"])
        else:
            assert record.gold["labels"] == row["labels"]


def uncoded(gold: dict[str, Any]) -> dict[str, Any]:
    return gold | {"entities": [{k: v for k, v in e.items() if k != "codes"} for e in gold["entities"]]}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_a_served_answer_as_a_gold_record_is_the_gold_it_was_served_from(tmp_path: Path, name: str) -> None:
    # gold_fields turns a reviewed answer into training and evaluation data: what parse_gold
    # (medlora train and eval) reads back must be exactly the annotations the answer holds.
    task = TASKS[name]
    for record in synthetic_records(tmp_path, name, 30, seed=5)[1]:
        if task.type == "classification" and not record.gold["labels"]:
            continue
        document = served_document(task, record, model_outputs(task, record))
        payload, gold = task.kind.parse_gold(
            task, {"id": record.id, **record.payload, **task.kind.gold_fields(document)}
        )
        assert payload == record.payload
        # Served here without linking: an entity's codes come back only when it has some.
        assert gold == (uncoded(record.gold) if "entities" in gold else record.gold)
