"""Every adapter in one stream: mixed traffic over all shipped tasks vs. one task at a time.

The shipped demo, in process (one vLLM engine per `max_loras` setting). The same requests, one
held-out synthetic note each, are run twice at the same concurrency: task by task (each task's
notes together, so one adapter is active at a time) and mixed (every task's notes interleaved
in a random order, so the engine batches several adapters and swaps those that do not fit).
Throughput is notes per second over the whole run; the ratio mixed / one at a time is what
`max_loras` decides. vLLM's own counters give the prefix-cache hit rate (the prompt's
instruction head is first and the same for every note of a task, and vLLM keys cached blocks
per adapter) and the prompt tokens it computed per note.

    .venv/bin/python -m bench.mixed_adapters [--notes 12] [--concurrency 16] [--max-loras 4 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

from app.settings import DEMO_DIR, Settings
from app.tasks.calls import call_json
from app.tasks.manifests import load_tasks
from app.tasks.service import Service, build_service
from app.training.demo import held_out_records
from app.training.evaluate import request_body
from bench.models import demo_settings
from bench.registry import counted

_VLLM = ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits", "vllm:prompt_tokens", "vllm:generation_tokens")


def vllm_counters() -> dict[str, float]:
    """vLLM's own counters (the in-process engine registers them in the default registry)."""
    found = {name: counted(REGISTRY, f"{name}_total") for name in _VLLM}
    return {**found, "engine_steps": counted(REGISTRY, "vllm:iteration_tokens_total_count")}


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before[key] for key in after}


async def _run(service: Service, bodies: list[tuple[str, dict[str, Any]]], concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one(endpoint: str, body: dict[str, Any]) -> None:
        async with gate:
            # Background origin: admitted work waits its turn instead of a 429 after a few seconds.
            await call_json(service, endpoint, body, request_id="bench", origin="eval", priority=0)

    started = time.perf_counter()
    await asyncio.gather(*(one(endpoint, body) for endpoint, body in bodies))
    return time.perf_counter() - started


def figures(notes: int, seconds: float, counts: dict[str, float]) -> dict[str, Any]:
    queries = counts["vllm:prefix_cache_queries"]
    return {
        "notes_per_s": round(notes / seconds, 3),
        "seconds": round(seconds, 1),
        "prefix_cache_hit_rate": round(counts["vllm:prefix_cache_hits"] / queries, 3) if queries else None,
        # Prompt tokens vLLM computed (not served from its prefix cache), per note.
        "prefill_tokens_computed_per_note": round(
            (counts["vllm:prompt_tokens"] - counts["vllm:prefix_cache_hits"]) / notes, 1
        ),
        "engine_steps": int(counts["engine_steps"]),
    }


async def measure(demo: Path, max_loras: int, notes: int, concurrency: int, seed: int) -> dict[str, Any]:
    base = Settings()
    tasks = load_tasks(base.tasks_dir, base.schemas_dir)
    settings = demo_settings(demo, max_loras=max_loras, max_cpu_loras=max(max_loras, len(tasks)))
    service = build_service(settings, tasks=tasks, metrics_registry=CollectorRegistry())
    await service.start()
    try:
        per_task = {
            name: [(task.kind.endpoint, request_body(task, [record], None)) for record in held_out_records(task, notes)]
            for name, task in service.tasks.items()
        }
        await _run(service, [bodies[0] for bodies in per_task.values()], concurrency)  # warm every adapter once
        before = vllm_counters()
        one_at_a_time = 0.0
        for bodies in per_task.values():
            one_at_a_time += await _run(service, bodies, concurrency)
        single = figures(notes * len(per_task), one_at_a_time, delta(before, vllm_counters()))
        mixed_bodies = [body for bodies in per_task.values() for body in bodies]
        random.Random(seed).shuffle(mixed_bodies)
        before = vllm_counters()
        seconds = await _run(service, mixed_bodies, concurrency)
        mixed = figures(len(mixed_bodies), seconds, delta(before, vllm_counters()))
    finally:
        await service.stop()
    return {
        "max_loras": max_loras,
        "tasks": len(per_task),
        "one_task_at_a_time": single,
        "mixed": mixed,
        "ratio": round(mixed["notes_per_s"] / single["notes_per_s"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=DEMO_DIR)
    parser.add_argument("--notes", type=int, default=12, help="held-out notes per task")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-loras", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = [asyncio.run(measure(args.demo, n, args.notes, args.concurrency, args.seed)) for n in args.max_loras]
    print(json.dumps(results, indent=2))
    print(
        "| max_loras | one task at a time (notes/s) | mixed (notes/s) | mixed / one at a time |"
        " prefix-cache hits one / mixed | prefill tokens computed per note one / mixed |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        s, m = r["one_task_at_a_time"], r["mixed"]
        print(
            f"| {r['max_loras']} | {s['notes_per_s']} | {m['notes_per_s']} | **{r['ratio']}** | "
            f"{s['prefix_cache_hit_rate']} / {m['prefix_cache_hit_rate']} | "
            f"{s['prefill_tokens_computed_per_note']} / {m['prefill_tokens_computed_per_note']} |"
        )


if __name__ == "__main__":
    main()
