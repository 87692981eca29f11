"""Per-request latency of the gateway vs. vLLM alone, same prompts, grammars and adapters.

Phase 1 starts `medlora serve` (a random-weight tiny Qwen3 with the real Qwen3 tokenizer) and times
engine start, then sends each task's requests over HTTP, one at a time and then
concurrently. Phase 2 (after the server stopped, so both phases own the machine) starts an
AsyncLLM in this process and sends the identical engine requests directly. Greedy decoding
makes the generated tokens identical, so the ratio is the gateway's own cost.

With --topology split, a vLLM OpenAI server runs for both phases: phase 1 goes through a
`medlora serve` gateway in remote-engine mode, phase 2 posts the identical completion
requests straight to the vLLM server (the remote engine's client: one HTTP POST each).

    .venv/bin/python -m bench.latency --requests 8 --concurrency 8
    .venv/bin/python -m bench.latency --requests 8 --concurrency 8 --topology split
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.engine.vllm_logs import LOGGING_CONFIG
from app.settings import REPO_ROOT
from bench.models import random_qwen3_env, random_qwen3_settings

NOTE_IT = (
    "Paziente di 72 anni, ricoverato per polmonite basale destra. Riferisce febbre (38,5 °C) e tosse "
    "produttiva; nega dolore toracico. Terapia: amoxicillina/acido clavulanico 1 g per os ogni 8 ore."
)
NOTE_EN = "45-year-old woman with chest pain radiating to the left arm. Denies fever. Given aspirin 325 mg PO."
QUESTION = "Quale antibiotico assume il paziente?"


def payloads(n: int) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """Per task: endpoint and n request bodies (one item each, distinct ids and texts)."""
    out: dict[str, tuple[str, list[dict[str, Any]]]] = {}
    out["ner-it-clinical"] = ("/v1/ner", [{"documents": [{"id": "d", "text": f"{NOTE_IT} ({i})"}]} for i in range(n)])
    out["ner-en-clinical"] = ("/v1/ner", [{"documents": [{"id": "d", "text": f"{NOTE_EN} ({i})"}]} for i in range(n)])
    out["qa-it-clinical"] = (
        "/v1/qa",
        [{"items": [{"id": "q", "context": f"{NOTE_IT} ({i})", "question": QUESTION}]} for i in range(n)],
    )
    out["classify-it-note-type"] = (
        "/v1/classify",
        [{"documents": [{"id": "d", "text": f"{NOTE_IT} ({i})"}]} for i in range(n)],
    )
    return out


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p95_ms": round(1000 * ordered[max(0, round(0.95 * len(ordered)) - 1)], 1),
        "mean_ms": round(1000 * statistics.fmean(ordered), 1),
    }


async def gateway_phase(url: str, n: int, concurrency: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for task, (endpoint, bodies) in payloads(n).items():
            sequential = []
            for body in bodies:
                started = time.perf_counter()
                r = await client.post(endpoint, json={"task": task, **body})
                sequential.append(time.perf_counter() - started)
                statuses.append(r.status_code)
            sem = asyncio.Semaphore(concurrency)

            async def one(
                body: dict[str, Any], task: str = task, endpoint: str = endpoint, sem: asyncio.Semaphore = sem
            ) -> None:
                async with sem:
                    r = await client.post(endpoint, json={"task": task, **body})
                    statuses.append(r.status_code)

            started = time.perf_counter()
            await asyncio.gather(*(one(b) for b in bodies))
            wall = time.perf_counter() - started
            results[task] = {"sequential": summary(sequential), "concurrent_rps": round(len(bodies) / wall, 2)}
        metrics = (await client.get("/metrics")).text
    invalid = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("medlora_invalid_outputs_total")
    )
    results["valid_share"] = round(statuses.count(200) / len(statuses), 4)
    results["responses"] = len(statuses)
    results["invalid_outputs_metric"] = invalid
    return results


async def engine_phase(n: int, concurrency: int, cache_dir: Path, engine_url: str | None = None) -> dict[str, Any]:
    """The same engine requests the gateway builds, sent straight to AsyncLLM (or the vLLM server)."""
    from app.engine.base import GenerationRequest
    from app.tasks.service import build_service

    remote: dict[str, Any] = {"engine": "remote", "engine_urls": [engine_url]} if engine_url else {}
    service = build_service(random_qwen3_settings(cache_dir, **remote))
    started = time.perf_counter()
    await service.start()
    start_s = time.perf_counter() - started
    results: dict[str, Any] = {"engine_start_s": round(start_s, 1)}
    for task_name, (_, bodies) in payloads(n).items():
        task = service.tasks[task_name]
        adapter = service.registry.bound(task_name)
        assert adapter is not None
        requests = []
        for i, body in enumerate(bodies):
            item = body[task.kind.items_field][0]
            # The gateway's own request (ask, prompt, grammar, budget, log-probabilities), so both
            # phases send identical requests.
            (ask,) = task.kind.asks(task, {name: item[name] for name in task.kind.input_fields})
            requests.append(
                service.runner.generation_request(
                    task, ask, adapter.handle, request_id=f"bench-{task_name}-{i}-{time.monotonic_ns()}"
                )
            )
        sequential = []
        for req in requests:
            t0 = time.perf_counter()
            await service.engine.generate(req)
            sequential.append(time.perf_counter() - t0)
        sem = asyncio.Semaphore(concurrency)

        async def one(req: GenerationRequest, sem: asyncio.Semaphore = sem) -> None:
            async with sem:
                await service.engine.generate(
                    GenerationRequest(**{**req.__dict__, "request_id": req.request_id + "-c"})
                )

        t0 = time.perf_counter()
        await asyncio.gather(*(one(r) for r in requests))
        results[task_name] = {
            "sequential": summary(sequential),
            "concurrent_rps": round(len(requests) / (time.perf_counter() - t0), 2),
        }
    await service.stop()
    return results


def wait_up(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)


def start_server(
    cache_dir: Path, port: int, log_path: Path, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], float]:
    env = {**os.environ, **random_qwen3_env(cache_dir), "MEDLORA_PORT": str(port), **(extra_env or {})}
    started = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    wait_up(proc, f"http://127.0.0.1:{port}/readyz", log_path)
    return proc, time.perf_counter() - started


def start_vllm_server(cache_dir: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """A vLLM OpenAI server for the benchmark model, with the flags the gateway relies on."""
    from app.engine.remote.server_args import vllm_server_args

    settings = random_qwen3_settings(cache_dir)
    env = {
        **os.environ,
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_LOGGING_CONFIG_PATH": str(LOGGING_CONFIG),  # as the chart's engine pods: no note text in logs
        "VLLM_NO_USAGE_STATS": "1",
        # The in-process engine sets this from settings; a server reads it from its environment.
        "VLLM_CPU_KVCACHE_SPACE": str(settings.cpu_kvcache_gib),
    }
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", settings.model,
        *vllm_server_args(settings), "--host", "127.0.0.1", "--port", str(port), "--seed", "0",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_up(proc, f"http://127.0.0.1:{port}/health", log_path)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=8, help="requests per task and mode")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--topology", choices=["local", "split"], default="local", help="in-process engine, or a vLLM server"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medlora-bench-"))
    cache = work / "cache"
    vllm_proc, engine_url, extra_env = None, None, {}
    if args.topology == "split":
        engine_url = f"http://127.0.0.1:{args.port + 1}"
        vllm_proc = start_vllm_server(cache, args.port + 1, work / "vllm.log")
        extra_env = {"MEDLORA_ENGINE": "remote", "MEDLORA_ENGINE_URLS": engine_url}
    try:
        proc, ready_s = start_server(cache, args.port, work / "server.log", extra_env)
        try:
            gateway = asyncio.run(gateway_phase(f"http://127.0.0.1:{args.port}", args.requests, args.concurrency))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        engine = asyncio.run(engine_phase(args.requests, args.concurrency, cache, engine_url))
    finally:
        if vllm_proc is not None:
            vllm_proc.terminate()
            vllm_proc.wait(timeout=60)
    report: dict[str, Any] = {
        "topology": args.topology,
        "service_ready_s": round(ready_s, 1),
        "gateway": gateway,
        "vllm_direct": engine,
    }
    ratios = {}
    for task in payloads(1):
        g, e = gateway[task], engine[task]
        ratios[task] = {
            "p50_latency_gateway_over_vllm": round(g["sequential"]["p50_ms"] / e["sequential"]["p50_ms"], 3),
            "concurrent_throughput_gateway_over_vllm": round(g["concurrent_rps"] / e["concurrent_rps"], 3),
        }
    report["ratios"] = ratios
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
