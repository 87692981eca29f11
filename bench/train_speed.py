"""Adapter training speed: one forward pass per sequence vs. `medlora train`'s batched passes.

The peer is the same `train_adapter` with `max_batch_tokens=1`, which runs every sequence
alone (what `medlora train` did before batching); both sides train the same steps on the same
synthetic notes from the same random tiny base with the demo's shape, one after the other.

    .venv/bin/python -m bench.train_speed [--steps 20] [--tasks ner-en-clinical,...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from app.settings import REPO_ROOT
from app.tasks.manifests import load_tasks
from app.training.datasets import load_records
from app.training.demo import DemoRecipe
from app.training.synthetic import examples_for_task, write_jsonl
from app.training.tiny_model import build_tiny_base, train_word_tokenizer
from app.training.train import TrainConfig, train_adapter

DEFAULT_TASKS = ("ner-it-clinical", "ner-en-clinical", "qa-it-clinical", "classify-it-note-type")


def measure(task_names: list[str], steps: int, records: int, work: Path) -> dict[str, Any]:
    tasks = load_tasks(REPO_ROOT / "adapters", REPO_ROOT / "schemas")
    recipe = DemoRecipe()
    corpus = [row["text"] for row in examples_for_task(tasks["ner-it-clinical"], 200, seed=0)]
    base = build_tiny_base(work / "base", tokenizer=train_word_tokenizer(corpus, recipe.vocab_size), shape=recipe.shape)
    report: dict[str, Any] = {"steps": steps, "tasks": {}}
    for name in task_names:
        task = tasks[name]
        data = work / f"{name}.jsonl"
        write_jsonl(data, examples_for_task(task, records, seed=1))
        rows = load_records(task, data)
        sides: dict[str, Any] = {}
        for side, budget in (("one_per_pass", 1), ("batched", TrainConfig().max_batch_tokens)):
            config = TrainConfig(max_steps=steps, max_batch_tokens=budget, save_every=10**9)
            started = time.perf_counter()
            result = train_adapter(task, str(base), rows, work / f"{name}-{side}", config=config, progress=False)
            sides[side] = {
                "seconds": round(time.perf_counter() - started, 1),
                "final_loss": result.losses[-1],
            }
        sides["speedup"] = round(sides["one_per_pass"]["seconds"] / sides["batched"]["seconds"], 2)
        report["tasks"][name] = sides
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per side (8 sequences each)")
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated task names")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        report = measure([t for t in args.tasks.split(",") if t], args.steps, args.records, Path(work))
    print(json.dumps(report, indent=2))
    print("| task | one sequence per pass | batched + shared prompt head | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for name, sides in report["tasks"].items():
        alone, batched = sides["one_per_pass"]["seconds"], sides["batched"]["seconds"]
        print(f"| {name} | {alone} s | {batched} s | {sides['speedup']}x |")


if __name__ == "__main__":
    main()
