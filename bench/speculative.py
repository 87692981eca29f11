"""Engine steps with and without n-gram speculative decoding, every task type, on the demo.

One in-process service per setting (speculation off, then on with `--tokens` drafts and lookup
`--lookup-min`..`--lookup-max`), each answering, for every shipped task, `--notes` synthetic notes
in one request through medlora's serving path (`call_json`, the in-process twin of the HTTP API).
Reported per task:

- engine iterations: vLLM's own step counter (`vllm:iteration_tokens_total`), the figure a GPU's
  wall time follows (a decode step there is memory-bound, whatever the batch);
- sequence steps: the steps each generation took, summed (tokens decoded minus drafts accepted),
  per entity, per relation, per filled form item, per answer or per document;
- drafts accepted (medlora's per-task counters: drafted and accepted tokens of each request);
- whether the answers are identical and how far the confidences moved;
- wall seconds on this machine's CPU, the median of `--rounds` repeats of the request.

    .venv/bin/python -m bench.speculative [--notes 16] [--tokens 4] [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

from app.settings import DEMO_DIR, Settings
from app.tasks.calls import call_json
from app.tasks.service import Service, build_service
from app.training.synthetic import examples_for_task
from bench.models import demo_settings
from bench.registry import counted
from tests.support.speculative import answer_units, confidence_gap, without_confidences

SINGULAR = {
    "entities": "entity",
    "relations": "relation",
    "filled_items": "filled_item",
    "answers": "answer",
    "documents": "document",
}


def request_body(service: Service, name: str, notes: int, seed: int) -> dict[str, Any]:
    task = service.tasks[name]
    rows = examples_for_task(task, notes, seed)
    items = [{"id": f"n{i}", **{f: row[f] for f in task.kind.input_fields}} for i, row in enumerate(rows)]
    return {"task": name, task.kind.items_field: items}


async def one_setting(settings: Settings, notes: int, rounds: int) -> dict[str, Any]:
    registry = CollectorRegistry()
    service = build_service(settings, metrics_registry=registry)
    await service.start()
    out: dict[str, Any] = {}
    try:
        for name, task in service.tasks.items():
            endpoint = task.kind.endpoint
            # A warm-up on other notes: first requests pay for grammar compilers and allocations.
            await call_json(service, endpoint, request_body(service, name, 2, 1), **_call("warm"))
            labels = {"task": name}
            counters = ("medlora_completion_tokens_total", "medlora_draft_tokens_total")
            before = [counted(registry, c, labels) for c in counters]
            before_accepted = counted(registry, "medlora_accepted_draft_tokens_total", labels)
            before_iterations = counted(REGISTRY, "vllm:iteration_tokens_total_count")
            started = time.perf_counter()
            body = await call_json(service, endpoint, request_body(service, name, notes, 0), **_call(name))
            seconds = [time.perf_counter() - started]
            decoded, drafted = (counted(registry, c, labels) - b for c, b in zip(counters, before, strict=True))
            accepted = counted(registry, "medlora_accepted_draft_tokens_total", labels) - before_accepted
            iterations = counted(REGISTRY, "vllm:iteration_tokens_total_count") - before_iterations
            for _ in range(rounds - 1):  # the same request again, for a steadier wall time
                started = time.perf_counter()
                await call_json(service, endpoint, request_body(service, name, notes, 0), **_call(name))
                seconds.append(time.perf_counter() - started)
            out[name] = {
                "type": task.type,
                "body": body,
                "units": answer_units(task.type, body),
                "engine_iterations": int(iterations),
                "tokens_decoded": int(decoded),
                "sequence_steps": int(decoded - accepted),
                "draft_tokens": int(drafted),
                "accepted_draft_tokens": int(accepted),
                "seconds_cpu": round(statistics.median(seconds), 2),
            }
    finally:
        await service.stop()
    return out


def _call(tag: str) -> dict[str, Any]:
    return {"request_id": f"bench-speculative-{tag}", "origin": "api", "priority": 0}


def compare(off: dict[str, Any], on: dict[str, Any]) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for name, a in off.items():
        b = on[name]
        same = without_confidences(a["body"]) == without_confidences(b["body"])
        row: dict[str, Any] = {
            "type": a["type"],
            "answers_identical": same,
            "confidence_max_diff": round(confidence_gap(a["body"], b["body"]), 5) if same else None,
            "units": a["units"],
            "engine_iterations": [a["engine_iterations"], b["engine_iterations"]],
            "fewer_iterations": round(a["engine_iterations"] / max(1, b["engine_iterations"]), 2),
            "sequence_steps": [a["sequence_steps"], b["sequence_steps"]],
            "tokens_decoded": [a["tokens_decoded"], b["tokens_decoded"]],
            "acceptance": round(b["accepted_draft_tokens"] / b["draft_tokens"], 3) if b["draft_tokens"] else None,
            "draft_tokens": b["draft_tokens"],
            "seconds_cpu": [a["seconds_cpu"], b["seconds_cpu"]],
        }
        for unit, n in a["units"].items():
            if n:
                row[f"steps_per_{SINGULAR[unit]}"] = [
                    round(a["sequence_steps"] / n, 2),
                    round(b["sequence_steps"] / b["units"][unit], 2) if b["units"][unit] else None,
                ]
        report[name] = row
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="Timed repeats of each request (median wall time).")
    parser.add_argument("--lookup-min", type=int, default=2)
    parser.add_argument("--lookup-max", type=int, default=5)
    parser.add_argument("--out", help="Also write the report (JSON) here.")
    parser.add_argument("--demo", type=Path, default=DEMO_DIR, help="base and adapters in the demo's layout")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    lookup = {"speculative_lookup_min": args.lookup_min, "speculative_lookup_max": args.lookup_max}
    off = asyncio.run(one_setting(demo_settings(args.demo, speculative_tokens=0), args.notes, args.rounds))
    on = asyncio.run(
        one_setting(demo_settings(args.demo, speculative_tokens=args.tokens, **lookup), args.notes, args.rounds)
    )
    report = {
        "notes_per_request": args.notes,
        "speculative_tokens": args.tokens,
        "lookup": [args.lookup_min, args.lookup_max],
        "tasks": compare(off, on),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
