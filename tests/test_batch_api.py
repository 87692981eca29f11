"""OpenAI-compatible batch API against the fake engine, driven by the official `openai` client.

The same flow runs against real vLLM in tests/e2e/test_live_batch.py.
"""

from __future__ import annotations

import io
import itertools
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from app.engine.base import EngineDead, GenerationRequest, GenerationResult
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


def test_a_dead_engine_stops_the_job_without_error_lines_and_the_restart_finishes_it(
    start: Started, tmp_path: Path
) -> None:
    client, engine, oai = start(batch_concurrency=2)
    engine.delay_s = 0.2
    n = 30
    uploaded = oai.files.create(
        file=("in.jsonl", io.BytesIO(jsonl([line(f"c{i}", f"farmaco{i} 1 cp") for i in range(n)]))), purpose="batch"
    )
    batch = oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/ner", completion_window="24h")  # type: ignore[arg-type]
    deadline = time.monotonic() + 10
    while (counts := oai.batches.retrieve(batch.id).request_counts) is None or counts.completed < 5:
        assert time.monotonic() < deadline
        time.sleep(0.02)

    def die(request: GenerationRequest) -> str:
        engine.failure = "the vLLM engine process died"
        raise EngineDead("the engine process died during the request")

    engine.respond = die
    service = client.app.state.service  # type: ignore[attr-defined]
    runner = next(e for e in client.app.state.extensions if hasattr(e, "runner")).runner  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while any(not job.done() for job in runner._jobs.values()):  # the job's own task
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert service.failure is not None
    stopped = oai.batches.retrieve(batch.id)
    assert stopped.status == "in_progress" and stopped.request_counts is not None
    assert stopped.request_counts.failed == 0  # no line was blamed for the engine's death
    assert not (tmp_path / "batches" / "batches" / batch.id / "errors.jsonl").read_bytes()
    client.__exit__(None, None, None)

    _, _, oai2 = start(batch_concurrency=2)  # the restart Kubernetes does
    done = wait_for(oai2, batch.id, {"completed"})
    assert sorted(o["custom_id"] for o in content(oai2, done.output_file_id)) == sorted(f"c{i}" for i in range(n))
    assert done.error_file_id is None and done.request_counts is not None and done.request_counts.failed == 0


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


def test_an_empty_upload_is_a_batch_with_nothing_to_do(start: Started) -> None:
    _, _, oai = start()
    for data in (b"", b"\n  \n"):
        uploaded = oai.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
        batch = oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/ner", completion_window="24h")  # type: ignore[arg-type]
        done = wait_for(oai, batch.id, {"completed"})
        assert done.request_counts is not None and (done.request_counts.total, done.request_counts.completed) == (0, 0)
        assert done.output_file_id is None and done.error_file_id is None


def test_upload_and_create_errors_are_problems(start: Started) -> None:
    client, _, oai = start(batch_max_lines=3, batch_max_upload_bytes=2000)

    def upload(data: bytes, purpose: str = "batch") -> Any:
        return client.post("/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": purpose})

    cases = [
        (upload(jsonl([line("a", "x")] * 4)), 413, "payload-too-large"),
        (upload(b"x" * 2001), 413, "payload-too-large"),
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


# -- defects: each test below failed on the code before its fix ----------------------------


def upload_bytes(client: TestClient, data: bytes, headers: dict[str, str] | None = None) -> Any:
    return client.post("/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"}, headers=headers)


def create(client: TestClient, file_id: str, headers: dict[str, str] | None = None, **overrides: Any) -> Any:
    body = {"input_file_id": file_id, "endpoint": "/v1/ner", "completion_window": "24h", **overrides}
    return client.post("/v1/batches", json=body, headers=headers)


def assert_quota_exceeded(response: Any, limit: int) -> None:
    assert response.status_code == 409, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "urn:medlora:problem:quota-exceeded" and body["limit"] == limit


