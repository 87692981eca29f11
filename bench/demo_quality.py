"""Demo adapters vs. the same tiny base without them, on held-out synthetic notes.

Loads a built demo (the shipped one by default: app/data/demo), starts one in-process
engine, and evaluates every shipped task twice through the serving path: with its demo
adapter, and with the base model alone (`"adapter": "none"`, prompted with the manifest's
few-shot example). Prints one JSON report and a markdown table. `medlora demo build`
records the same measurement in the demo's recipe.json.

    .venv/bin/python -m bench.demo_quality [--demo DIR] [--n 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from app.settings import DEMO_DIR, Settings
from app.tasks.manifests import load_tasks
from app.training.demo import measure


def _get(metrics: dict[str, Any], dotted: str) -> float:
    node: Any = metrics
    for part in dotted.split("."):
        node = node[part]
    return float(node)


def table(report: dict[str, Any]) -> str:
    settings = Settings()
    tasks = load_tasks(settings.tasks_dir, settings.schemas_dir)
    lines = ["| task | metric | base alone | with demo adapter |", "| --- | --- | ---: | ---: |"]
    for name, result in report["tasks"].items():
        for metric in tasks[name].kind.headline:
            base, adapter = _get(result["base"], metric), _get(result["adapter"], metric)
            lines.append(f"| {name} | {metric} | {base:.3f} | {adapter:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=DEMO_DIR, help="a built demo folder")
    parser.add_argument("--n", type=int, default=50, help="held-out records per task")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()
    settings = Settings()
    report = asyncio.run(measure(args.demo, load_tasks(settings.tasks_dir, settings.schemas_dir), args.n))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(table(report))


if __name__ == "__main__":
    main()
