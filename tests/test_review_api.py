"""The review API against the fake engine: notes kept for review, decisions checked and saved
with their version, queues least certain first, exports that `medlora train`/`eval` read.

The same loop runs through the page on real vLLM in tests/e2e/test_live_ui.py.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.auth import hash_key
from app.engine.base import GenerationRequest
from app.review.changes import count_changes
from app.training.datasets import load_records
from tests.conftest import shipped_task
from tests.fakes import FakeEngine, last_input

NOTE = "Paziente in terapia con aspirina 100 mg e ramipril 5 mg."
# The fake model's confidence in every byte of an answer, by the note it answers.
CERTAINTY = {"aspirina": 0.99, "ramipril": 0.4, "warfarin": 0.7}

Client = Callable[..., tuple[TestClient, FakeEngine]]


def respond(request: GenerationRequest) -> str:
    words = [w for w in last_input(request).split() if w in CERTAINTY]
    return json.dumps({"entities": [[w, "DRUG"] for w in words]})


def logprob(answer: str, offset: int) -> float:
    # The least certain drug named in the answer sets every byte's probability.
    named = [p for w, p in CERTAINTY.items() if w in answer]
    return math.log(min(named)) if named else 0.0


@pytest.fixture
def client(client_for: Client, tmp_path: Path) -> TestClient:
    return client_for(respond, logprob=logprob, review_dir=tmp_path / "reviews")[0]


def review_note(client: TestClient, text: str = NOTE, note_id: str = "n1") -> dict[str, Any]:
    body = {"task": "ner-it-clinical", "documents": [{"id": note_id, "text": text}]}
    response = client.post("/v1/reviews/annotate/ner", json=body)
    assert response.status_code == 200, response.text
    (review,) = response.json()["data"]
    return dict(review)


def save(client: TestClient, review: dict[str, Any], decision: dict[str, Any], status: str = "reviewed") -> Any:
    body = {"version": review["version"], "decision": decision, "status": status}
    return client.put(f"/v1/reviews/items/{review['id']}", json=body)


def entity(text: str, word: str, label: str = "DRUG") -> dict[str, Any]:
    start = text.index(word)
    attributes = dict.fromkeys(shipped_task("ner-it-clinical").attribute_names, False)
    return {"start": start, "end": start + len(word), "text": word, "label": label, "attributes": attributes}


def test_a_note_annotated_for_review_keeps_the_answer_and_starts_the_decision_from_it(client: TestClient) -> None:
    direct = client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": [{"id": "n1", "text": NOTE}]})
    review = review_note(client)
    assert review["answer"] == direct.json()["documents"][0]
    assert review["model"] == direct.json()["model"]
    assert review["input"] == {"text": NOTE} and review["source_id"] == "n1"
    assert review["decision"] == {"entities": [entity(NOTE, "aspirina"), entity(NOTE, "ramipril")]}
    assert (review["status"], review["version"], review["queue"]) == ("pending", 1, "notes-ner-it-clinical")
    assert review["min_confidence"] == pytest.approx(0.4, abs=0.01)
    assert review["changes"] == {"accepted": 2, "edited": 0, "deleted": 0, "added": 0}
    # Where grounding lets a span start or end: word edges, never inside "aspirina".
    start = NOTE.index("aspirina")
    assert {0, start, start + len("aspirina"), len(NOTE)} <= set(review["bounds"])
    assert start + 1 not in review["bounds"]


def test_a_saved_decision_is_counted_against_the_answer_and_survives_a_restart(
    client_for: Client, tmp_path: Path
) -> None:
    first, _ = client_for(respond, logprob=logprob, review_dir=tmp_path / "reviews")
    review = review_note(first)
    decision = {"entities": [entity(NOTE, "aspirina", "DOSAGE"), entity(NOTE, "100 mg", "DOSAGE")]}
    saved = save(first, review, decision)
    assert saved.status_code == 200, saved.text
    assert saved.headers["etag"] == '"2"'
    assert saved.json()["changes"] == {"accepted": 0, "edited": 1, "deleted": 1, "added": 1}
    first.__exit__(None, None, None)

    again, _ = client_for(respond, logprob=logprob, review_dir=tmp_path / "reviews")
    kept = again.get(f"/v1/reviews/items/{review['id']}").json()
    assert (kept["decision"], kept["status"], kept["version"]) == (decision, "reviewed", 2)


def test_a_save_on_a_version_another_tab_replaced_is_refused_and_overwrites_nothing(client: TestClient) -> None:
    review = review_note(client)
    assert save(client, review, {"entities": []}).status_code == 200  # tab one
    stale = save(client, review, {"entities": [entity(NOTE, "ramipril")]})  # tab two, still at version 1
    assert stale.status_code == 409
    assert stale.json()["type"] == "urn:medlora:problem:review-conflict"
    assert stale.json()["current_version"] == 2
    assert client.get(f"/v1/reviews/items/{review['id']}").json()["decision"] == {"entities": []}


@pytest.mark.parametrize(
    "decision",
    [
        {"entities": [{**entity(NOTE, "aspirina"), "start": NOTE.index("aspirina") + 1}]},  # text off its offsets
        {"entities": [{**entity(NOTE, "aspirina"), "end": NOTE.index("aspirina") + 4, "text": "aspi"}]},  # in a word
        {"entities": [entity(NOTE, "aspirina", "NOT-A-LABEL")]},
        {"entities": [], "labels": ["x"]},  # a field this task has not
        {"entities": "none"},
    ],
    ids=["shifted", "inside-a-word", "unknown-label", "unknown-field", "not-a-list"],
)
def test_a_decision_that_does_not_fit_its_note_is_refused(client: TestClient, decision: dict[str, Any]) -> None:
    review = review_note(client)
    refused = save(client, review, decision)
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["type"] == "urn:medlora:problem:invalid-review"
    assert "aspirina" not in body["detail"]  # the problem never quotes the note
    assert client.get(f"/v1/reviews/items/{review['id']}").json()["version"] == 1


def test_reviews_belong_to_the_key_that_made_them(client_for: Client, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"ward-1 {hash_key('key-one-0123456789abcdef')}\nward-2 {hash_key('key-two-0123456789abcdef')}\n")
    client, _ = client_for(respond, logprob=logprob, api_keys_file=keys, review_dir=tmp_path / "reviews")
    one = {"Authorization": "Bearer key-one-0123456789abcdef"}
    two = {"Authorization": "Bearer key-two-0123456789abcdef"}
    body = {"task": "ner-it-clinical", "documents": [{"id": "n1", "text": NOTE}]}
    review = client.post("/v1/reviews/annotate/ner", json=body, headers=one).json()["data"][0]
    url = f"/v1/reviews/items/{review['id']}"
    assert client.get(url, headers=one).status_code == 200
    assert client.get(url, headers=two).status_code == 404
    put = client.put(url, headers=two, json={"version": 1, "decision": {"entities": []}, "status": "reviewed"})
    assert put.status_code == 404
    assert client.delete(url, headers=two).status_code == 404
    assert client.get("/v1/reviews/queues", headers=two).json()["data"] == []
    assert client.get("/v1/reviews/queues/notes-ner-it-clinical", headers=two).json()["total"] == 0
    assert client.get("/v1/reviews/queues/notes-ner-it-clinical/export", headers=two).content == b""
    assert client.get(url).status_code == 401


def run_batch(client: TestClient, notes: dict[str, str]) -> str:
    lines = [
        json.dumps(
            {
                "custom_id": f"line-{note_id}",
                "method": "POST",
                "url": "/v1/ner",
                "body": {"task": "ner-it-clinical", "documents": [{"id": note_id, "text": text}]},
            }
        )
        for note_id, text in notes.items()
    ]
    upload = client.post(
        "/v1/files", files={"file": ("in.jsonl", "\n".join(lines).encode())}, data={"purpose": "batch"}
    ).json()
    batch = client.post(
        "/v1/batches", json={"input_file_id": upload["id"], "endpoint": "/v1/ner", "completion_window": "24h"}
    ).json()
    deadline = time.monotonic() + 20
    while (status := client.get(f"/v1/batches/{batch['id']}").json()["status"]) != "completed":
        assert time.monotonic() < deadline, status
        time.sleep(0.02)
    return str(batch["id"])


def test_a_finished_batch_opens_as_a_queue_least_certain_first(client: TestClient) -> None:
    notes = {
        "sure": "Prosegue aspirina 100 mg.",
        "unsure": "Iniziato ramipril 5 mg.",
        "middling": "In terapia con warfarin da ieri.",
        "nothing": "Nessuna terapia in corso.",
    }
    batch_id = run_batch(client, notes)
    opened = client.post("/v1/reviews/imports", json={"batch_id": batch_id})
    assert opened.json() == {"queue": batch_id, "created": 4, "total": 4}
    queue = client.get(f"/v1/reviews/queues/{batch_id}").json()
    assert [item["source_id"] for item in queue["data"]] == ["unsure", "middling", "sure", "nothing"]
    assert (queue["reviewed"], queue["total"]) == (0, 4)
    # Opened again: the same queue, nothing doubled.
    assert client.post("/v1/reviews/imports", json={"batch_id": batch_id}).json()["created"] == 0
    first = client.get(f"/v1/reviews/items/{queue['data'][0]['id']}").json()
    assert first["input"] == {"text": notes["unsure"]}
    assert save(client, first, first["decision"]).status_code == 200
    queue = client.get(f"/v1/reviews/queues/{batch_id}").json()
    assert (queue["reviewed"], queue["total"]) == (1, 4)
    listed = client.get("/v1/reviews/queues").json()["data"]
    assert {"queue": batch_id, "task": "ner-it-clinical", "total": 4, "reviewed": 1} in [
        {k: q[k] for k in ("queue", "task", "total", "reviewed")} for q in listed
    ]


def test_an_unknown_or_unfinished_batch_is_not_opened(client: TestClient) -> None:
    missing = client.post("/v1/reviews/imports", json={"batch_id": "batch-nope"})
    assert (missing.status_code, missing.json()["type"]) == (404, "urn:medlora:problem:not-found")


def test_the_export_holds_the_reviewed_notes_as_train_and_eval_read_them(client: TestClient, tmp_path: Path) -> None:
    reviewed = review_note(client, note_id="a")
    review_note(client, "Paziente in terapia con warfarin.", note_id="b")  # left pending: not exported
    decision = {"entities": [entity(NOTE, "aspirina"), entity(NOTE, "100 mg", "DOSAGE")]}
    assert save(client, reviewed, decision).status_code == 200
    export = client.get("/v1/reviews/queues/notes-ner-it-clinical/export")
    assert export.status_code == 200
    (record,) = [json.loads(line) for line in export.text.splitlines()]
    assert record["review"]["source_id"] == "a"
    assert record["review"]["model"]["adapter"] == reviewed["model"]["adapter"]
    assert record["review"]["changes"] == {"accepted": 1, "edited": 0, "deleted": 1, "added": 1}
    path = tmp_path / "export.jsonl"
    path.write_bytes(export.content)
    (loaded,) = load_records(shipped_task("ner-it-clinical"), path)
    assert loaded.payload == {"text": NOTE}
    assert [(e["start"], e["end"], e["label"]) for e in loaded.gold["entities"]] == [
        (e["start"], e["end"], e["label"]) for e in decision["entities"]
    ]


def test_a_deleted_review_is_gone(client: TestClient) -> None:
    review = review_note(client)
    assert client.delete(f"/v1/reviews/items/{review['id']}").json() == {
        "id": review["id"],
        "object": "review",
        "deleted": True,
    }
    assert client.get(f"/v1/reviews/items/{review['id']}").status_code == 404


# -- what a reviewer changed, for every shape of gold fields ----------------------------------


def span(start: int, end: int, label: str = "DRUG", **extra: Any) -> dict[str, Any]:
    return {"start": start, "end": end, "text": "x" * (end - start), "label": label, **extra}


def test_changes_count_accepted_relabelled_widened_deleted_and_added_spans() -> None:
    model = {"entities": [span(0, 4), span(10, 14), span(20, 24), span(30, 34)]}
    decision = {"entities": [span(0, 4), span(10, 14, "DOSE"), span(20, 27), span(40, 44)]}
    assert count_changes(model, decision).to_dict() == {"accepted": 1, "edited": 2, "deleted": 1, "added": 1}


def test_changes_count_relations_form_items_answers_and_labels() -> None:
    relations_model = {
        "entities": [span(0, 4, id="e1"), span(5, 9, id="e2")],
        "relations": [{"type": "dose", "head": "e1", "tail": "e2"}],
    }
    relations_decision = {"entities": relations_model["entities"], "relations": []}
    assert count_changes(relations_model, relations_decision).to_dict() == {
        "accepted": 2,
        "edited": 0,
        "deleted": 1,
        "added": 0,
    }
    form_model = {
        "items": [
            {"name": "age", "status": "filled", "value": 70, "evidence": [span(0, 2)]},
            {"name": "fever", "status": "unknown", "value": None, "evidence": []},
        ]
    }
    form_decision = {"items": [form_model["items"][0], {**form_model["items"][1], "status": "filled", "value": True}]}
    assert count_changes(form_model, form_decision).to_dict() == {"accepted": 1, "edited": 1, "deleted": 0, "added": 0}
    assert count_changes({"answer": None}, {"answer": span(3, 9)}).to_dict()["added"] == 1
    assert count_changes({"labels": ["a"]}, {"labels": ["b"]}).to_dict() == {
        "accepted": 0,
        "edited": 0,
        "deleted": 1,
        "added": 1,
    }


def test_the_cli_export_from_the_store_is_the_api_export(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli import main

    reviewed = review_note(client)
    assert save(client, reviewed, {"entities": [entity(NOTE, "ramipril")]}).status_code == 200
    monkeypatch.setenv("MEDLORA_REVIEW_DIR", str(tmp_path / "reviews"))
    out = tmp_path / "cli.jsonl"
    assert main(["review", "export", "--queue", "notes-ner-it-clinical", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["records"] == 1
    assert out.read_bytes() == client.get("/v1/reviews/queues/notes-ner-it-clinical/export").content
    # Another key's reviews (or none) are not this export's.
    other = tmp_path / "other.jsonl"
    assert main(["review", "export", "--queue", "notes-ner-it-clinical", "--out", str(other), "--owner", "x"]) == 0
    assert other.read_text() == ""


def test_an_annotate_run_opens_least_certain_first_with_bad_lines_reported(client: TestClient) -> None:
    from app.batch.annotate import output_line

    notes = {"sure": "Prosegue aspirina 100 mg.", "unsure": "Iniziato ramipril 5 mg.", "blank": "Nessuna terapia."}
    kind = shipped_task("ner-it-clinical").kind
    output = []
    for note_id, text in notes.items():
        body = {"task": "ner-it-clinical", "documents": [{"id": note_id, "text": text}]}
        output.append(json.dumps(output_line(kind, client.post("/v1/ner", json=body).json())))
    shifted = json.loads(output[0])
    shifted["id"], shifted["entities"][0]["start"] = "copy", shifted["entities"][0]["start"] + 1
    output += [json.dumps(shifted), "{not json", json.dumps({**json.loads(output[1]), "id": "nowhere"})]
    notes_file = "\n".join(json.dumps({"id": k, "text": v}) for k, v in {**notes, "copy": notes["sure"]}.items())
    files = {"notes": ("notes.jsonl", notes_file.encode()), "annotations": ("out.jsonl", "\n".join(output).encode())}
    opened = client.post("/v1/reviews/imports/annotate", data={"task": "ner-it-clinical"}, files=files)
    assert opened.status_code == 200, opened.text
    body = opened.json()
    assert (body["created"], body["total"], body["skipped_count"]) == (3, 3, 3)
    assert [(s["file"], s["line"]) for s in body["skipped"]] == [
        ("annotations", 5),
        ("annotations", 4),
        ("annotations", 6),
    ]
    assert "does not fit its note" in body["skipped"][1]["reason"] and "aspirina" not in json.dumps(body)
    assert "no note with this id" in body["skipped"][2]["reason"]
    queue = client.get(f"/v1/reviews/queues/{body['queue']}").json()
    assert [item["source_id"] for item in queue["data"]] == ["unsure", "sure", "blank"]
    again = client.post("/v1/reviews/imports/annotate", data={"task": "ner-it-clinical"}, files=files).json()
    assert (again["queue"], again["created"], again["total"]) == (body["queue"], 0, 3)
    unknown = client.post("/v1/reviews/imports/annotate", data={"task": "nope"}, files=files)
    assert unknown.status_code == 404
