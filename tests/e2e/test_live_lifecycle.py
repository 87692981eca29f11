"""Overload, SIGTERM and a dying engine, on real vLLM (the random-weight real-vocabulary Qwen3).

One gateway with a small admission bound is driven past it while a batch job runs, then
stopped with SIGTERM while requests and batch lines are in flight, then started again on the
same batch store (the job resumes), and finally its vLLM engine-core process is killed mid-
request. The tests run in that order on purpose: each is the next moment of one service's life.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from app.api.server import EXIT_FAILED
from app.settings import REPO_ROOT
from tests.e2e.conftest import RandomModel, free_port, recording_client, server_env, start_server, stop
from tests.fakes import sample

pytestmark = pytest.mark.e2e

ADMITTED = 4  # generations of interactive requests admitted at once
NOTE = "Paziente con febbre e tosse; nega dolore toracico. Terapia: amoxicillina 1 g ogni 8 ore. SpO2 92%."
BATCH_LINES = 120  # enough that the job is still running when SIGTERM comes


@dataclass
class Gateway:
    env: dict[str, str]
    work: Path
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    logs: list[Path] = field(default_factory=list)
    batch_id: str = ""

    def start(self) -> None:
        port = free_port()
        self.env["MEDLORA_PORT"] = str(port)
        log_path = self.work / f"server-{len(self.logs)}.log"
        self.logs.append(log_path)
        self.proc, _, _ = start_server([sys.executable, "-m", "app.cli", "serve"], self.env, REPO_ROOT, log_path, port)
        self.url = f"http://127.0.0.1:{port}"

    def client(self) -> httpx.Client:
        return recording_client(self.url)


@pytest.fixture(scope="module")
def gateway(random_model: RandomModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("lifecycle")
    env = {
        **server_env(work, 0),
        "MEDLORA_MODEL": str(random_model.base_dir),
        "MEDLORA_ADAPTERS_DIR": str(random_model.adapters_dir),
        "MEDLORA_MAX_ADMITTED_GENERATIONS": str(ADMITTED),
        "MEDLORA_ADMISSION_WAIT_S": "1",
        "MEDLORA_BACKGROUND_MAX_ADMITTED_GENERATIONS": "2",
        "MEDLORA_BATCH_CONCURRENCY": "2",
        "MEDLORA_SHUTDOWN_GRACE_S": "120",
    }
    gateway = Gateway(env, work)
    gateway.start()
    try:
        yield gateway
    finally:
        if gateway.proc is not None and gateway.proc.poll() is None:
            stop(gateway.proc)


def ner(client: httpx.Client, n_docs: int, tag: str) -> httpx.Response:
    docs = [{"id": f"{tag}-{i}", "text": f"{NOTE} ({tag} {i})"} for i in range(n_docs)]
    return client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": docs})


def check_grounded(response: httpx.Response, n_docs: int, tag: str) -> None:
    body = response.json()
    assert [d["id"] for d in body["documents"]] == [f"{tag}-{i}" for i in range(n_docs)]
    for i, doc in enumerate(body["documents"]):
        text = f"{NOTE} ({tag} {i})"
        for entity in doc["entities"]:
            assert text[entity["start"] : entity["end"]] == entity["text"]


def start_batch(client: httpx.Client, lines: int) -> str:
    rows = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/ner",
            "body": {"task": "ner-it-clinical", "documents": [{"id": "d", "text": f"{NOTE} [{i}]"}]},
        }
        for i in range(lines)
    ]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    uploaded = client.post("/v1/files", files={"file": ("b.jsonl", data)}, data={"purpose": "batch"})
    assert uploaded.status_code == 200, uploaded.text
    created = client.post(
        "/v1/batches", json={"input_file_id": uploaded.json()["id"], "endpoint": "/v1/ner", "completion_window": "24h"}
    )
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


def wait_until_interactive_work_runs(client: httpx.Client, deadline: float) -> None:
    while not sample(client.get("/metrics").text, "medlora_admitted_generations", pool="interactive"):
        assert time.monotonic() < deadline, "the request never reached the engine"
        time.sleep(0.05)


def batch(client: httpx.Client, batch_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/batches/{batch_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_past_the_admission_bound_requests_get_429_never_5xx_and_admitted_ones_answer(gateway: Gateway) -> None:
    with gateway.client() as client:
        gateway.batch_id = start_batch(client, BATCH_LINES)
        responses: list[tuple[httpx.Response, str, bool]] = []
        lock = threading.Lock()

        def send(tag: str) -> None:
            with gateway.client() as own:
                response = ner(own, 2, tag)
                in_progress = batch(own, gateway.batch_id)["status"] == "in_progress"
            with lock:
                responses.append((response, tag, in_progress))

        # Twice the admitted bound offered at once (4 requests of 2 generations), for a few rounds.
        for round_ in range(4):
            threads = [threading.Thread(target=send, args=(f"r{round_}-{k}",)) for k in range(ADMITTED)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        statuses = sorted({r.status_code for r, _, _ in responses})
        assert set(statuses) <= {200, 429}, [r.text for r, _, _ in responses if r.status_code not in (200, 429)]
        ok = [(r, tag) for r, tag, _ in responses if r.status_code == 200]
        refused = [r for r, _, _ in responses if r.status_code == 429]
        assert ok and refused, statuses
        for response, tag in ok:
            check_grounded(response, 2, tag)
        for response in refused:
            assert response.headers["retry-after"] == "1"
            assert response.json()["type"] == "urn:medlora:problem:overloaded"
        # Interactive work went ahead: requests were answered while the batch still had lines to do.
        assert any(in_progress for r, _, in_progress in responses if r.status_code == 200)
        metrics = client.get("/metrics").text
        rejected = sample(metrics, "medlora_admission_rejected_total", pool="interactive", reason="overloaded")
        assert rejected == len(refused)
        assert sample(metrics, "medlora_admitted_generations", pool="interactive") == 0


def test_sigterm_drains_in_flight_work_refuses_new_and_the_batch_resumes_after_restart(gateway: Gateway) -> None:
    assert gateway.proc is not None and gateway.batch_id
    with gateway.client() as client:
        assert batch(client, gateway.batch_id)["status"] == "in_progress", "the batch finished too early to test"
        running: list[httpx.Response] = []
        # Several waves of admitted generations: still running when the signal comes.
        thread = threading.Thread(target=lambda: running.append(ner(gateway.client(), 4 * ADMITTED, "drain")))
        thread.start()
        deadline = time.monotonic() + 60
        wait_until_interactive_work_runs(client, deadline)
        signalled = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = ner(client, 1, "late")
        ready = client.get("/readyz")
        thread.join()
        finished = time.monotonic() - signalled
    assert refused.status_code == 503 and refused.json()["type"] == "urn:medlora:problem:not-ready", refused.text
    assert refused.headers["retry-after"]
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert running[0].status_code == 200, running[0].text  # in flight at SIGTERM: finished, not cut
    check_grounded(running[0], 4 * ADMITTED, "drain")
    assert gateway.proc.wait(timeout=180) == 0
    exited = time.monotonic() - signalled
    # Whatever the job wrote is whole lines; it is still active, and the restarted service finishes it.
    journal = gateway.work / "batches" / "batches" / gateway.batch_id / "output.jsonl"
    done_before = [json.loads(line)["custom_id"] for line in journal.read_text().splitlines()]
    assert 0 < len(done_before) < BATCH_LINES
    print(
        f"\n[e2e] drain: the request in flight ({4 * ADMITTED} generations) answered {finished:.1f} s after"
        f" SIGTERM, the process exited 0 after {exited:.1f} s; the batch had {len(done_before)} of"
        f" {BATCH_LINES} lines, whole"
    )
    gateway.start()
    with gateway.client() as client:
        deadline = time.monotonic() + 900
        while (state := batch(client, gateway.batch_id))["status"] != "completed":
            assert state["status"] in ("in_progress", "finalizing") and time.monotonic() < deadline, state
            time.sleep(1)
        assert state["request_counts"] == {"total": BATCH_LINES, "completed": BATCH_LINES, "failed": 0}
        output = client.get(f"/v1/files/{state['output_file_id']}/content").text.splitlines()
    ids = sorted(json.loads(line)["custom_id"] for line in output)
    assert ids == sorted(f"line-{i}" for i in range(BATCH_LINES))  # none lost, none twice


def engine_core(pid: int) -> psutil.Process:
    for child in psutil.Process(pid).children(recursive=True):
        if "EngineCore" in " ".join(child.cmdline()) or "EngineCore" in child.name():
            return child
    raise AssertionError("no vLLM engine-core process under the gateway")


def test_a_killed_engine_answers_in_flight_requests_retryably_and_the_process_exits(gateway: Gateway) -> None:
    assert gateway.proc is not None and gateway.proc.poll() is None
    results: list[httpx.Response] = []
    with gateway.client() as client:
        thread = threading.Thread(target=lambda: results.append(ner(gateway.client(), 4 * ADMITTED, "dying")))
        thread.start()
        deadline = time.monotonic() + 60
        wait_until_interactive_work_runs(client, deadline)
        killed = time.monotonic()
        engine_core(gateway.proc.pid).kill()
        thread.join(timeout=120)
        assert not thread.is_alive(), "a request hung on a dead engine"
        answered = time.monotonic() - killed
    (response,) = results
    assert response.status_code == 503, response.text
    assert response.json()["type"] == "urn:medlora:problem:engine-unavailable" and response.headers["retry-after"]
    # Not a live pod with a dead engine: the process exits, for Kubernetes to start a fresh one.
    assert gateway.proc.wait(timeout=120) == EXIT_FAILED
    exited = time.monotonic() - killed
    print(f"\n[e2e] engine death: the request in flight got 503 after {answered:.1f} s, exit 3 after {exited:.1f} s")
    log = gateway.logs[-1].read_text(errors="replace")
    assert '"event": "engine died"' in log and "Traceback" not in log.split('"event": "engine died"')[1][:2000]
