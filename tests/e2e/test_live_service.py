"""Every endpoint and guarantee, end to end, against real vLLM with a random-weight tiny Qwen3
that has the real Qwen3 tokenizer and embedding size (151,936 rows).

Random weights are the worst case for a constraint: whatever the model emits must still
parse, validate against the task schema, and ground to exact offsets in the input. Every
shipped task runs as shipped (greedy) and as a copy sampled at temperature 1
(`<name>-sampled`), which walks much more of each grammar than a random model's greedy
answer does.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from app.training.tiny_model import build_tiny_adapter
from tests.conftest import TASKS_DIR
from tests.e2e.conftest import SAMPLED, LiveServer
from tests.strategies import check_generated_batches

pytestmark = pytest.mark.e2e

ITALIAN_NOTE = (
    "Lettera di dimissione.\nPaziente di 72 anni, ricoverato per polmonite basale destra. "
    "Riferisce febbre (38,5 °C) e tosse produttiva; nega dolore toracico. "
    "Anamnesi: ipertensione arteriosa, madre con diabete mellito. "
    "Terapia: amoxicillina/acido clavulanico 1 g per os ogni 8 ore, paracetamolo 1000 mg al bisogno."
)
ENGLISH_NOTE = (
    "ED note: 45-year-old woman with acute chest pain radiating to the left arm. Denies fever. "
    "Troponin 0.02 ng/mL, ECG without ST elevation. Given aspirin 325 mg PO."
)
AWKWARD = [
    'Citazione: "dolore" al fianco\\destro\tcon febbre\r\nè più forte 🙂 👩‍⚕️ «ok»',
    "",
    "   \n\t ",
    "x",
    "perché\u00a0caffè\u2028già",
    "A" * 300,
]
LONG_NOTE = "\n\n".join([ITALIAN_NOTE] * 14)  # ~4,800 chars: several chunks with overlap

STATS: dict[str, int] = {"requests": 0, "items": 0, "entities": 0, "answers": 0, "labels": 0}
SHIPPED = ["ner-it-clinical", "ner-en-clinical", "qa-it-clinical", "classify-it-note-type"]
ENDPOINTS = {"ner": "ner", "qa": "qa", "classification": "classify"}
EVERY_TASK = [*SHIPPED, *(f"{name}{SAMPLED}" for name in SHIPPED)]


def check_ner(task: dict[str, Any], docs: list[dict[str, str]], body: dict[str, Any]) -> None:
    assert body["offset_unit"] == "unicode_code_point"
    by_id = {d["id"]: d["text"] for d in docs}
    assert [d["id"] for d in body["documents"]] == [d["id"] for d in docs]
    max_len = task["schema"]["properties"]["entities"]["items"]["prefixItems"][0]["maxLength"]
    for doc in body["documents"]:
        text = by_id[doc["id"]]
        for e in doc["entities"]:
            assert text[e["start"] : e["end"]] == e["text"], (e, text)
            assert e["text"] and e["text"].strip() == e["text"] and len(e["text"]) <= max_len
            assert e["label"] in task["labels"]
            assert set(e["attributes"]) == set(task["attributes"])
            assert all(isinstance(v, bool) for v in e["attributes"].values())
            # From vLLM's log-probabilities of the constrained decode: always there, a probability.
            assert isinstance(e["confidence"], float) and 0.0 <= e["confidence"] <= 1.0, e
            STATS["entities"] += 1
    STATS["requests"] += 1
    STATS["items"] += len(docs)


def post_ner(client: httpx.Client, task: dict[str, Any], texts_: list[str]) -> dict[str, Any]:
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts_)]
    r = client.post("/v1/ner", json={"task": task["name"], "documents": docs})
    assert r.status_code == 200, r.text
    body = r.json()
    check_ner(task, docs, body)
    return dict(body)


def test_service_is_ready_with_every_task_adapter_loaded(live_server: LiveServer, client: httpx.Client) -> None:
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready"
    adapters = client.get("/v1/adapters").json()["adapters"]
    assert {a["name"] for a in adapters} >= {
        "ner-it-clinical",
        "ner-en-clinical",
        "qa-it-clinical",
        "classify-it-note-type",
    }
    assert all(a["resident"] for a in adapters)
    # The sampled copies share their task's adapter: one registration each (and the big form's).
    assert len(adapters) == len(list(TASKS_DIR.glob("*.yaml"))) + 1


@pytest.mark.parametrize("name", [n for n in EVERY_TASK if n.startswith("ner-")])
def test_ner_is_valid_and_grounded_on_awkward_text(client: httpx.Client, tasks: dict[str, Any], name: str) -> None:
    body = post_ner(client, tasks[name], [ITALIAN_NOTE, ENGLISH_NOTE, *AWKWARD])
    assert body["model"]["adapter"] == name.removesuffix(SAMPLED)
    assert body["documents"][3]["entities"] == [] and body["documents"][4]["entities"] == []  # empty inputs


@pytest.mark.parametrize("name", ["ner-it-clinical", f"ner-it-clinical{SAMPLED}"])
def test_long_note_is_chunked_and_offsets_stay_exact(client: httpx.Client, tasks: dict[str, Any], name: str) -> None:
    before = _metric(client.get("/metrics").text, "medlora_chunks_total", task=name)
    body = post_ner(client, tasks[name], [LONG_NOTE])
    after = _metric(client.get("/metrics").text, "medlora_chunks_total", task=name)
    assert after - before >= 4  # 4,800 chars in chunks of at most 1,500
    ents = body["documents"][0]["entities"]
    assert len({(e["start"], e["end"], e["label"]) for e in ents}) == len(ents)


def check_qa(task: dict[str, Any], items: list[dict[str, str]], body: dict[str, Any]) -> None:
    assert body["offset_unit"] == "unicode_code_point"
    assert [i["id"] for i in body["items"]] == [i["id"] for i in items]
    max_len = task["schema"]["properties"]["answer"]["anyOf"][1]["maxLength"]
    for item, out in zip(items, body["items"], strict=True):
        answer = out["answer"]
        if answer is not None:
            assert item["context"][answer["start"] : answer["end"]] == answer["text"] != ""
            assert answer["text"].strip() == answer["text"] and len(answer["text"]) <= max_len
            assert isinstance(answer["confidence"], float) and 0.0 <= answer["confidence"] <= 1.0, answer
            STATS["answers"] += 1
    STATS["requests"] += 1
    STATS["items"] += len(items)


def check_classify(task: dict[str, Any], docs: list[dict[str, str]], body: dict[str, Any]) -> None:
    assert [d["id"] for d in body["documents"]] == [d["id"] for d in docs]
    validator = Draft202012Validator(task["schema"])
    texts = {d["id"]: d["text"] for d in docs}
    for d in body["documents"]:
        if not texts[d["id"]].strip():  # a blank document is not sent to the model: no label
            assert d["labels"] == [] and d["scores"] == {}, d
            continue
        assert d["labels"] and set(d["labels"]) <= set(task["labels"])
        assert validator.is_valid({"labels": d["labels"]})
        assert set(d["scores"]) == set(d["labels"]) and all(0.0 <= v <= 1.0 for v in d["scores"].values()), d
        STATS["labels"] += len(d["labels"])
    STATS["requests"] += 1
    STATS["items"] += len(docs)


def post_any(client: httpx.Client, task: dict[str, Any], texts_: list[str]) -> None:
    """Send texts to the task's endpoint and check every invariant of the answer."""
    if task["type"] == "ner":
        post_ner(client, task, texts_)
        return
    if task["type"] == "qa":
        items = [{"id": f"q{i}", "context": t, "question": "Quale terapia?"} for i, t in enumerate(texts_)]
        r = client.post("/v1/qa", json={"task": task["name"], "items": items})
        assert r.status_code == 200, r.text
        check_qa(task, items, r.json())
        return
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts_)]
    r = client.post("/v1/classify", json={"task": task["name"], "documents": docs})
    assert r.status_code == 200, r.text
    check_classify(task, docs, r.json())


