"""OpenAI-compatible batch API against the fake engine, driven by the official `openai` client.

The same flow runs against real vLLM in tests/e2e/test_live_batch.py.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from app.engine.base import GenerationRequest, GenerationResult
from tests.fakes import FakeEngine, last_input

ALL_FALSE = {"negated": False, "uncertain": False, "historical": False, "family": False}


def respond(request: GenerationRequest) -> str | GenerationResult:
    text = last_input(request)
    if "FAIL" in text:
        return GenerationResult("", "length", 1, 1)  # a generation that cannot finish: 502
    return json.dumps({"entities": [[text.split()[0], "DRUG"]]})


def line(custom_id: str, text: str, **overrides: Any) -> str:
    body = {"task": "ner-it-clinical", "documents": [{"id": custom_id, "text": text}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/ner", "body": body, **overrides})


def jsonl(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


Started = Callable[..., tuple[TestClient, FakeEngine, openai.OpenAI]]


@pytest.fixture
def start(client_for: Callable[..., tuple[TestClient, FakeEngine]], tmp_path: Path) -> Started:
    def make(**kwargs: Any) -> tuple[TestClient, FakeEngine, openai.OpenAI]:
        kwargs.setdefault("batch_dir", tmp_path / "batches")  # shared by restarts within a test
        client, engine = client_for(respond, **kwargs)
        # TestClient is an httpx.Client: the official client talks to the app in memory.
        return client, engine, openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)

    return make


def wait_for(oai: openai.OpenAI, batch_id: str, statuses: set[str], timeout_s: float = 20) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = oai.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.02)


def content(oai: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(x) for x in oai.files.content(file_id).text.splitlines()]


def test_openai_client_runs_a_batch_and_bad_lines_go_to_the_error_file(start: Started) -> None:
    client, engine, oai = start()
    upload = jsonl(
        [
            line("a", "aspirina 100 mg"),
            line("b", "FAIL here"),
            "{not json",
            line("c", "x", url="/v1/qa"),
            line("a", "duplicate custom id"),
            json.dumps({"custom_id": "d", "method": "POST", "url": "/v1/ner", "body": {"task": "ner-it-clinical"}}),
            line("e", "eparina 4000 UI"),
        ]
    )
    uploaded = oai.files.create(file=("in.jsonl", io.BytesIO(upload)), purpose="batch")
    assert (uploaded.purpose, uploaded.bytes, uploaded.filename) == ("batch", len(upload), "in.jsonl")
    batch = oai.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/ner", completion_window="24h", metadata={"ward": "7"}
    )  # type: ignore[arg-type]
    assert batch.status in {"validating", "in_progress"} and batch.metadata == {"ward": "7"}

    done = wait_for(oai, batch.id, {"completed"})
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (7, 2, 5)
    assert done.completed_at and done.in_progress_at and done.finalizing_at

    outputs = {o["custom_id"]: o for o in content(oai, done.output_file_id)}
    assert set(outputs) == {"a", "e"}
    direct = client.post("/v1/ner", json=json.loads(line("a", "aspirina 100 mg"))["body"]).json()
    assert outputs["a"]["response"]["status_code"] == 200
    assert outputs["a"]["response"]["body"] == direct  # a batch line gets what the endpoint gives
    assert outputs["a"]["error"] is None and outputs["a"]["id"] == f"{batch.id}-1"

    errors = {e["id"].rsplit("-", 1)[1]: e for e in content(oai, done.error_file_id)}
    assert {n: (e["custom_id"], e["response"]["status_code"], e["error"]["code"]) for n, e in errors.items()} == {
        "2": ("b", 502, "generation-failed"),
        "3": (None, 400, "invalid-line"),
        "4": ("c", 400, "invalid-line"),
        "5": ("a", 422, "duplicate-id"),
        "6": ("d", 422, "invalid-request"),
    }
    assert errors["6"]["response"]["body"]["errors"][0]["loc"] == ["documents"]
    assert engine.calls[-1].priority == 0  # the direct request
    listed = oai.batches.list()
    assert [b.id for b in listed.data] == [batch.id]


def test_restart_resumes_unfinished_jobs_without_losing_or_repeating_lines(start: Started) -> None:
    client, engine, oai = start(batch_concurrency=2)
    engine.delay_s = 0.1
    n = 60
    uploaded = oai.files.create(
        file=("in.jsonl", io.BytesIO(jsonl([line(f"c{i}", f"farmaco{i} 1 cp") for i in range(n)]))), purpose="batch"
    )
    batch = oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/ner", completion_window="24h")  # type: ignore[arg-type]
    deadline = time.monotonic() + 10
    while (counts := oai.batches.retrieve(batch.id).request_counts) is None or counts.completed < 6:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    client.__exit__(None, None, None)  # shutdown mid-job: in-flight lines are aborted
    first_calls = len(engine.calls)
    assert first_calls < n

    _, engine2, oai2 = start(batch_concurrency=2)
    done = wait_for(oai2, batch.id, {"completed"})
    outputs = content(oai2, done.output_file_id)
    assert sorted(o["custom_id"] for o in outputs) == sorted(f"c{i}" for i in range(n))  # each exactly once
    assert all(o["response"]["body"]["documents"][0]["id"] == o["custom_id"] for o in outputs)
    assert done.request_counts is not None and done.request_counts.completed == n
    # Only lines without a written result ran again (at most the aborted in-flight ones twice).
    assert len(engine2.calls) <= n - 6 and len(engine2.calls) + first_calls <= n + 2


def test_cancel_keeps_finished_lines_and_finished_batches_cannot_be_cancelled(start: Started) -> None:
    client, engine, oai = start(batch_concurrency=1)
    engine.delay_s = 0.05
    uploaded = oai.files.create(
        file=("in.jsonl", io.BytesIO(jsonl([line(f"c{i}", f"farmaco{i}") for i in range(50)]))), purpose="batch"
    )
    batch = oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/ner", completion_window="24h")  # type: ignore[arg-type]
    wait_for(oai, batch.id, {"in_progress"})
    time.sleep(0.2)
    assert oai.batches.cancel(batch.id).status == "cancelling"
    cancelled = wait_for(oai, batch.id, {"cancelled"})
    assert cancelled.cancelling_at and cancelled.cancelled_at
    outputs = content(oai, cancelled.output_file_id)
    assert 0 < len(outputs) < 50
    assert cancelled.request_counts is not None and cancelled.request_counts.completed == len(outputs)
    response = client.post(f"/v1/batches/{batch.id}/cancel")
    assert response.status_code == 409
    assert response.json()["type"] == "urn:medlora:problem:batch-not-cancellable"
    # The input of a finished batch may now be deleted; its outputs stay.
    assert oai.files.delete(uploaded.id).deleted
    assert content(oai, cancelled.output_file_id) == outputs
    # Aborted lines gave their engine slots back: the single slot still serves a new job.
    engine.delay_s = 0.0
    again = oai.files.create(file=("in.jsonl", io.BytesIO(jsonl([line("z", "farmacoZ")]))), purpose="batch")
    batch2 = oai.batches.create(input_file_id=again.id, endpoint="/v1/ner", completion_window="24h")  # type: ignore[arg-type]
    assert [o["custom_id"] for o in content(oai, wait_for(oai, batch2.id, {"completed"}).output_file_id)] == ["z"]


def test_upload_and_create_errors_are_problems(start: Started) -> None:
    client, _, oai = start(batch_max_lines=3, batch_max_upload_bytes=2000)

    def upload(data: bytes, purpose: str = "batch") -> Any:
        return client.post("/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": purpose})

    cases = [
        (upload(jsonl([line("a", "x")] * 4)), 413, "payload-too-large"),
        (upload(b"x" * 2001), 413, "payload-too-large"),
        (upload(b""), 422, "invalid-request"),
        (upload(jsonl([line("a", "x")]), purpose="fine-tune"), 422, "invalid-request"),
        (client.get("/v1/batches/batch-nope"), 404, "not-found"),
        (client.get("/v1/files/file-nope/content"), 404, "not-found"),
    ]
    good = upload(jsonl([line("a", "x")])).json()["id"]
    create = {"input_file_id": good, "endpoint": "/v1/ner", "completion_window": "24h"}
    cases += [
        (client.post("/v1/batches", json={**create, "endpoint": "/v1/chat/completions"}), 422, "invalid-request"),
        (client.post("/v1/batches", json={**create, "completion_window": "1h"}), 422, "invalid-request"),
        (client.post("/v1/batches", json={**create, "input_file_id": "file-nope"}), 404, "not-found"),
        (client.post("/v1/batches", json={**create, "surprise": 1}), 422, "invalid-request"),
    ]
    for response, status, slug in cases:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == f"urn:medlora:problem:{slug}"
    # Nothing half-uploaded is left behind.
    assert [f.id for f in oai.files.list().data] == [good]
    assert sorted(p.name for p in (Path(client.app.state.service.settings.batch_dir) / "files").iterdir()) == [  # type: ignore[attr-defined]
        f"{good}.jsonl"
    ]


def test_the_batch_api_accepts_the_relation_and_form_endpoints(start: Started) -> None:
    client, _, oai = start()
    for endpoint, task, field in (
        ("/v1/relations", "re-it-medication", "relations"),
        ("/v1/forms", "crf-it-dyspnea", "items"),
    ):
        body = {"task": task, "documents": [{"id": "a", "text": "   "}]}  # blank: answered without the model
        upload = jsonl([json.dumps({"custom_id": "a", "method": "POST", "url": endpoint, "body": body})])
        uploaded = oai.files.create(file=("in.jsonl", io.BytesIO(upload)), purpose="batch")
        batch = oai.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]
        done = wait_for(oai, batch.id, {"completed"})
        [output] = content(oai, done.output_file_id)
        assert output["response"]["body"] == client.post(endpoint, json=body).json()
        assert field in output["response"]["body"]["documents"][0]
