"""Gateway logic against a fake engine: contract shapes, errors, grounding, hot-swap, cancellation.

Each behaviour here is exercised again against real vLLM in tests/e2e.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from app.engine.base import GenerationRequest, GenerationResult
from app.logs import JsonFormatter
from app.main import app_for
from tests.conftest import SHIPPED_TASKS
from tests.fakes import ALL_FALSE, last_input, ner_output, sample, write_fake_adapter


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == f"urn:medlora:problem:{slug}"
    assert body["status"] == status
    assert body["title"] and body["detail"]
    return dict(body)


def test_ner_returns_entities_with_exact_offsets(client_for: Any) -> None:
    client, _ = client_for(lambda r: ner_output(("febbre", "SYMPTOM"), ("amoxicillina", "DRUG")))
    text = "Paziente con febbre.\nIn terapia con amoxicillina."
    r = client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": [{"id": "d1", "text": text}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "ner-it-clinical"
    assert body["offset_unit"] == "unicode_code_point"
    assert body["model"] == {"base": "fake-org/Fake-Base", "adapter": "ner-it-clinical", "adapter_version": "1"}
    ents = body["documents"][0]["entities"]
    assert [(e["text"], e["label"]) for e in ents] == [("febbre", "SYMPTOM"), ("amoxicillina", "DRUG")]
    for e in ents:
        assert text[e["start"] : e["end"]] == e["text"]
        assert e["attributes"] == ALL_FALSE


def test_repeated_span_maps_to_successive_occurrences(client_for: Any) -> None:
    client, _ = client_for(lambda r: ner_output(("tosse", "SYMPTOM"), ("tosse", "SYMPTOM"), ("tosse", "SYMPTOM")))
    text = "tosse secca; poi tosse grassa"
    r = client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": [{"id": "d", "text": text}]})
    ents = r.json()["documents"][0]["entities"]
    # Two occurrences: the first two mentions map to them in order, the third is a duplicate.
    assert [(e["start"], e["end"]) for e in ents] == [(0, 5), (17, 22)]
    metrics = client.get("/metrics").text
    assert (
        'medlora_spans_dropped_total{adapter="ner-it-clinical@1",reason="duplicate",task="ner-it-clinical"} 1.0'
        in metrics
    )


def test_span_not_in_source_is_dropped_and_counted(client_for: Any) -> None:
    client, _ = client_for(lambda r: ner_output(("polmonite", "DISORDER"), ("febbre", "SYMPTOM"), ("febb", "SYMPTOM")))
    r = client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": [{"id": "d", "text": "febbre alta"}]})
    ents = r.json()["documents"][0]["entities"]
    # "febb" occurs only inside a word: not a span the grammar can produce, so not grounded.
    assert [e["text"] for e in ents] == ["febbre"]
    metrics = client.get("/metrics").text
    assert 'reason="not_in_source",task="ner-it-clinical"} 2.0' in metrics


def test_unicode_offsets_are_code_points(client_for: Any) -> None:
    client, _ = client_for(lambda r: ner_output(("caffè", "DRUG"), ("🙂 dolore", "SYMPTOM")))
    text = 'Nota: "x"\\ \t caffè\r\n🙂 dolore'
    r = client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": [{"id": "d", "text": text}]})
    ents = r.json()["documents"][0]["entities"]
    assert len(ents) == 2
    for e in ents:
        assert text[e["start"] : e["end"]] == e["text"]


def test_long_document_is_chunked_and_offsets_point_into_the_whole_text(client_for: Any) -> None:
    def respond(request: GenerationRequest) -> str:
        chunk = last_input(request)
        return ner_output(*(("febbre", "SYMPTOM"),) * chunk.count("febbre"))

    client, engine = client_for(respond)
    sentence = "Il paziente riferisce febbre serale da tre giorni, senza brividi e con buona tolleranza orale. "
    text = sentence * 64  # ~6,100 chars: several 1,500-char chunks with overlap, ~16 mentions per chunk
    r = client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": [{"id": "d", "text": text}]})
    assert r.status_code == 200, r.text
    ents = r.json()["documents"][0]["entities"]
    assert len(engine.calls) > 3
    expected = [i for i in range(len(text)) if text.startswith("febbre", i)]
    assert [e["start"] for e in ents] == expected
    assert all(text[e["start"] : e["end"]] == "febbre" for e in ents)


def test_qa_returns_grounded_answer_or_null(client_for: Any) -> None:
    def respond(request: GenerationRequest) -> str:
        return json.dumps({"answer": "furosemide" if "furosemide" in last_input(request) else None})

    client, _ = client_for(respond)
    ctx = "Dimesso con furosemide 25 mg."
    r = client.post(
        "/v1/qa",
        json={
            "task": "qa-it-clinical",
            "items": [
                {"id": "a", "context": ctx, "question": "Quale diuretico?"},
                {"id": "b", "context": "Nessuna terapia.", "question": "Quale diuretico?"},
            ],
        },
    )
    assert r.status_code == 200, r.text
    items = {i["id"]: i for i in r.json()["items"]}
    answer = items["a"]["answer"]
    assert answer["text"] == "furosemide" and ctx[answer["start"] : answer["end"]] == "furosemide"
    assert items["b"]["answer"] is None


def test_classify_returns_labels_from_the_task_label_set(client_for: Any) -> None:
    client, _ = client_for(lambda r: json.dumps({"labels": ["EMERGENCY_NOTE"]}))
    r = client.post(
        "/v1/classify", json={"task": "classify-it-note-type", "documents": [{"id": "d", "text": "Accesso in PS."}]}
    )
    assert r.status_code == 200, r.text
    assert r.json()["documents"] == [{"id": "d", "labels": ["EMERGENCY_NOTE"], "scores": {}}]  # no logprobs here


def test_unknown_task_is_404_problem(client_for: Any) -> None:
    client, _ = client_for(lambda r: "")
    body = assert_problem(
        client.post("/v1/ner", json={"task": "nope", "documents": [{"id": "d", "text": "x"}]}), 404, "unknown-task"
    )
    assert "ner-it-clinical" in body["tasks"]


def test_task_of_another_type_is_rejected(client_for: Any) -> None:
    client, _ = client_for(lambda r: "")
    assert_problem(
        client.post("/v1/ner", json={"task": "qa-it-clinical", "documents": [{"id": "d", "text": "x"}]}),
        400,
        "wrong-task-type",
    )


def test_malformed_body_is_422_without_echoing_text(client_for: Any) -> None:
    client, _ = client_for(lambda r: "")
    r = client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": [{"id": "d", "txt": "Mario Rossi HIV+"}]})
    body = assert_problem(r, 422, "invalid-request")
    assert body["errors"]
    assert "Mario Rossi" not in r.text
    assert_problem(client.post("/v1/ner", content=b"{not json"), 422, "invalid-request")


def test_lone_surrogate_is_rejected(client_for: Any) -> None:
    client, _ = client_for(lambda r: "")
    raw = b'{"task": "ner-it-clinical", "documents": [{"id": "d", "text": "a\\ud800b"}]}'
    assert_problem(
        client.post("/v1/ner", content=raw, headers={"content-type": "application/json"}), 422, "invalid-request"
    )


def test_input_limits_are_422_naming_where_and_the_spec_states_them(client_for: Any) -> None:
    client, _ = client_for(lambda r: ner_output(), max_documents=2, max_document_chars=50)
    docs = [{"id": str(i), "text": "x"} for i in range(3)]
    body = assert_problem(
        client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": docs}), 422, "invalid-request"
    )
    assert body["errors"] == [
        {"loc": ["body", "documents"], "msg": "List should have at most 2 items", "type": "too_long"}
    ]
    big = [{"id": "ok", "text": "x" * 50}, {"id": "big", "text": "x" * 51}]
    body = assert_problem(
        client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": big}), 422, "invalid-request"
    )
    assert [e["loc"] for e in body["errors"]] == [["body", "documents", "1", "text"]]
    qa = {"task": "qa-it-clinical", "items": [{"id": "q", "context": "y" * 51, "question": "?"}]}
    body = assert_problem(client.post("/v1/qa", json=qa), 422, "invalid-request")
    assert [e["loc"] for e in body["errors"]] == [["body", "items", "0", "context"]]
    # The contract says the same, from the same settings.
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["NerRequest"]["properties"]["documents"]["maxItems"] == 2
    assert schemas["DocumentIn"]["properties"]["text"]["maxLength"] == 50
    assert schemas["QaItemIn"]["properties"]["context"]["maxLength"] == 50
    # A body over the byte bound is refused before it is read.
    huge = b"x" * 2_000_000
    assert_problem(
        client.post("/v1/ner", content=huge, headers={"content-type": "application/json"}), 413, "payload-too-large"
    )


def test_duplicate_ids_are_rejected(client_for: Any) -> None:
    client, _ = client_for(lambda r: ner_output())
    docs = [{"id": "same", "text": "a"}, {"id": "same", "text": "b"}]
    assert_problem(client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": docs}), 422, "duplicate-id")


def test_cut_off_generation_is_a_5xx_problem_never_a_partial_result(client_for: Any) -> None:
    def respond(request: GenerationRequest) -> GenerationResult:
        return GenerationResult('{"entities":[{"text":"feb', "length", 10, request.max_tokens)

    client, _ = client_for(respond)
    r = client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": [{"id": "d", "text": "febbre"}]})
    assert_problem(r, 502, "generation-failed")
    # Counted by its reason (the HELP and TYPE lines are there whatever happened).
    invalid = sample(client.get("/metrics").text, "medlora_invalid_outputs_total", reason="finish_length")
    assert invalid == 1.0


def test_schema_invalid_output_is_rejected(client_for: Any) -> None:
    client, _ = client_for(lambda r: json.dumps({"entities": [["febbre", "NOT_A_LABEL"]]}))
    r = client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": [{"id": "d", "text": "febbre"}]})
    assert_problem(r, 502, "generation-failed")


def test_every_request_carries_grammar_and_worst_case_token_budget(client_for: Any) -> None:
    client, engine = client_for(lambda r: ner_output())
    client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": [{"id": "d", "text": "febbre alta"}]})
    (call,) = engine.calls
    assert "substring_chunks" in call.grammar and '"febbre"' in call.grammar
    # 64 entities, each the whole 11-character text with its label and every attribute
    # (`[`, the span, `,`, `"BODY_PART"`, 44 bytes of attributes, `]`, `,`): room for any answer.
    assert call.max_tokens == 2 + 64 * (1 + 13 + 1 + 11 + 44 + 1) + 63 + len('{"entities":}') + 1
    assert call.adapter is not None and call.adapter.key == "ner-it-clinical@1"


def test_failed_startup_is_503_on_readiness_and_liveness(make_fake_service: Any) -> None:
    from fastapi.testclient import TestClient

    service, engine = make_fake_service(lambda r: "")
    engine.fail_start = RuntimeError("no accelerator")
    with TestClient(app_for(service), raise_server_exceptions=False) as client:
        time.sleep(0.1)
        r = client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": [{"id": "d", "text": "x"}]})
        assert_problem(r, 503, "not-ready")
        assert r.headers["retry-after"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert ready.json()["engine"] == "fake"
        # A failed startup is terminal: liveness fails so the orchestrator restarts the process.
        live = client.get("/livez")
        assert live.status_code == 503 and live.json()["status"] == "failed"


def test_tasks_and_adapters_are_listed(client_for: Any) -> None:
    client, _ = client_for(lambda r: "")
    tasks = {t["name"]: t for t in client.get("/v1/tasks").json()["tasks"]}
    assert set(tasks) == set(SHIPPED_TASKS)
    ner = tasks["ner-it-clinical"]
    assert ner["type"] == "ner" and ner["languages"] == ["it"] and "DRUG" in ner["labels"]
    assert ner["schema"]["properties"]["entities"]["maxItems"] == 64
    assert ner["adapter"] == {"name": "ner-it-clinical", "version": "1"}
    adapters = {a["name"]: a for a in client.get("/v1/adapters").json()["adapters"]}
    assert adapters["qa-it-clinical"]["resident"] is True
    assert adapters["qa-it-clinical"]["tasks"] == ["qa-it-clinical"]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"rank": 64}, "exceeds the engine's max_lora_rank"),
        ({"base": "other/Model-7B"}, "trained for base model"),
        ({"targets": ["embed_tokens"]}, "unsupported target modules"),
    ],
)
def test_invalid_adapter_files_are_refused(
    client_for: Any, tmp_path: Path, kwargs: dict[str, Any], fragment: str
) -> None:
    client, engine = client_for(lambda r: "")
    path = write_fake_adapter(tmp_path / "bad", **kwargs)
    r = client.post("/v1/adapters", json={"name": "bad", "version": "1", "path": str(path)})
    assert fragment in assert_problem(r, 422, "invalid-adapter")["detail"]
    assert "bad@1" not in engine.loaded


def test_adapter_path_with_no_adapter_is_404_and_unusable_paths_never_500(client_for: Any, tmp_path: Path) -> None:
    client, _ = client_for(lambda r: "")
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "none", tmp_path / "empty", "x" * 5000, "a\x00b", "0" * 255 + "/0"):
        r = client.post("/v1/adapters", json={"name": "ghost", "version": "1", "path": str(path)[:4096]})
        assert_problem(r, 404, "adapter-not-found")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "adapter_config.json").write_text("{}")
    r = client.post("/v1/adapters", json={"name": "ghost", "version": "1", "path": str(tmp_path / "bad")})
    assert_problem(r, 422, "invalid-adapter")


def test_hot_swap_in_flight_requests_finish_on_old_adapter(client_for: Any, tmp_path: Path) -> None:
    client, engine = client_for(lambda r: ner_output(("febbre", "SYMPTOM")), delay_s=0.5)
    path = write_fake_adapter(tmp_path / "v2")
    assert (
        client.post("/v1/adapters", json={"name": "ner-it-clinical", "version": "2", "path": str(path)}).status_code
        == 201
    )

    results: list[Any] = []

    def slow_request() -> None:
        results.append(
            client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": [{"id": "d", "text": "febbre"}]})
        )

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.2)  # the request holds its lease on version 1 now
    switch = client.put("/v1/tasks/ner-it-clinical/adapter", json={"name": "ner-it-clinical", "version": "2"})
    assert switch.status_code == 200 and switch.json()["previous"] == "ner-it-clinical@1"
    # Version 1 is unused by tasks but still leased: delete waits for the request to finish.
    deleted = client.delete("/v1/adapters/ner-it-clinical/1")
    thread.join()
    assert deleted.status_code == 204
    assert results[0].status_code == 200
    assert results[0].json()["model"]["adapter_version"] == "1"
    after = client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": [{"id": "d", "text": "febbre"}]})
    assert after.json()["model"]["adapter_version"] == "2"
    assert engine.calls[-1].adapter is not None and engine.calls[-1].adapter.key == "ner-it-clinical@2"
    assert "ner-it-clinical@1" in engine.unloaded
    # The delete waited: version 1 left the engine only after the request leasing it had its answer.
    (slow,) = [c.request_id for c in engine.calls if c.adapter is not None and c.adapter.key == "ner-it-clinical@1"]
    assert engine.events.index(f"done:{slow}") < engine.events.index("unload:ner-it-clinical@1")


def test_adapter_bound_to_a_task_cannot_be_deleted(client_for: Any) -> None:
    client, _ = client_for(lambda r: "")
    body = assert_problem(client.delete("/v1/adapters/qa-it-clinical/1"), 409, "adapter-conflict")
    assert body["tasks"] == ["qa-it-clinical"]
    assert_problem(client.delete("/v1/adapters/none/1"), 404, "unknown-adapter")
    r = client.put("/v1/tasks/qa-it-clinical/adapter", json={"name": "none", "version": "1"})
    assert_problem(r, 404, "unknown-adapter")
    r = client.put("/v1/tasks/nope/adapter", json={"name": "qa-it-clinical", "version": "1"})
    assert_problem(r, 404, "unknown-task")


def test_client_disconnect_cancels_engine_work(make_fake_service: Any) -> None:
    service, engine = make_fake_service(lambda r: ner_output(), delay_s=30)
    app = app_for(service)
    body = json.dumps({"task": "ner-it-clinical", "documents": [{"id": "d", "text": "febbre"}]}).encode()

    async def scenario() -> list[dict[str, Any]]:
        await service.start()
        sent: list[dict[str, Any]] = []
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            # The client hangs up while the engine works (a cold first request can take longer
            # than any fixed delay to reach the engine).
            for _ in range(400):
                if engine.calls:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/ner",
            "raw_path": b"/v1/ner",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 8000),
            "root_path": "",
        }
        await asyncio.wait_for(app(scope, receive, send), timeout=5)
        return sent

    sent = asyncio.run(scenario())
    assert len(engine.calls) == 1
    assert engine.cancelled == [engine.calls[0].request_id]
    assert sent[0]["status"] == 499
    metrics = service.metrics_registry.get_sample_value(
        "medlora_requests_total",
        {
            "endpoint": "ner",
            "task": "ner-it-clinical",
            "adapter": "ner-it-clinical@1",
            "outcome": "client_disconnected",
        },
    )
    assert metrics == 1.0


def test_metrics_are_labelled_per_task_and_adapter(client_for: Any) -> None:
    client, _ = client_for(lambda r: ner_output(("febbre", "SYMPTOM")))
    client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": [{"id": "d", "text": "febbre"}]})
    text = client.get("/metrics").text
    assert (
        'medlora_requests_total{adapter="ner-it-clinical@1",endpoint="ner",outcome="ok",task="ner-it-clinical"} 1.0'
        in text
    )
    assert 'medlora_request_duration_seconds_count{adapter="ner-it-clinical@1",task="ner-it-clinical"} 1.0' in text
    assert 'medlora_task_adapter_info{adapter="ner-it-clinical",task="ner-it-clinical",version="1"} 1.0' in text


def test_logs_never_contain_clinical_text_on_any_path(client_for: Any, caplog: pytest.LogCaptureFixture) -> None:
    secret = "Mario Rossi, nato il 1/2/1950"

    def respond(request: GenerationRequest) -> str | GenerationResult:
        note = last_input(request)
        if "bug" in note:
            raise RuntimeError(f"cannot handle {note}")  # a bug whose message quotes the note
        if "cut" in note:
            return GenerationResult('{"entities":[["Rossi', "length", 10, 5)
        return ner_output(("Rossi", "DISORDER"), ("Verdi", "DRUG"))  # one span grounds, one is dropped

    client, _ = client_for(respond)
    bodies = [
        {"task": "ner-it-clinical", "documents": [{"id": "d", "text": secret}]},
        {"task": "ner-it-clinical", "documents": [{"id": "d", "txt": secret}]},
        {"task": "ner-it-clinical", "documents": [{"id": "d", "text": f"{secret} cut"}]},
        {"task": "ner-it-clinical", "documents": [{"id": "d", "text": f"{secret} bug"}]},
        {"task": "ner-it-clinical", "documents": [{"id": "d", "text": secret}, {"id": "d", "text": secret}]},
        {"task": "nope", "documents": [{"id": "d", "text": secret}]},
    ]
    with caplog.at_level(logging.DEBUG):  # every logger: medlora's, uvicorn's, Starlette's, asyncio's
        statuses = [client.post("/v1/ner", json=body).status_code for body in bodies]
    assert statuses == [200, 422, 502, 500, 422, 404]
    request_logs = [r for r in caplog.records if r.getMessage() == "request"]
    assert request_logs and request_logs[0].__dict__["chars"] == len(secret)
    formatter = JsonFormatter()
    for record in caplog.records:
        logged = formatter.format(record) + json.dumps(record.__dict__, default=str)
        assert "Rossi" not in logged and "1/2/1950" not in logged, logged


def test_shipped_tasks_fit_full_chunks_in_the_default_context(make_fake_service: Any) -> None:
    service, _ = make_fake_service(lambda r: "")
    for task in service.tasks.values():
        fits, needed = service.runner.full_chunk_fits(task)
        assert fits, (task.name, needed)


def test_request_can_pick_a_registered_adapter_or_the_base_model(client_for: Any, tmp_path: Path) -> None:
    client, engine = client_for(lambda r: ner_output(("febbre", "SYMPTOM")))
    path = write_fake_adapter(tmp_path / "canary")
    client.post("/v1/adapters", json={"name": "ner-canary", "version": "7", "path": str(path)})
    doc = [{"id": "d", "text": "febbre"}]
    r = client.post(
        "/v1/ner",
        json={"task": "ner-it-clinical", "adapter": {"name": "ner-canary", "version": "7"}, "documents": doc},
    )
    assert r.json()["model"]["adapter"] == "ner-canary" and engine.calls[-1].adapter is not None
    assert engine.calls[-1].adapter.key == "ner-canary@7"
    r = client.post("/v1/ner", json={"task": "ner-it-clinical", "adapter": "none", "documents": doc})
    assert r.json()["model"] == {"base": "fake-org/Fake-Base", "adapter": None, "adapter_version": None}
    assert engine.calls[-1].adapter is None
    # The task's own binding is untouched by either override.
    r = client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": doc})
    assert r.json()["model"]["adapter"] == "ner-it-clinical"
    r = client.post(
        "/v1/ner", json={"task": "ner-it-clinical", "adapter": {"name": "nope", "version": "1"}, "documents": doc}
    )
    assert_problem(r, 404, "unknown-adapter")