@pytest.mark.parametrize("name", EVERY_TASK)
def test_every_task_validates_and_grounds_on_generated_text(
    client: httpx.Client, tasks: dict[str, Any], name: str
) -> None:
    check_generated_batches(lambda batch: post_any(client, tasks[name], batch), examples=5, max_size=4)


@pytest.mark.parametrize("name", ["qa-it-clinical", f"qa-it-clinical{SAMPLED}"])
def test_qa_answers_are_verbatim_spans_or_null(client: httpx.Client, tasks: dict[str, Any], name: str) -> None:
    task = tasks[name]
    items = [
        {"id": "q1", "context": ITALIAN_NOTE, "question": "Quale antibiotico assume il paziente?"},
        {"id": "q2", "context": AWKWARD[0], "question": "Dove è il dolore?"},
        {"id": "q3", "context": "", "question": "Quale farmaco?"},
        {"id": "q4", "context": LONG_NOTE, "question": "Che patologia ha la madre?"},
    ]
    r = client.post("/v1/qa", json={"task": task["name"], "items": items})
    assert r.status_code == 200, r.text
    body = r.json()
    check_qa(task, items, body)
    assert body["items"][2]["answer"] is None


@pytest.mark.parametrize("name", ["classify-it-note-type", f"classify-it-note-type{SAMPLED}"])
def test_classify_labels_come_from_the_label_set(client: httpx.Client, tasks: dict[str, Any], name: str) -> None:
    task = tasks[name]
    docs = [{"id": str(i), "text": t} for i, t in enumerate([ITALIAN_NOTE, ENGLISH_NOTE, LONG_NOTE, *AWKWARD])]
    r = client.post("/v1/classify", json={"task": task["name"], "documents": docs})
    assert r.status_code == 200, r.text
    check_classify(task, docs, r.json())


