"""Notes per second: `medlora annotate` vs. vLLM's own offline `LLM.generate`, same machine, same run.

Both sides get the same synthetic notes and the same engine requests: prompts, grammars, token
budgets, adapter and the log-probabilities confidence needs, all built by the gateway's own code
(`TaskRunner.generation_request`, `vllm_request`), so only the serving path differs. Each side
runs in its own subprocess, one after the other, so each owns the machine; engine start is
excluded from both timings. The medlora side is the whole annotate run: reading the JSONL,
building each request, generation through AsyncLLM, validation, grounding and writing the
output file line by line. Entity linking (a second generation per coded entity, which the peer
has no counterpart for) is off unless `--linking`.

    .venv/bin/python -m bench.batch_throughput --task ner-it-clinical --notes 200   # the demo
    .venv/bin/python -m bench.batch_throughput --task classify-it-note-type --random-weights
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from app.engine.base import AdapterHandle
from app.settings import DEMO_DIR, REPO_ROOT, Settings
from app.tasks.manifests import load_tasks
from app.training.synthetic import examples_for_task, write_jsonl
from bench.models import model_settings, tasks_without_linking

_MARK = "BENCH_RESULT "


def _service(args: argparse.Namespace) -> Any:
    from app.tasks.service import build_service

    demo = None if args.random_weights else args.demo
    overrides: dict[str, Any] = {} if args.linking else {"tasks_dir": tasks_without_linking(args.cache / "tasks")}
    return build_service(model_settings(demo, args.cache, **overrides))


def vllm_side(task_name: str, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The same engine requests annotate would send, through vLLM's offline LLM.generate."""
    from vllm import LLM
    from vllm.inputs import TokensPrompt

    from app.engine.local import vllm_request
    from app.tasks.prompts import load_renderer

    service = _service(args)
    task = service.tasks[task_name]
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    settings = service.settings
    # As VllmEngine.start does: the CPU backend reads its KV cache size from the environment.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kvcache_gib))
    llm = LLM(
        model=service.model.path,
        max_model_len=settings.max_model_len,
        enable_lora=True,
        max_loras=settings.max_loras,
        max_lora_rank=settings.max_lora_rank,
        structured_outputs_config={"backend": settings.structured_outputs_backend},
        seed=0,
    )
    ref = task.manifest.adapter
    adapter = AdapterHandle(
        key=f"{ref.name}@{ref.version}", lora_id=1, path=str(service.resolve_adapter_path(ref.path))
    )
    service.runner.renderer = load_renderer(service.model.path)
    prompts, params, loras = [], [], []
    for row in rows:
        # Notes fit one chunk: exactly the asks the gateway sends (a large form's groups apart).
        for ask in task.kind.asks(task, {name: row[name] for name in task.kind.input_fields}):
            request = service.runner.generation_request(task, ask, adapter)
            sampling, lora = vllm_request(request)
            prompts.append(TokensPrompt(prompt_token_ids=request.prompt_token_ids))
            params.append(sampling)
            loras.append(lora)
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, lora_request=loras, use_tqdm=False)
    seconds = time.perf_counter() - started
    finished = sum(1 for o in outputs if o.outputs[0].finish_reason == "stop")
    return {"notes": len(rows), "seconds": round(seconds, 2), "finished_stop": finished}


def medlora_side(task_name: str, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    from app.batch import annotate as an

    async def go() -> dict[str, Any]:
        service = _service(args)
        await service.start()
        kind = service.tasks[task_name].kind
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.jsonl"
            summary = an.Summary(task_name, str(data), str(out), str(an.default_errors_path(out)))
            started = time.perf_counter()
            await an.annotate(
                lambda: an.read_input(data, kind.input_fields, an.Columns()),
                an.in_process_backend(service),
                task=task_name,
                kind=kind,
                output=out,
                errors=an.default_errors_path(out),
                summary=summary,
                concurrency=args.concurrency,
            )
            seconds = time.perf_counter() - started
        await service.stop()
        return {"notes": summary.annotated + summary.failed, "seconds": round(seconds, 2), "failed": summary.failed}

    return asyncio.run(go())


def run_side(side: str, args: argparse.Namespace, data: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.batch_throughput", "--side", side, "--task", args.task]
    cmd += ["--data", str(data), "--cache", str(args.cache), "--concurrency", str(args.concurrency)]
    cmd += ["--demo", str(args.demo)] + ["--random-weights"] * args.random_weights + ["--linking"] * args.linking
    env = {**os.environ, "VLLM_WORKER_MULTIPROC_METHOD": "spawn"}
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{side} side failed:\n{done.stderr[-4000:]}")
    line = next(x for x in reversed(done.stdout.splitlines()) if x.startswith(_MARK))
    result: dict[str, Any] = json.loads(line[len(_MARK) :])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="classify-it-note-type")
    parser.add_argument("--notes", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=256, help="annotate --concurrency")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "medlora-bench-cache")
    parser.add_argument("--demo", type=Path, default=DEMO_DIR, help="base and adapters in the demo's layout")
    parser.add_argument("--random-weights", action="store_true", help="the random-weight tiny Qwen3 instead")
    parser.add_argument("--linking", action="store_true", help="keep the tasks' entity linking on the medlora side")
    parser.add_argument("--side", choices=["vllm", "medlora"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:  # one side, in its own process
        if args.side == "vllm":
            result = vllm_side(args.task, args.data, args)
        else:
            result = medlora_side(args.task, args.data, args)
        print(_MARK + json.dumps(result), flush=True)  # vLLM logs to stdout too
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "notes.jsonl"
        settings = Settings()
        task = load_tasks(settings.tasks_dir, settings.schemas_dir)[args.task]
        rows = examples_for_task(task, args.notes, seed=11)
        keys = task.kind.input_fields
        write_jsonl(data, [{"id": f"n{i}", **{k: r[k] for k in keys}} for i, r in enumerate(rows)])
        report: dict[str, Any] = {"task": args.task, "notes": args.notes, "concurrency": args.concurrency}
        report["model"] = "random weights" if args.random_weights else str(args.demo)
        report["linking"] = args.linking
        report["vllm_offline"] = run_side("vllm", args, data)
        report["medlora_annotate"] = run_side("medlora", args, data)
    v, m = report["vllm_offline"], report["medlora_annotate"]
    report["vllm_notes_per_s"] = round(v["notes"] / v["seconds"], 2)
    report["medlora_notes_per_s"] = round(m["notes"] / m["seconds"], 2)
    report["ratio"] = round(report["medlora_notes_per_s"] / report["vllm_notes_per_s"], 3)
    print(json.dumps(report, indent=2))
    print(table(report))


def table(report: dict[str, Any]) -> str:
    v, m = report["vllm_offline"], report["medlora_annotate"]
    return "\n".join(
        [
            f"| {report['task']} | notes | seconds | notes/s |",
            "| --- | ---: | ---: | ---: |",
            f"| vLLM `LLM.generate` | {v['notes']} | {v['seconds']} | {report['vllm_notes_per_s']} |",
            f"| `medlora annotate` | {m['notes']} | {m['seconds']} | {report['medlora_notes_per_s']} |",
            f"| medlora / vLLM | | | **{report['ratio']:.3f}** |",
        ]
    )


if __name__ == "__main__":
    main()
