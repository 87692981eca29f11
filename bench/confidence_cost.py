"""What confidence costs: the same engine requests with and without token log-probabilities.

One in-process engine serves the shipped demo (trained adapters, so answers have realistic
lengths). For each task, `--notes` synthetic notes become the gateway's own engine requests
(prompt, grammar, `max_tokens`, adapter), sent all at once, `--rounds` times each way in
alternating order after a warm-up of both; greedy decoding makes both ways generate the same
tokens. Throughput is notes per second (median round); the ratio is with over without.

    .venv/bin/python -m bench.confidence_cost [--notes 32] [--rounds 3] [--tasks NAME ...] [--demo DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.settings import DEMO_DIR, Settings
from app.tasks.prompts import load_renderer
from app.tasks.service import build_service
from app.training.synthetic import examples_for_task
from bench.models import demo_settings


async def run(settings: Settings, notes: int, rounds: int, only: list[str] | None = None) -> dict[str, Any]:
    service = build_service(settings)
    await service.start()
    service.runner.renderer = service.runner.renderer or load_renderer(service.model.path)
    report: dict[str, Any] = {"notes": notes, "rounds": rounds, "tasks": {}}
    try:
        for task in service.tasks.values():
            adapter = service.registry.bound(task.name)
            assert adapter is not None
            if only and task.name not in only:
                continue
            requests = []
            for i, row in enumerate(examples_for_task(task, notes, seed=5)):
                # Every generation a note needs (a form: one per item group).
                for j, ask in enumerate(task.kind.asks(task, {name: row[name] for name in task.kind.input_fields})):
                    requests.append(
                        service.runner.generation_request(
                            task, ask, adapter.handle, request_id=f"bench-{task.name}-{i}-{j}"
                        )
                    )
            # A warm-up of both ways first: the first requests pay for allocations and caches.
            await asyncio.gather(
                *(
                    service.engine.generate(replace(q, request_id=f"{q.request_id}-warm", logprobs=False))
                    for q in requests
                )
            )
            await asyncio.gather(
                *(
                    service.engine.generate(replace(q, request_id=f"{q.request_id}-warm-lp", logprobs=True))
                    for q in requests
                )
            )
            seconds: dict[bool, list[float]] = {False: [], True: []}
            tokens: dict[bool, int] = {}
            for r in range(rounds):
                for logprobs in (r % 2 == 0, r % 2 == 1):  # alternate which goes first
                    batch = [
                        replace(q, request_id=f"{q.request_id}-{r}-{logprobs}", logprobs=logprobs) for q in requests
                    ]
                    started = time.perf_counter()
                    results = await asyncio.gather(*(service.engine.generate(q) for q in batch))
                    seconds[logprobs].append(time.perf_counter() - started)
                    tokens[logprobs] = sum(res.completion_tokens for res in results)
                    assert all(res.token_logprobs is not None for res in results) == logprobs
            without, with_ = statistics.median(seconds[False]), statistics.median(seconds[True])
            report["tasks"][task.name] = {
                "tokens_decoded": tokens,
                "notes_per_s_without": round(notes / without, 2),
                "notes_per_s_with": round(notes / with_, 2),
                "throughput_with_over_without": round(without / with_, 3),
                "seconds": {
                    "without": [round(s, 2) for s in seconds[False]],
                    "with": [round(s, 2) for s in seconds[True]],
                },
            }
    finally:
        await service.stop()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", nargs="*", help="Only these tasks (default: every shipped task).")
    parser.add_argument("--demo", type=Path, default=DEMO_DIR, help="base and adapters in the demo's layout")
    args = parser.parse_args()
    report = asyncio.run(run(demo_settings(args.demo), args.notes, args.rounds, args.tasks))
    print(json.dumps(report, indent=2, default=str))
    print("| task | tokens decoded | notes/s without log-probabilities | with | with / without |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in report["tasks"].items():
        print(
            f"| {name} | {r['tokens_decoded'][True]:,} | {r['notes_per_s_without']} | {r['notes_per_s_with']} "
            f"| **{r['throughput_with_over_without']:.3f}** |"
        )


if __name__ == "__main__":
    main()