def test_errors_are_problem_json(client: httpx.Client) -> None:
    r = client.post("/v1/ner", json={"task": "missing", "documents": [{"id": "a", "text": "x"}]})
    assert r.status_code == 404 and r.json()["type"] == "urn:medlora:problem:unknown-task"
    assert r.headers["content-type"].startswith("application/problem+json")
    r = client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": []})
    assert r.status_code == 422 and r.json()["type"] == "urn:medlora:problem:invalid-request"
    r = client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": [{"id": "a", "text": "x" * 200_001}]})
    assert r.status_code == 422 and r.json()["type"] == "urn:medlora:problem:invalid-request"
    assert r.json()["errors"][0]["loc"] == ["body", "documents", "0", "text"]


def test_bad_adapter_files_are_refused_by_gateway_or_engine(
    live_server: LiveServer, client: httpx.Client, tmp_path: Path
) -> None:
    too_big = build_tiny_adapter(live_server.base_dir, tmp_path / "rank32", seed=5, rank=32)
    r = client.post("/v1/adapters", json={"name": "too-big", "version": "1", "path": str(too_big)})
    assert r.status_code == 422 and "max_lora_rank" in r.json()["detail"]
    broken = tmp_path / "broken"
    shutil.copytree(build_tiny_adapter(live_server.base_dir, tmp_path / "ok", seed=6), broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    r = client.post("/v1/adapters", json={"name": "broken", "version": "1", "path": str(broken)})
    assert r.status_code == 422 and r.json()["type"] == "urn:medlora:problem:invalid-adapter"
    assert "broken" not in {a["name"] for a in client.get("/v1/adapters").json()["adapters"]}
    assert client.get("/readyz").status_code == 200


def test_two_adapters_differ_and_hot_swap_under_load_fails_no_request(
    live_server: LiveServer, client: httpx.Client, tasks: dict[str, Any], tmp_path: Path
) -> None:
    task = tasks["ner-en-clinical"]
    probes = [ENGLISH_NOTE, ITALIAN_NOTE, "Patient reports headache and nausea after taking ibuprofen 400 mg."]
    assert post_ner(client, task, probes)["model"]["adapter_version"] == "1"
    v2_path = build_tiny_adapter(live_server.base_dir, tmp_path / "ner-en-v2", seed=4242)
    r = client.post("/v1/adapters", json={"name": "ner-en-clinical", "version": "2", "path": str(v2_path)})
    assert r.status_code == 201, r.text

    stop, switched = threading.Event(), threading.Event()
    seen: list[tuple[int, str]] = []
    after_switch: list[str] = []  # versions answered to requests sent once the switch returned

    def load(worker: int) -> None:
        with live_server.client() as c:
            i = 0
            while not stop.is_set():
                docs = [{"id": "x", "text": probes[(worker + i) % len(probes)]}]
                sent_after_switch = switched.is_set()
                resp = c.post("/v1/ner", json={"task": task["name"], "documents": docs})
                version = resp.json()["model"]["adapter_version"] if resp.status_code == 200 else "-"
                if resp.status_code == 200:
                    check_ner(task, docs, resp.json())
                seen.append((resp.status_code, version))
                if sent_after_switch:
                    after_switch.append(version)
                i += 1

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(load, w) for w in range(4)]
        deadline = time.monotonic() + 300
        while len(seen) < 6 and time.monotonic() < deadline:
            time.sleep(0.2)
        switch = client.put(f"/v1/tasks/{task['name']}/adapter", json={"name": "ner-en-clinical", "version": "2"})
        assert switch.status_code == 200, switch.text
        switched.set()
        while len(after_switch) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        for f in futures:
            f.result()

    assert seen and all(status == 200 for status, _ in seen), seen
    assert {"1", "2"} <= {version for _, version in seen}
    # Requests in flight at the switch finish on the adapter they leased; every later one gets v2.
    assert after_switch and set(after_switch) == {"2"}, after_switch
    v2 = post_ner(client, task, probes)
    assert v2["model"]["adapter_version"] == "2"
    # Same base, same prompts, greedy decoding: only the adapter differs, and so do the answers.
    # (A random model's greedy NER answer is often the empty list, so every task looks: an
    # adapter applies to any task's request, by name.)
    assert adapter_answers(client, tasks, "1") != adapter_answers(client, tasks, "2")

    # Its sampled copy still uses v1 (one registration serves both): v1 is in use until it moves too.
    assert client.delete("/v1/adapters/ner-en-clinical/1").status_code == 409
    moved = client.put(f"/v1/tasks/{task['name']}{SAMPLED}/adapter", json={"name": "ner-en-clinical", "version": "2"})
    assert moved.status_code == 200, moved.text
    assert client.delete("/v1/adapters/ner-en-clinical/1").status_code == 204
    versions = {a["version"] for a in client.get("/v1/adapters").json()["adapters"] if a["name"] == "ner-en-clinical"}
    assert versions == {"2"}
    assert client.delete("/v1/adapters/ner-en-clinical/2").status_code == 409  # still bound


