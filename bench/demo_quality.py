"""Demo adapters vs. the same tiny base without them, on held-out synthetic notes.

Builds the embedded demo if needed (pretrained tiny base + one trained adapter per task,
cached), starts one in-process engine, and evaluates every shipped task twice through the
serving path: with its demo adapter, and with the base model alone (`"adapter": "none"`,
prompted with the manifest's few-shot example). Prints one JSON report and a markdown table.

    .venv/bin/python -m bench.demo_quality [--cache DIR] [--n 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from app.settings import Settings
from app.tasks.service import build_service
from app.training.datasets import load_records
from app.training.demo import DEMO_CACHE_NAME
from app.training.evaluate import predict_in_process, score

HEADLINE = {
    "ner": ("strict.f1", "lenient.f1"),
    "qa": ("exact_match", "token_f1"),
    "classification": ("accuracy", "macro_f1"),
}


def _get(metrics: dict[str, Any], dotted: str) -> float:
    node: Any = metrics
    for part in dotted.split("."):
        node = node[part]
    return float(node)


async def run(cache: Path, n: int) -> dict[str, Any]:
    started = time.perf_counter()
    service = build_service(Settings(cache_dir=cache, embedded_adapters="demo"))
    build_s = time.perf_counter() - started
    await service.start()
    data = cache / DEMO_CACHE_NAME / "data"
    report: dict[str, Any] = {"demo_build_or_load_s": round(build_s, 1), "tasks": {}}
    try:
        for task in service.tasks.values():
            records = load_records(task, data / f"{task.name}-test.jsonl")[:n]
            runs: dict[str, Any] = {}
            for run_name, choice in (("adapter", None), ("base", "none")):
                predictions = await predict_in_process(service, task, records, adapter=choice)
                runs[run_name] = score(task, records, predictions)
            report["tasks"][task.name] = {"n": len(records), **runs}
    finally:
        await service.stop()
    return report


def table(report: dict[str, Any]) -> str:
    from app.settings import REPO_ROOT
    from app.tasks.manifests import load_tasks

    tasks = load_tasks(REPO_ROOT / "adapters", REPO_ROOT / "schemas")
    lines = ["| task | metric | base alone | with demo adapter |", "| --- | --- | ---: | ---: |"]
    for name, result in report["tasks"].items():
        for metric in HEADLINE[tasks[name].type]:
            base, adapter = _get(result["base"], metric), _get(result["adapter"], metric)
            lines.append(f"| {name} | {metric} | {base:.3f} | {adapter:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Settings().cache_dir)
    parser.add_argument("--n", type=int, default=50, help="held-out records per task")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()
    report = asyncio.run(run(args.cache, args.n))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(table(report))


if __name__ == "__main__":
    main()
