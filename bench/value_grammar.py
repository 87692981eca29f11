"""Form values checked after decoding vs. constrained in the grammar, on the shipped demo.

The dyspnea form on held-out synthetic notes, twice through the serving path (in-process vLLM,
one engine per run): as shipped (any value within the item's bounds, then checked against its
evidence: `evidence_mismatch`), and with `values_stated_in_note: true` (the grammar offers a
number or date item only the values the chunk states, in every notation and through the item's
conversions; an item the chunk states none for cannot be filled). Prints, per number and date
item: accuracy against gold and the mismatch rate; overall slot P/R/F1 and decoded tokens.

    .venv/bin/python -m bench.value_grammar [--n 60] [--demo DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from app.settings import DEMO_DIR, Settings
from app.tasks.manifests import load_tasks
from app.tasks.service import build_service
from app.tasks.types.base import Task
from app.training.demo import held_out_records
from app.training.evaluate import predict_in_process, score
from bench.models import demo_settings
from bench.registry import counted

TASK = "crf-it-dyspnea"


async def run(demo: Path, task: Task, n: int) -> dict[str, Any]:
    settings = demo_settings(demo)
    registry = CollectorRegistry()
    service = build_service(settings, tasks={task.name: task}, metrics_registry=registry)
    await service.start()
    try:
        records = held_out_records(task, n)
        started = time.perf_counter()
        predictions = await predict_in_process(service, task, records)
        seconds = time.perf_counter() - started
    finally:
        await service.stop()
    return {
        "metrics": score(task, records, predictions),
        "failed": sum("error" in p for p in predictions),
        "decoded_tokens": counted(registry, "medlora_completion_tokens_total"),
        "seconds": round(seconds, 1),
    }


def table(task: Task, after: dict[str, Any], grammar: dict[str, Any]) -> str:
    rows = [
        "| item | accuracy: checked after | in the grammar | mismatch rate: checked after | in the grammar |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for item in task.manifest.items:
        if item.kind not in ("integer", "decimal", "date"):
            continue
        cells = []
        for key in ("per_item_accuracy", "evidence_mismatch"):
            for result in (after, grammar):
                value = result["metrics"].get(key, {}).get(item.name)
                cells.append("-" if value is None else f"{value:.3f}")
        rows.append(f"| {item.name} | {' | '.join(cells)} |")
    slots = [result["metrics"]["slots"] for result in (after, grammar)]
    prf = [f"{s['precision']:.3f} / {s['recall']:.3f} / {s['f1']:.3f}" for s in slots]
    rows.append(f"| **slots P / R / F1** (all 28 items) | {prf[0]} | {prf[1]} | | |")
    accuracy = [f"{result['metrics']['accuracy']:.3f}" for result in (after, grammar)]
    rows.append(f"| **accuracy** (all 28 items) | {accuracy[0]} | {accuracy[1]} | | |")
    rows.append(f"| decoded tokens | {after['decoded_tokens']:.0f} | {grammar['decoded_tokens']:.0f} | | |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=DEMO_DIR, help="a built demo folder")
    parser.add_argument("--n", type=int, default=60, help="held-out notes")
    args = parser.parse_args()
    settings = Settings()
    task = load_tasks(settings.tasks_dir, settings.schemas_dir)[TASK]
    variant = task.with_manifest(task.manifest.model_copy(update={"values_stated_in_note": True}))
    after = asyncio.run(run(args.demo, task, args.n))
    grammar = asyncio.run(run(args.demo, variant, args.n))
    print(json.dumps({"n": args.n, "checked_after": after, "in_grammar": grammar}, indent=2))
    print(table(task, after, grammar))


if __name__ == "__main__":
    main()