def adapter_answers(client: httpx.Client, tasks: dict[str, Any], version: str) -> list[Any]:
    """Every shipped task's answers to a few notes, all through ner-en-clinical@<version>."""
    notes = [ENGLISH_NOTE, ITALIAN_NOTE, LONG_NOTE[:1200], AWKWARD[0], "Patient reports headache after ibuprofen."]
    adapter = {"name": "ner-en-clinical", "version": version}
    answers: list[Any] = []
    for name in SHIPPED:
        kind = tasks[name]["type"]
        if kind == "qa":
            items = [{"id": str(i), "context": n, "question": "Which drug?"} for i, n in enumerate(notes)]
            body: dict[str, Any] = {"task": name, "items": items, "adapter": adapter}
        else:
            body = {"task": name, "documents": [{"id": str(i), "text": n} for i, n in enumerate(notes)]}
            body["adapter"] = adapter
        r = client.post(f"/v1/{'qa' if kind == 'qa' else 'ner' if kind == 'ner' else 'classify'}", json=body)
        assert r.status_code == 200, r.text
        answers.append(
            [
                {k: v for k, v in item.items() if k != "model"}
                for item in r.json().get("documents", r.json().get("items"))
            ]
        )
    return answers


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _settled(client: httpx.Client, name: str, wait_s: float) -> float:
    """vLLM's own count of `name`, read once the engine is idle (no request running or waiting)."""
    deadline = time.monotonic() + wait_s
    while True:
        metrics = client.get("/metrics").text
        busy = _metric(metrics, "vllm:num_requests_running") + _metric(metrics, "vllm:num_requests_waiting")
        if busy == 0:
            return _metric(metrics, name)
        assert time.monotonic() < deadline, "the engine never went idle"
        time.sleep(0.5)


def test_client_disconnect_aborts_engine_requests(live_server: LiveServer, client: httpx.Client) -> None:
    """A client that goes away must stop the engine's work, not leave it running to the end:
    the tokens vLLM generated for an abandoned request are compared with the same request run
    to completion (greedy: the same tokens)."""
    docs = [{"id": str(i), "text": LONG_NOTE[: 1400 + i]} for i in range(16)]
    body = {"task": "ner-it-clinical", "documents": docs}
    before = _settled(client, "vllm:generation_tokens_total", 30)
    started = time.monotonic()
    assert client.post("/v1/ner", json=body).status_code == 200
    full_s = time.monotonic() - started
    full_end = _settled(client, "vllm:generation_tokens_total", 60)
    full = full_end - before
    cancelled_before = _metric(client.get("/metrics").text, "medlora_requests_total", outcome="client_disconnected")
    with pytest.raises(httpx.TimeoutException), live_server.client(timeout=max(1.0, full_s / 5)) as impatient:
        impatient.post("/v1/ner", json=body)
    # An abort that never reached vLLM would leave it generating all of it: wait long enough to see that.
    abandoned = _settled(client, "vllm:generation_tokens_total", max(60.0, 2 * full_s)) - full_end
    cancelled = _metric(client.get("/metrics").text, "medlora_requests_total", outcome="client_disconnected")
    print(f"\n[e2e] abandoned request: {abandoned:.0f} of {full:.0f} tokens generated (full run {full_s:.1f}s)")
    assert cancelled == cancelled_before + 1
    assert full >= 16 * 20, full  # long enough for the comparison to mean something
    assert abandoned < full / 2, (abandoned, full)