def test_a_job_reads_its_input_as_it_goes_not_all_at_once(start: Started, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.batch import jobs

    read = 0
    original = jobs.input_lines

    def counted(path: Path) -> Any:
        nonlocal read
        for item in original(path):
            read += 1
            yield item

    monkeypatch.setattr(jobs, "input_lines", counted)
    _, engine, oai = start(batch_concurrency=1)
    engine.delay_s = 5.0
    n = 3000
    uploaded = oai.files.create(
        file=("in.jsonl", io.BytesIO(jsonl([line(f"c{i}", f"farmaco{i}") for i in range(n)]))), purpose="batch"
    )
    oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/ner", completion_window="24h")  # type: ignore[arg-type]
    deadline = time.monotonic() + 10
    while not engine.calls:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert read < n // 2  # the first line runs while most of the file is still unread


def test_a_keys_stored_uploads_are_limited_in_count_and_in_bytes(start: Started, tmp_path: Path) -> None:
    client, _, oai = start(batch_max_files_per_key=2, batch_max_upload_bytes_per_key=10_000)
    small = jsonl([line("a", "x")])
    first, _ = (upload_bytes(client, small).json()["id"] for _ in range(2))
    assert_quota_exceeded(upload_bytes(client, small), 2)
    oai.files.delete(first)  # deleting a file frees its place
    assert upload_bytes(client, small).status_code == 200

    quota = {"batch_max_files_per_key": 10, "batch_max_upload_bytes_per_key": 3 * len(small) + 10}
    client, _, oai = start(batch_dir=tmp_path / "another", **quota)
    for _ in range(3):
        assert upload_bytes(client, small).status_code == 200
    assert_quota_exceeded(upload_bytes(client, small), 3 * len(small) + 10)
    # The refused upload left nothing behind.
    folder = Path(client.app.state.service.settings.batch_dir) / "files"  # type: ignore[attr-defined]
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{f.id}.jsonl" for f in oai.files.list().data)


def test_quotas_are_per_key(start: Started, tmp_path: Path) -> None:
    from app.api.auth import hash_key

    keys = tmp_path / "api-keys"
    keys.write_text(f"ward-7 {hash_key('key-of-ward-7-0123456789')}\nward-8 {hash_key('key-of-ward-8-0123456789')}\n")
    client, _, _ = start(api_keys_file=keys, batch_max_files_per_key=1, batch_max_active_batches_per_key=1)
    ward7 = {"Authorization": "Bearer key-of-ward-7-0123456789"}
    ward8 = {"Authorization": "Bearer key-of-ward-8-0123456789"}
    assert upload_bytes(client, jsonl([line("a", "x")]), ward7).status_code == 200
    assert_quota_exceeded(upload_bytes(client, jsonl([line("a", "x")]), ward7), 1)
    assert upload_bytes(client, jsonl([line("a", "x")]), ward8).status_code == 200


def test_a_key_may_have_only_so_many_unfinished_batches(start: Started) -> None:
    client, engine, oai = start(batch_max_active_batches_per_key=1)
    engine.delay_s = 1.0
    file_id = upload_bytes(client, jsonl([line("a", "x")])).json()["id"]
    first = create(client, file_id).json()["id"]
    assert_quota_exceeded(create(client, file_id), 1)  # one 200 MB upload cannot feed any number of jobs
    wait_for(oai, first, {"completed"})
    assert create(client, file_id).status_code == 200


def test_request_counts_total_is_the_number_of_lines_the_job_answers(start: Started) -> None:
    _, _, oai = start()
    upload = ("\n" + line("a", "x") + "\n   \n\r\n" + "{bad" + "\n\n" + line("b", "y")).encode()  # no final newline
    uploaded = oai.files.create(file=("in.jsonl", io.BytesIO(upload)), purpose="batch")
    batch = oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/ner", completion_window="24h")  # type: ignore[arg-type]
    done = wait_for(oai, batch.id, {"completed"})
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (3, 2, 1)


def test_a_lone_surrogate_in_a_line_is_an_error_line_not_a_failed_job_or_a_lost_line(start: Started) -> None:
    _, _, oai = start()
    upload = jsonl(
        [
            line("a", "aspirina"),
            line("\ud800", "eparina"),  # json.dumps writes it as the escape \ud800
            line("b", "farmaco\udc00"),  # in the note itself
            line("c", "warfarin"),
        ]
    )
    uploaded = oai.files.create(file=("in.jsonl", io.BytesIO(upload)), purpose="batch")
    batch = oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/ner", completion_window="24h")  # type: ignore[arg-type]
    done = wait_for(oai, batch.id, {"completed", "failed"})
    assert done.status == "completed"
    assert sorted(o["custom_id"] for o in content(oai, done.output_file_id)) == ["a", "c"]
    errors = {e["id"].rsplit("-", 1)[1]: e for e in content(oai, done.error_file_id)}
    assert {n: (e["custom_id"], e["error"]["code"]) for n, e in errors.items()} == {
        "2": (None, "invalid-line"),
        "3": ("b", "invalid-line"),
    }
    assert done.request_counts is not None and (done.request_counts.completed, done.request_counts.failed) == (2, 2)


def test_cancel_aborts_lines_in_flight_and_keeps_finished_ones(start: Started) -> None:
    _, engine, oai = start(batch_concurrency=3)
    original = engine.generate

    async def slow_after_two(request: GenerationRequest) -> GenerationResult:
        # Lines 1 and 2 finish at once; every later line would take a minute.
        engine.delay_s = 0.0 if last_input(request) in ("farmaco1", "farmaco2") else 60.0
        return await original(request)

    engine.generate = slow_after_two  # type: ignore[method-assign]
    uploaded = oai.files.create(
        file=("in.jsonl", io.BytesIO(jsonl([line(f"c{i}", f"farmaco{i}") for i in range(1, 11)]))), purpose="batch"
    )
    batch = oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/ner", completion_window="24h")  # type: ignore[arg-type]
    deadline = time.monotonic() + 10
    while len(engine.calls) < 5 or engine.active < 3:  # lines 1 and 2 gave their slots to lines 4 and 5
        assert time.monotonic() < deadline
        time.sleep(0.01)
    in_flight = {c.request_id for c in engine.calls if last_input(c) not in ("farmaco1", "farmaco2")}
    oai.batches.cancel(batch.id)
    cancelled = wait_for(oai, batch.id, {"cancelled"}, timeout_s=5)  # not the minute the lines in flight need
    assert set(engine.cancelled) == in_flight and len(in_flight) == 3
    assert sorted(o["custom_id"] for o in content(oai, cancelled.output_file_id)) == ["c1", "c2"]
    assert cancelled.request_counts is not None and cancelled.request_counts.completed == 2


def test_a_full_disk_pauses_the_job_and_it_resumes_without_losing_a_line(
    start: Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    from app.batch import jobs

    monkeypatch.setattr(jobs, "STORAGE_RETRY_S", 0.2, raising=False)
    real_write = os.write
    disk_full = True
    refused = 0

    def write(fd: int, data: Any) -> int:
        nonlocal refused
        if disk_full and os.readlink(f"/proc/self/fd/{fd}").endswith("output.jsonl"):
            refused += 1
            real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    client, _, oai = start(batch_concurrency=2)
    n = 10
    uploaded = oai.files.create(
        file=("in.jsonl", io.BytesIO(jsonl([line(f"c{i}", f"farmaco{i}") for i in range(n)]))), purpose="batch"
    )
    batch = oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/ner", completion_window="24h")  # type: ignore[arg-type]
    deadline = time.monotonic() + 10
    while refused < 3:  # it tried, paused and tried again
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert oai.batches.retrieve(batch.id).status == "in_progress"  # active, not completed with lines missing
    journal = Path(client.app.state.service.settings.batch_dir) / "batches" / batch.id / "output.jsonl"  # type: ignore[attr-defined]
    assert journal.read_bytes() == b""  # no half-written line left behind
    disk_full = False
    done = wait_for(oai, batch.id, {"completed", "failed"})
    assert done.status == "completed"
    assert sorted(o["custom_id"] for o in content(oai, done.output_file_id)) == sorted(f"c{i}" for i in range(n))
    assert done.request_counts is not None and (done.request_counts.completed, done.request_counts.failed) == (n, 0)


def test_renames_are_made_durable_by_syncing_their_folder(start: Started, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    events: list[tuple[str, str]] = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        real_replace(src, dst, **kwargs)
        events.append(("replace", str(Path(dst).parent)))

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    client, _, oai = start()
    uploaded = oai.files.create(file=("in.jsonl", io.BytesIO(jsonl([line("a", "x"), "{bad"]))), purpose="batch")
    batch = oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/ner", completion_window="24h")  # type: ignore[arg-type]
    wait_for(oai, batch.id, {"completed"})
    folder = str(Path(client.app.state.service.settings.batch_dir) / "files")  # type: ignore[attr-defined]
    renames = [i for i, event in enumerate(events) if event == ("replace", folder)]
    assert len(renames) == 3  # the upload, the output and the errors file
    for i in renames:
        assert ("fsync", folder) in events[i + 1 :], "\n".join(map(str, events))


def test_batch_metadata_is_bounded_as_in_the_openai_api(start: Started) -> None:
    client, _, _ = start()
    file_id = upload_bytes(client, jsonl([line("a", "x")])).json()["id"]
    most = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    assert create(client, file_id, metadata=most).status_code == 200
    for metadata in ({**most, "one more": "v"}, {"k" * 65: "v"}, {"k": "v" * 513}):
        response = create(client, file_id, metadata=metadata)
        assert response.status_code == 422 and response.json()["type"] == "urn:medlora:problem:invalid-request"


def test_the_batch_routes_limits_are_in_the_openapi_document(start: Started) -> None:
    from app.batch.jobs import batch_endpoints

    client, _, _ = start()
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]

    def resolve(schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref") or next((s["$ref"] for s in schema.get("allOf", []) if "$ref" in s), None)
        return resolve(schemas[ref.rsplit("/", 1)[-1]]) if ref else schema

    create_schema = schemas["BatchCreate"]["properties"]
    assert sorted(resolve(create_schema["endpoint"])["enum"]) == sorted(batch_endpoints())
    assert resolve(create_schema["completion_window"])["enum"] == ["24h"]
    metadata = next(s for s in create_schema["metadata"]["anyOf"] if s.get("type") == "object")
    assert (metadata["maxProperties"], metadata["propertyNames"]["maxLength"]) == (16, 64)
    assert metadata["additionalProperties"]["maxLength"] == 512
    upload_body = document["paths"]["/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert resolve(resolve(upload_body)["properties"]["purpose"])["enum"] == ["batch"]
    for path, item in document["paths"].items():
        if not path.startswith(("/v1/files", "/v1/batches")):
            continue
        for op in item.values():
            for parameter in op.get("parameters", []):
                if parameter["in"] == "path":
                    assert parameter["schema"]["maxLength"] == 128, (path, parameter["name"])
    assert client.get("/v1/batches/" + "b" * 129).status_code == 422
    assert client.get("/v1/files/" + "f" * 129).status_code == 422


@given(st.lists(st.sampled_from([b"\n", b"\r\n", b" ", b"\t", b"x", b'{"a": 1}']), max_size=40), st.data())
def test_an_upload_counts_the_lines_a_job_answers_however_it_arrives_in_chunks(
    pieces: list[bytes], data: st.DataObject
) -> None:
    from app.batch.api import _LineCounter
    from app.batch.jobs import input_lines

    content = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(content)), max_size=5)))
    counter = _LineCounter()
    for start, end in itertools.pairwise([0, *cuts, len(content)]):
        counter.feed(content[start:end])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "in.jsonl"
        path.write_bytes(content)
        assert counter.finish() == sum(1 for _ in input_lines(path))
