"""Per-request latency of the gateway vs. vLLM alone, same prompts, grammars and adapters.

Phase 1 starts `medlora serve` (the shipped demo, another model in its layout with --demo, or
the random-weight tiny Qwen3 with --random-weights) and times engine start, then sends every
shipped task's requests over HTTP (one synthetic note each): `--sequential` of them one at a
time, then all `--requests` with `--concurrency` in flight. Phase 2 (after the server stopped,
so both phases own the machine) starts an AsyncLLM in this process and sends the identical
engine requests directly (a request's asks together, as the gateway sends them). Greedy
decoding makes the generated tokens identical, so the ratio is the gateway's own cost. Each
side answers one request per task first, unmeasured (grammar caches, the de-identification
detectors' import). Entity linking, which has no counterpart on the engine side, is off.

With --topology split, a vLLM OpenAI server runs for both phases: phase 1 goes through a
`medlora serve` gateway in remote-engine mode, phase 2 posts the identical completion
requests straight to the vLLM server (the remote engine's client: one HTTP POST each).

    .venv/bin/python -m bench.latency --requests 64 --concurrency 64
    .venv/bin/python -m bench.latency --requests 8 --concurrency 8 --topology split --random-weights
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.engine.vllm_logs import LOGGING_CONFIG
from app.settings import DEMO_DIR, REPO_ROOT, Settings
from app.tasks.manifests import load_tasks
from app.training.synthetic import examples_for_task
from bench.models import model_env, model_settings, tasks_without_linking
from tests.fakes import total

SHIPPED = load_tasks(Settings().tasks_dir, Settings().schemas_dir)


def payloads(n: int, tasks: list[str]) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """Per task: endpoint and n request bodies (one synthetic note or question each)."""
    out: dict[str, tuple[str, list[dict[str, Any]]]] = {}
    for name in tasks:
        task = SHIPPED[name]
        rows = examples_for_task(task, n, seed=11)
        bodies = [
            {task.kind.items_field: [{"id": f"n{i}", **{f: row[f] for f in task.kind.input_fields}}]}
            for i, row in enumerate(rows)
        ]
        out[name] = (f"/v1/{task.kind.endpoint}", bodies)
    return out


@dataclass(frozen=True)
class Plan:
    demo: Path | None  # None: the random-weight tiny Qwen3
    work: Path  # the random-weight model's folder, logs
    tasks_dir: Path  # the shipped manifests without entity linking
    tasks: list[str]
    requests: int  # per task, sent with `concurrency` in flight
    sequential: int  # of them, first sent one at a time
    concurrency: int

    def settings(self, **overrides: object) -> Settings:
        return model_settings(self.demo, self.work, tasks_dir=self.tasks_dir, **overrides)

    def env(self) -> dict[str, str]:
        return {**model_env(self.demo, self.work), "MEDLORA_TASKS_DIR": str(self.tasks_dir)}


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p95_ms": round(1000 * ordered[max(0, round(0.95 * len(ordered)) - 1)], 1),
        "mean_ms": round(1000 * statistics.fmean(ordered), 1),
    }


async def gateway_phase(url: str, plan: Plan) -> dict[str, Any]:
    results: dict[str, Any] = {}
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=url, timeout=1800) as client:
        for task, (endpoint, bodies) in payloads(plan.requests, plan.tasks).items():
            statuses.append((await client.post(endpoint, json={"task": task, **bodies[0]})).status_code)  # warm-up
            sequential = []
            for body in bodies[: plan.sequential]:
                started = time.perf_counter()
                r = await client.post(endpoint, json={"task": task, **body})
                sequential.append(time.perf_counter() - started)
                statuses.append(r.status_code)
            sem = asyncio.Semaphore(plan.concurrency)

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
    invalid = total(metrics, "medlora_invalid_outputs_total")
    results["valid_share"] = round(statuses.count(200) / len(statuses), 4)
    results["responses"] = len(statuses)
    results["invalid_outputs_metric"] = invalid
    return results


async def engine_phase(plan: Plan, engine_url: str | None = None) -> dict[str, Any]:
    """The same engine requests the gateway builds, sent straight to AsyncLLM (or the vLLM server)."""
    from app.engine.base import GenerationRequest
    from app.tasks.service import build_service

    remote: dict[str, Any] = {"engine": "remote", "engine_urls": [engine_url]} if engine_url else {}
    service = build_service(plan.settings(**remote))
    started = time.perf_counter()
    await service.start()
    start_s = time.perf_counter() - started
    results: dict[str, Any] = {"engine_start_s": round(start_s, 1)}
    for task_name, (_, bodies) in payloads(plan.requests, plan.tasks).items():
        task = service.tasks[task_name]
        adapter = service.registry.bound(task_name)
        assert adapter is not None
        # Per request, the gateway's own engine requests (asks, prompts, grammars, budgets,
        # log-probabilities), so both phases send identical ones.
        per_body: list[list[GenerationRequest]] = []
        for i, body in enumerate(bodies):
            item = body[task.kind.items_field][0]
            asks = task.kind.asks(task, {name: item[name] for name in task.kind.input_fields})
            per_body.append(
                [
                    service.runner.generation_request(
                        task, ask, adapter.handle, request_id=f"bench-{task_name}-{i}-{j}-{time.monotonic_ns()}"
                    )
                    for j, ask in enumerate(asks)
                ]
            )

        async def send(requests: list[GenerationRequest], tag: str) -> None:
            await asyncio.gather(
                *(
                    service.engine.generate(GenerationRequest(**{**r.__dict__, "request_id": r.request_id + tag}))
                    for r in requests
                )
            )

        await send(per_body[0], "-w")  # warm-up, as on the gateway side
        sequential = []
        for requests in per_body[: plan.sequential]:
            t0 = time.perf_counter()
            await send(requests, "-s")
            sequential.append(time.perf_counter() - t0)
        sem = asyncio.Semaphore(plan.concurrency)

        async def one(requests: list[GenerationRequest], sem: asyncio.Semaphore = sem) -> None:
            async with sem:
                await send(requests, "-c")

        t0 = time.perf_counter()
        await asyncio.gather(*(one(r) for r in per_body))
        results[task_name] = {
            "sequential": summary(sequential),
            "concurrent_rps": round(len(per_body) / (time.perf_counter() - t0), 2),
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


def start_server(server_env: dict[str, str], port: int, log_path: Path) -> tuple[subprocess.Popen[bytes], float]:
    """`medlora serve` with these MEDLORA_* settings (model, adapters, ...) on `port`; seconds to ready."""
    env = {**os.environ, **server_env, "MEDLORA_PORT": str(port)}
    started = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    wait_up(proc, f"http://127.0.0.1:{port}/readyz", log_path)
    return proc, time.perf_counter() - started


def start_vllm_server(plan: Plan, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """A vLLM OpenAI server for the benchmark model, with the flags the gateway relies on."""
    from app.engine.remote.server_args import vllm_server_args

    settings = plan.settings()
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
    parser.add_argument("--requests", type=int, default=8, help="requests per task, sent concurrently")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sequential", type=int, default=8, help="of the requests, first sent one at a time")
    parser.add_argument("--tasks", nargs="*", default=sorted(SHIPPED), help="default: every shipped task")
    parser.add_argument("--demo", type=Path, default=DEMO_DIR, help="base and adapters in the demo's layout")
    parser.add_argument("--random-weights", action="store_true", help="the random-weight tiny Qwen3 instead")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--topology", choices=["local", "split"], default="local", help="in-process engine, or a vLLM server"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medlora-bench-"))
    plan = Plan(
        demo=None if args.random_weights else args.demo,
        work=work,
        tasks_dir=tasks_without_linking(work / "tasks"),
        tasks=args.tasks,
        requests=args.requests,
        sequential=min(args.sequential, args.requests),
        concurrency=args.concurrency,
    )
    vllm_proc, engine_url, extra_env = None, None, {}
    if args.topology == "split":
        engine_url = f"http://127.0.0.1:{args.port + 1}"
        vllm_proc = start_vllm_server(plan, args.port + 1, work / "vllm.log")
        extra_env = {"MEDLORA_ENGINE": "remote", "MEDLORA_ENGINE_URLS": engine_url}
    try:
        proc, ready_s = start_server({**plan.env(), **extra_env}, args.port, work / "server.log")
        try:
            gateway = asyncio.run(gateway_phase(f"http://127.0.0.1:{args.port}", plan))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        engine = asyncio.run(engine_phase(plan, engine_url))
    finally:
        if vllm_proc is not None:
            vllm_proc.terminate()
            vllm_proc.wait(timeout=60)
    report: dict[str, Any] = {
        "topology": args.topology,
        "model": "random weights" if plan.demo is None else str(plan.demo),
        "requests": plan.requests,
        "sequential": plan.sequential,
        "concurrency": plan.concurrency,
        "service_ready_s": round(ready_s, 1),
        "gateway": gateway,
        "vllm_direct": engine,
    }
    ratios = {}
    for task in plan.tasks:
        g, e = gateway[task], engine[task]
        ratios[task] = {
            "p50_latency_gateway_over_vllm": round(g["sequential"]["p50_ms"] / e["sequential"]["p50_ms"], 3),
            "concurrent_throughput_gateway_over_vllm": round(g["concurrent_rps"] / e["concurrent_rps"], 3),
        }
    report["ratios"] = ratios
    print(json.dumps(report, indent=2))
    print(table(report))


def table(report: dict[str, Any]) -> str:
    g, e, n = report["gateway"], report["vllm_direct"], report["concurrency"]
    lines = [
        f"| task | gateway p50 | vLLM p50 | p50 ratio | gateway req/s ({n} in flight) | vLLM req/s "
        "| throughput ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for task, r in report["ratios"].items():
        lines.append(
            f"| {task} | {g[task]['sequential']['p50_ms']:.0f} ms | {e[task]['sequential']['p50_ms']:.0f} ms "
            f"| {r['p50_latency_gateway_over_vllm']:.2f} | {g[task]['concurrent_rps']} | {e[task]['concurrent_rps']} "
            f"| **{r['concurrent_throughput_gateway_over_vllm']:.2f}** |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