def test_probes_answer_while_the_engine_starts(live_server: LiveServer) -> None:
    """The port opens before the model loads: /livez answers at once, /readyz and task requests
    say 503 not-ready with Retry-After until the engine and every adapter are up."""
    probes = live_server.probes
    first_live = next(p for p in probes if p.livez == 200)
    ready = next(p for p in probes if p.readyz == 200)
    starting = [p for p in probes if p.livez == 200 and p.readyz == 503]
    print(
        f"\n[e2e] /livez first answered at {first_live.at_s:.1f}s, /readyz 200 at {ready.at_s:.1f}s; "
        f"{len(starting)} probes saw 503 while starting"
    )
    assert first_live.at_s < ready.at_s and len(starting) >= 3
    assert all(p.readyz_retry_after for p in starting)
    not_ready = [p for p in starting if p.task is not None]
    assert not_ready and all(p.task == 503 and p.task_type == "urn:medlora:problem:not-ready" for p in not_ready)
    assert all(p.task_retry_after for p in not_ready)
    # Once it answered, it kept answering within the chart's liveness timeout: the engine's
    # start never blocked the event loop long enough for kubelet to count a failure. (Short
    # stalls remain: loading the 150k-token tokenizer, ours and vLLM's, holds the GIL.)
    answered = [p for p in probes if p.at_s >= first_live.at_s]
    slowest = max(answered, key=lambda p: p.livez_s)
    print(f"[e2e] slowest /livez while starting: {slowest.livez_s:.2f}s at {slowest.at_s:.1f}s")
    assert [p for p in answered if p.livez != 200] == []


def test_metrics_expose_gateway_and_engine_series(client: httpx.Client) -> None:
    text = client.get("/metrics").text
    assert re.search(
        r'medlora_requests_total\{adapter="ner-it-clinical@1",endpoint="ner",outcome="ok",task="ner-it-clinical"\} \d',
        text,
    )
    assert "medlora_request_duration_seconds_bucket" in text
    assert "vllm:num_requests_running" in text and "vllm:generation_tokens_total" in text
    # No generation ever produced an invalid or cut-off answer.
    assert _metric(text, "medlora_invalid_outputs_total") == 0
    stops = _metric(text, "medlora_generations_total", finish_reason="stop")
    others = (
        _metric(text, "medlora_generations_total")
        - stops
        - _metric(text, "medlora_generations_total", finish_reason="abort")
    )
    print(f"\n[e2e] generations: {stops:.0f} finished with stop, {others:.0f} otherwise; stats {json.dumps(STATS)}")
    assert stops > 0 and others == 0
    # The guarantees were tested on real answers, not only on empty ones.
    assert STATS["entities"] > 50 and STATS["answers"] > 5 and STATS["labels"] > 10, STATS


def test_the_served_model_has_qwen3s_vocabulary(live_server: LiveServer) -> None:
    """What these guarantees ran on: Qwen3-1.7B's tokenizer and embedding size, loaded from the
    model folder as the service loads it."""
    from transformers import AutoConfig, AutoTokenizer

    from tests.support.qwen3 import QWEN3_VOCAB_SIZE, package_encoder

    assert AutoConfig.from_pretrained(live_server.base_dir).vocab_size == QWEN3_VOCAB_SIZE == 151_936
    served = AutoTokenizer.from_pretrained(live_server.base_dir)
    assert len(served) == 151_669
    for text in (ITALIAN_NOTE, ENGLISH_NOTE, *AWKWARD):
        assert served.encode(text, add_special_tokens=False) == package_encoder().encode(text)
