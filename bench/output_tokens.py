"""What model answers cost in decoded tokens, with the real Qwen3 tokenizer.

1. Tokens per answer and per entity: the canonical model output of every chunk of
   `--notes` synthetic notes per task (`medlora synth`, seed 0), as training teaches it and the
   grammar admits it, tokenized with the Qwen3 tokenizer (tests/support/qwen3.py). Per answer
   counts the end-of-sequence token; per entity does not (answer tokens / entities). Relation
   tasks: tokens per relation (the relations list's tokens / relations). Forms: tokens per
   filled item (answer tokens / items written). Both next to the same answers written in the
   API's verbose shape (objects with ids and named fields; a form listing every item of its
   group, unknown ones included), the format a naive schema would make the model write.
2. The worst-case `max_tokens` per chunk the gateway sets for those chunks (the grammar's
   longest admissible answer).
3. NER generation on a random-weight tiny Qwen3 with that tokenizer (151,936 embedding rows)
   and a random LoRA, in-process vLLM: `--gen-notes` notes of the same set in one request,
   wall time and tokens decoded.

    .venv/bin/python -m bench.output_tokens --out /tmp/output-tokens.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from app.settings import Settings
from app.tasks.manifests import load_tasks
from app.tasks.prompts import PromptRenderer, serialize_output
from app.tasks.runner import TaskRunner
from app.tasks.service import build_service
from app.tasks.types.base import TaskInput
from app.training.datasets import load_records, model_outputs
from app.training.synthetic import examples_for_task, write_jsonl
from bench.models import random_qwen3_settings
from tests.support.qwen3 import qwen3_tokenizer

COMPACT = (",", ":")


def _verbose(ask: Any, output: dict[str, Any]) -> dict[str, Any]:
    """The same answer in the API's verbose shape (what a naive output schema would be)."""
    if "relations" in output:
        ids = [f"e{i}" for i in range(1, len(output["entities"]) + 1)]
        return {
            "entities": [{"id": i, "text": e[0], "label": e[1]} for i, e in zip(ids, output["entities"], strict=True)],
            "relations": [{"type": t, "head": ids[h], "tail": ids[k]} for t, h, k in output["relations"]],
        }
    items = []
    for name in ask.schema["properties"]:
        written = output.get(name)
        if written is None:
            items.append({"name": name, "status": "unknown", "value": None, "evidence": None})
        elif isinstance(written, str):
            items.append({"name": name, "status": "filled", "value": written, "evidence": written})
        else:
            value = written[1] if len(written) == 2 else written[1:]
            items.append({"name": name, "status": "filled", "value": value, "evidence": written[0]})
    return {"items": items}


def answer_costs(n_notes: int, work: Path) -> dict[str, Any]:
    settings = Settings()
    tasks = load_tasks(settings.tasks_dir, settings.schemas_dir)
    tokenizer = qwen3_tokenizer()
    # Only the prompt and budget arithmetic runs here: no engine, no metrics.
    runner = TaskRunner(None, None, max_model_len=settings.max_model_len, renderer=PromptRenderer(tokenizer))  # type: ignore[arg-type]
    out: dict[str, Any] = {}
    for name, task in tasks.items():
        path = work / f"{name}.jsonl"
        write_jsonl(path, examples_for_task(task, n_notes, 0))
        answers, tokens, entities, budgets = 0, 0, 0, []
        relations = relation_tokens = filled = verbose_tokens = 0

        def count(text: str) -> int:
            return len(tokenizer.encode(text, add_special_tokens=False))

        for record in load_records(task, path):
            for ask, output in model_outputs(task, record):
                tokens += count(serialize_output(ask.schema, output))
                answers += 1
                entities += len(output.get("entities", []))
                budgets.append(runner.budget(task, ask)[1])
                if task.type in ("relations", "form"):
                    verbose_tokens += count(json.dumps(_verbose(ask, output), ensure_ascii=False, separators=COMPACT))
                if task.type == "relations" and output["relations"]:
                    relations += len(output["relations"])
                    relation_tokens += count(json.dumps(output["relations"], separators=COMPACT))
                if task.type == "form":
                    filled += len(output)
        row: dict[str, Any] = {
            "answers": answers,
            # + 1: the end-of-sequence token is decoded too.
            "tokens_per_answer": round(tokens / answers + 1, 2),
            "max_tokens_mean": round(statistics.fmean(budgets), 1),
            "max_tokens_max": max(budgets),
        }
        if entities and task.type == "ner":
            row["entities"] = entities
            row["tokens_per_entity"] = round(tokens / entities, 2)
        if relations:
            row["relations"] = relations
            row["tokens_per_relation"] = round(relation_tokens / relations, 2)
            row["tokens_per_entity"] = round((tokens - relation_tokens) / max(1, entities), 2)
        if filled:
            row["items_filled"] = filled
            row["tokens_per_filled_item"] = round(tokens / filled, 2)
        if verbose_tokens:
            row["verbose_tokens_per_answer"] = round(verbose_tokens / answers + 1, 2)
            row["lean_vs_verbose"] = round((tokens + answers) / (verbose_tokens + answers), 3)
        out[name] = row
    return out


async def ner_generation(n_notes: int, work: Path) -> dict[str, Any]:
    service = build_service(random_qwen3_settings(work))
    await service.start()
    try:
        rows = examples_for_task(service.tasks["ner-it-clinical"], n_notes, 0)
        docs = [TaskInput(r["id"], {"text": r["text"]}, "text") for r in rows]
        out: dict[str, Any] = {}
        for label, temperature in (("greedy", 0.0), ("sampled_t1", 1.0)):
            # Greedy is how the shipped task runs; sampling at temperature 1 walks much more of
            # the grammar (a random-weight model's greedy answer is often the empty list).
            shipped = service.tasks["ner-it-clinical"]
            generation = shipped.manifest.generation.model_copy(update={"temperature": temperature})
            task = shipped.with_manifest(shipped.manifest.model_copy(update={"generation": generation}))
            with service.registry.lease(task.name) as adapter:
                # Warm-up (grammar compiler caches, first-request allocations), then the timed run.
                await service.runner.run(task, adapter, service.runner.plan(task, docs[:2]))
                before = _completion_tokens(service)
                started = time.perf_counter()
                results = await service.runner.run(task, adapter, service.runner.plan(task, docs))
                seconds = time.perf_counter() - started
            decoded = _completion_tokens(service) - before
            entities = sum(len(r.entities) for r in results)
            out[label] = {
                "notes": len(docs),
                "seconds": round(seconds, 2),
                "completion_tokens": int(decoded),
                "tokens_per_s": round(decoded / seconds, 1),
                "entities_returned": entities,
                "ms_per_entity": round(1000 * seconds / entities, 1) if entities else None,
            }
        return out
    finally:
        await service.stop()


def _completion_tokens(service: Any) -> float:
    total = 0.0
    for metric in service.metrics_registry.collect():
        if metric.name == "medlora_completion_tokens":
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", type=int, default=200)
    parser.add_argument("--gen-notes", type=int, default=16)
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--work", type=Path, default=None, help="Keep the random model here (default: a temp dir).")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        report: dict[str, Any] = {"answers": answer_costs(args.notes, work)}
        if not args.skip_generation:
            report["ner_generation"] = asyncio.run(ner_generation(args.gen_notes, work))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
