"""A task type is one module behind one interface: a new one is served, batched and checked
without a line changed anywhere else. Here a toy type (key phrases: grounded spans, no
labels) is defined in this file, registered, and given a manifest and a schema."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field

from app.main import app_for
from app.settings import Settings
from app.tasks.chunking import Chunk, shift
from app.tasks.grounding import Span, ground_spans
from app.tasks.prompts import PromptRenderer
from app.tasks.protocol import DocumentsRequest, ModelInfo
from app.tasks.service import build_service
from app.tasks.types import base, task_types
from app.tasks.types.base import Answer, NoteWorld, Tally, Task, TaskInput, TaskType, register
from tests.conftest import SCHEMAS_DIR, TASKS_DIR
from tests.fakes import FAKE_BASE, FakeEngine, FakeTokenizer, write_fake_adapter


class PhrasesRequest(DocumentsRequest):
    task: str = Field(examples=["phrases-it"])


class PhrasesDocument(BaseModel):
    id: str
    phrases: list[dict[str, Any]]


class PhrasesResponse(BaseModel):
    task: str
    model: ModelInfo
    documents: list[PhrasesDocument]


class PhrasesType(TaskType[list[Span]]):
    name = "key-phrases"
    endpoint = "phrases"
    summary = "Key phrases of a note."
    request_model = PhrasesRequest
    response_model = PhrasesResponse

    def check(self, task: Task) -> str | None:
        return None if "phrases" in task.schema.get("properties", {}) else "schema: needs phrases"

    def grounded_strings(self, output: dict[str, Any]) -> list[str]:
        return list(output["phrases"])

    def format_lines(self, task: Task, part: str = "") -> list[str]:
        return ["", 'Answer with one JSON object only: {"phrases": [...]}.']

    def read(self, task: Task, item: TaskInput, chunk: Chunk, answers: list[Answer], tally: Tally) -> Any:
        grounded = ground_spans(chunk.text, [(p, "", {}) for p in answers[0].output["phrases"]])
        tally.dropped.update(grounded.dropped)
        return [shift(s, chunk.start) for s in grounded.spans]

    def merge(self, task: Task, item: TaskInput, parts: list[list[Span]], tally: Tally) -> list[Span]:
        return [s for part in parts for s in part]

    def respond(self, task: Task, model: ModelInfo, items: list[TaskInput], results: list[list[Span]]) -> BaseModel:
        docs = [
            PhrasesDocument(id=i.id, phrases=[{"start": s.start, "end": s.end, "text": s.text} for s in r])
            for i, r in zip(items, results, strict=True)
        ]
        return PhrasesResponse(task=task.name, model=model, documents=docs)

    def parse_gold(self, task: Task, obj: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
        return {"text": obj["text"]}, {"phrases": obj["phrases"]}

    def targets(self, task: Task, gold: dict[str, Any], chunk: Chunk) -> list[dict[str, Any]]:
        return [{"phrases": [p["text"] for p in gold["phrases"]]}]

    def prediction(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"phrases": item["phrases"]}

    def empty_prediction(self) -> dict[str, Any]:
        return {"phrases": []}

    def gold_fields(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"phrases": item["phrases"]}

    def score(self, task: Task, golds: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> dict[str, Any]:
        return {"n": len(golds)}

    def synthesize(self, task: Task, world: NoteWorld, n: int, seed: int) -> list[dict[str, Any]]:
        rng = random.Random(seed)
        notes = [world.compose(rng, world.note_kinds[0]) for _ in range(n)]
        return [{"id": str(i), "text": note.text, "phrases": []} for i, note in enumerate(notes)]


SCHEMA = {
    "type": "object",
    "properties": {
        "phrases": {
            "type": "array",
            "maxItems": 8,
            "items": {"type": "string", "maxLength": 60, "x-medlora-grounded": True},
        }
    },
    "required": ["phrases"],
    "additionalProperties": False,
}
MANIFEST = """
name: phrases-it
type: key-phrases
languages: [it]
instructions: Elenca le frasi chiave del testo.
schema: phrases-it.json
adapter: {name: phrases-it, version: "1", path: phrases-it}
"""


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    # The registry is global: register on a copy (of the discovered types), so that other tests
    # never see the toy type.
    monkeypatch.setattr(base, "_REGISTRY", dict(task_types()))
    register(PhrasesType)
    tasks, schemas, adapters = tmp_path / "tasks", tmp_path / "schemas", tmp_path / "adapters"
    for folder in (tasks, schemas):
        folder.mkdir()
    for path in TASKS_DIR.glob("*.yaml"):
        (tasks / path.name).write_text(path.read_text())
    for path in SCHEMAS_DIR.glob("*.json"):
        (schemas / path.name).write_text(path.read_text())
    (tasks / "phrases-it.yaml").write_text(MANIFEST)
    (schemas / "phrases-it.json").write_text(json.dumps(SCHEMA))
    for path in tasks.glob("*.yaml"):
        write_fake_adapter(adapters / path.stem)
    engine = FakeEngine(lambda request: json.dumps({"phrases": ["febbre alta", "tosse"]}))
    settings = Settings(
        model=FAKE_BASE, tasks_dir=tasks, schemas_dir=schemas, adapters_dir=adapters, batch_dir=tmp_path / "batches"
    )
    service = build_service(
        settings, engine=engine, renderer=PromptRenderer(FakeTokenizer()), metrics_registry=CollectorRegistry()
    )
    with TestClient(app_for(service), raise_server_exceptions=False) as test_client:
        deadline = time.monotonic() + 10
        while test_client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, test_client.get("/readyz").json()
            time.sleep(0.01)
        yield test_client


def test_a_new_task_type_is_served_with_no_other_code_changed(client: TestClient) -> None:
    text = "Febbre alta da tre giorni e tosse secca."
    r = client.post("/v1/phrases", json={"task": "phrases-it", "documents": [{"id": "d", "text": text}]})
    assert r.status_code == 200, r.text
    (doc,) = r.json()["documents"]
    # "febbre alta" is not in the text (case): dropped; "tosse" grounds to its offsets.
    assert doc["phrases"] == [{"start": text.index("tosse"), "end": text.index("tosse") + 5, "text": "tosse"}]
    assert "/v1/phrases" in client.get("/openapi.json").json()["paths"]
    listed = {t["name"]: t for t in client.get("/v1/tasks").json()["tasks"]}
    assert listed["phrases-it"]["type"] == "key-phrases"
    # The shared checks apply to it as to every type.
    wrong = client.post("/v1/ner", json={"task": "phrases-it", "documents": [{"id": "d", "text": text}]})
    assert wrong.status_code == 400 and wrong.json()["type"] == "urn:medlora:problem:wrong-task-type"
    # Batch jobs take its endpoint.
    upload = client.post("/v1/files", files={"file": ("in.jsonl", b"{}\n")}, data={"purpose": "batch"})
    batch = {"input_file_id": upload.json()["id"], "endpoint": "/v1/phrases", "completion_window": "24h"}
    assert client.post("/v1/batches", json=batch).status_code == 200


BLANK = " \n\t "


@pytest.mark.parametrize(
    ("endpoint", "task", "item", "nothing"),
    [
        ("ner", "ner-it-clinical", {"text": BLANK}, {"entities": []}),
        ("relations", "re-it-medication", {"text": BLANK}, {"entities": [], "relations": []}),
        ("classify", "classify-it-note-type", {"text": BLANK}, {"labels": [], "scores": {}}),
        ("qa", "qa-it-clinical", {"context": BLANK, "question": "Quale terapia?"}, {"answer": None}),
        ("forms", "crf-it-dyspnea", {"text": BLANK}, {}),
    ],
)
def test_every_task_type_answers_a_blank_document_with_nothing_found_without_the_engine(
    client_for: Any, endpoint: str, task: str, item: dict[str, str], nothing: dict[str, Any]
) -> None:
    # A model asked about an empty note answers something, confidently: it is never asked.
    client, engine = client_for(lambda r: json.dumps({"labels": ["LAB_REPORT"]}))
    items_field = "items" if endpoint == "qa" else "documents"
    r = client.post(f"/v1/{endpoint}", json={"task": task, items_field: [{"id": "d", **item}]})
    assert r.status_code == 200, r.text
    (answered,) = r.json()[items_field]
    assert {k: answered[k] for k in nothing} == nothing
    if endpoint == "forms":
        assert {i["status"] for i in answered["items"]} == {"unknown"}
    assert engine.calls == []
