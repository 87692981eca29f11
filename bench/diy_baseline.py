"""medlora against the do-it-yourself alternative: transformers + peft + outlines.

The same model, adapters, notes, prompts and (as far as outlines can express them) answer
schemas on both sides, each run alone in this process, greedy, with the same max tokens:

- medlora: in process through the serving path (`build_service` with the local vLLM engine,
  `call_json` with origin "eval"), one request per note in turn ("one at a time") and one
  request holding every note of the task ("batched"). The engine's start is not timed.
- DIY: `AutoModelForCausalLM` + `PeftModel.from_pretrained` on the same adapter folders,
  `outlines.from_transformers` and one `outlines.Generator` per answer schema (its index built
  once, not timed, as a user would keep it), called note by note ("one at a time") and with
  `Generator.batch` over every note of the task ("batched": one `generate` with left padding).

The prompt is medlora's (`build_messages`, the model's chat template, thinking off); the DIY
side checks that it tokenizes to the ids medlora sends. outlines compiles a JSON schema into a
regex: it cannot copy spans from the note (medlora's grounding), and it ignores what its regex
builder does not know (integer bounds, a tuple's extra items), so it is given the task's
schema without the grounding, its attribute flags spelled out as alternatives (see
`outlines_schema`): an easier job than medlora's. Its answers are then checked as medlora
checks its own: parsed, validated against the task's schema, and their spans looked up in
the note (what medlora's grammar guarantees and outlines does not). NER runs without
terminology linking on both sides (linking is extra generations outlines has no counterpart
for).

    .venv/bin/python -m bench.diy_baseline [--notes 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from app.settings import DEMO_BASE_NAME, DEMO_DIR, Settings
from app.tasks.calls import call_json
from app.tasks.chunking import split_text
from app.tasks.grammar import json_escape
from app.tasks.manifests import load_tasks
from app.tasks.prompts import PromptRenderer, build_messages
from app.tasks.schema import worst_case_bytes
from app.tasks.service import build_service
from app.tasks.types.base import Ask, Task
from app.training.datasets import Record
from app.training.demo import held_out_records
from app.training.evaluate import request_body
from bench.models import demo_settings
from bench.registry import counted

TASKS = ("ner-it-clinical", "re-it-medication", "crf-it-dyspnea")
MODES = ("one at a time", "batched")
_OURS = "x-medlora-"  # medlora's own keywords (grounding, date years, decimals): outlines ignores them


# -- pure helpers --------------------------------------------------------------------------


def ordered_subsets(values: Sequence[Any], most: int) -> list[list[Any]]:
    """Every subset of `values` of at most `most` members, each in the order of `values`."""
    return [list(c) for size in range(min(most, len(values)) + 1) for c in itertools.combinations(values, size)]


def outlines_schema(schema: Any) -> Any:
    """The task's answer schema as outlines can take it: medlora's keywords dropped, and a tuple
    with a tail of flags (`prefixItems` then `items: {enum}`, which outlines' regex builder
    reduces to the prefix alone) spelled out as one alternative per ordered subset of the flags
    that fits `maxItems`, which is what medlora's grammar admits there."""
    if isinstance(schema, list):
        return [outlines_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    node = {k: outlines_schema(v) for k, v in schema.items() if not k.startswith(_OURS)}
    items = node.get("items")
    if "prefixItems" in node and isinstance(items, dict) and "enum" in items:
        prefix = node["prefixItems"]
        room = int(node.get("maxItems", len(prefix) + len(items["enum"]))) - len(prefix)
        return {
            "anyOf": [
                {
                    "type": "array",
                    "prefixItems": [*prefix, *({"const": flag} for flag in flags)],
                    "minItems": len(prefix) + len(flags),
                    "maxItems": len(prefix) + len(flags),
                }
                for flags in ordered_subsets(items["enum"], room)
            ]
        }
    return node


def decoded_tokens(ids: Iterable[int], stops: set[int]) -> int:
    """Tokens a generation decoded: up to and including its first stop token (what follows
    is padding, in a batch whose other rows were still going)."""
    count = 0
    for token in ids:
        count += 1
        if token in stops:
            break
    return count


def median_figures(runs: list[tuple[float, int]], notes: int) -> dict[str, float]:
    """Notes/s and decoded tokens/s from (seconds, decoded tokens) per repeat, median seconds."""
    seconds = statistics.median(s for s, _ in runs)
    tokens = statistics.median(t for _, t in runs)
    return {
        "seconds": round(seconds, 2),
        "notes_per_s": round(notes / seconds, 3),
        "decoded_tokens": int(tokens),
        "tokens_per_s": round(tokens / seconds, 1),
    }


@dataclass
class Checked:
    """The DIY answers read as medlora reads its own."""

    answers: int = 0
    unparsable: int = 0
    schema_invalid: int = 0
    spans: int = 0
    spans_not_in_note: int = 0

    def add(self, task: Task, ask: Ask, text: str) -> None:
        self.answers += 1
        try:
            output = json.loads(text)
        except json.JSONDecodeError:
            self.unparsable += 1
            return
        if next(iter(ask.validator.iter_errors(output)), None) is not None:
            self.schema_invalid += 1
            return
        strings = task.kind.grounded_strings(output)
        self.spans += len(strings)
        self.spans_not_in_note += sum(s not in ask.source for s in strings)


# -- the two sides -------------------------------------------------------------------------


@dataclass
class Workload:
    """One task's notes and what each note asks (one generation per ask on either side)."""

    task: Task
    records: list[Record]
    asks: list[list[Ask]] = field(default_factory=list)

    def __post_init__(self) -> None:
        gen = self.task.manifest.generation
        for record in self.records:
            source = record.payload[self.task.kind.source_field]
            if len(split_text(source, gen.max_chunk_chars, gen.chunk_overlap_chars)) != 1:
                raise ValueError("a note is chunked: the DIY side would see another prompt")
            self.asks.append(self.task.kind.asks(self.task, record.payload))


def max_tokens(ask: Ask) -> int:
    """medlora's token budget for an ask (TaskRunner.budget): the schema's worst case + EOS."""
    return worst_case_bytes(ask.schema, json_escape(ask.source)) + 1


class Diy:
    """transformers + peft + outlines, as a user would put them together."""

    def __init__(self, demo: Path, workloads: dict[str, Workload], device: str = "cpu"):
        import outlines
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        base_dir = str(demo / DEMO_BASE_NAME)
        self.tokenizer = AutoTokenizer.from_pretrained(base_dir)
        self.renderer = PromptRenderer(self.tokenizer)
        # On CPU float32, as medlora trains there (app/training/train.py): the weights are stored
        # in bfloat16, and torch's bfloat16 matmuls are slower on CPUs without native support.
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype).to(device)
        names = list(workloads)
        self.model = PeftModel.from_pretrained(base, str(demo / "adapters" / names[0]), adapter_name=names[0])
        for name in names[1:]:
            self.model.load_adapter(str(demo / "adapters" / name), adapter_name=name)
        self.model.eval()
        self.outlines = outlines.from_transformers(self.model, self.tokenizer)
        # The prompt is already rendered with medlora's template call (thinking off): outlines
        # would otherwise wrap that string as the user turn of a second chat template.
        self.outlines.type_adapter.has_chat_template = False  # type: ignore[attr-defined]
        self.stops = {int(t) for t in self._stop_ids()}
        self.last_ids: list[list[int]] = []
        original = self.outlines._generate_output_seq

        def recorded(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)  # type: ignore[no-untyped-call]
            self.last_ids = out.reshape(-1, out.shape[-1]).tolist()
            return out

        # Only to count the tokens each call decoded; outlines returns text alone.
        self.outlines._generate_output_seq = recorded  # type: ignore[method-assign]
        self.generators: dict[tuple[str, str], Any] = {}
        self.compile_s: dict[str, float] = {}
        for name, work in workloads.items():
            started = time.perf_counter()
            for ask in work.asks[0]:
                schema = outlines.types.JsonSchema(outlines_schema(ask.schema))
                self.generators[(name, ask.part)] = outlines.Generator(self.outlines, schema)
            self.compile_s[name] = round(time.perf_counter() - started, 2)

    def _stop_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        return list(eos) if isinstance(eos, list) else [eos]

    def prompt(self, task: Task, ask: Ask) -> str:
        return self.renderer.render(build_messages(task, ask.payload, ask.part))

    def check_prompts(self, work: Workload) -> None:
        """The DIY prompt tokenizes to the ids medlora sends (same template, same encoding)."""
        for asks in work.asks:
            for ask in asks:
                ours = self.renderer.prompt_ids(build_messages(work.task, ask.payload, ask.part))
                theirs = self.tokenizer(self.prompt(work.task, ask))["input_ids"]
                if list(theirs) != ours:
                    raise AssertionError(f"{work.task.name}: the DIY prompt differs from medlora's")

    def _call(self, run: Callable[..., Any], prompt: Any, budget: int) -> tuple[Any, int]:
        with self.torch.inference_mode():
            out = run(prompt, max_new_tokens=budget, do_sample=False)
        return out, sum(decoded_tokens(ids, self.stops) for ids in self.last_ids)

    def run(self, work: Workload, mode: str, checked: Checked | None = None) -> tuple[float, int]:
        name = work.task.name
        self.model.set_adapter(name)
        tokens = 0
        started = time.perf_counter()
        if mode == "one at a time":
            for asks in work.asks:
                for ask in asks:
                    gen = self.generators[(name, ask.part)]
                    prompt = self.prompt(work.task, ask)
                    text, n = self._call(gen, prompt, max_tokens(ask))
                    tokens += n
                    if checked is not None:
                        checked.add(work.task, ask, text)
        else:
            for i, ask0 in enumerate(work.asks[0]):
                batch = [asks[i] for asks in work.asks]
                gen = self.generators[(name, ask0.part)]
                prompts = [self.prompt(work.task, ask) for ask in batch]
                budget = max(max_tokens(ask) for ask in batch)
                texts, n = self._call(gen.batch, prompts, budget)
                tokens += n
                if checked is not None:
                    for ask, text in zip(batch, texts, strict=True):
                        checked.add(work.task, ask, text)
        return time.perf_counter() - started, tokens


def measure_diy(demo: Path, workloads: dict[str, Workload], repeats: int, device: str = "cpu") -> dict[str, Any]:
    diy = Diy(demo, workloads, device)
    found: dict[str, Any] = {}
    for name, work in workloads.items():
        diy.check_prompts(work)
        warm = Workload(work.task, work.records[:1])
        diy.run(warm, "one at a time")
        checked = Checked()
        runs: dict[str, list[tuple[float, int]]] = {mode: [] for mode in MODES}
        for repeat in range(repeats):
            for mode in MODES:
                runs[mode].append(diy.run(work, mode, checked if repeat == 0 else None))
        notes = len(work.records)
        found[name] = {
            "index_build_s": diy.compile_s[name],
            "checked": vars(checked),
            **{mode: median_figures(runs[mode], notes) for mode in MODES},
        }
    return found


async def measure_medlora(demo: Path, workloads: dict[str, Workload], repeats: int) -> dict[str, Any]:
    registry = CollectorRegistry()
    service = build_service(
        demo_settings(demo), tasks={n: w.task for n, w in workloads.items()}, metrics_registry=registry
    )
    await service.start()

    def completion_tokens(task: str) -> float:
        return counted(registry, "medlora_completion_tokens_total", {"task": task})

    async def call(task: Task, records: list[Record]) -> None:
        body = request_body(task, records, None)
        await call_json(service, task.kind.endpoint, body, request_id="bench", origin="eval", priority=0)

    async def run(work: Workload, mode: str) -> tuple[float, int]:
        before = completion_tokens(work.task.name)
        started = time.perf_counter()
        if mode == "one at a time":
            for record in work.records:
                await call(work.task, [record])
        else:
            await call(work.task, work.records)
        seconds = time.perf_counter() - started
        return seconds, int(completion_tokens(work.task.name) - before)

    found: dict[str, Any] = {}
    try:
        for name, work in workloads.items():
            await call(work.task, work.records[:1])  # its adapter loaded, its code paths warm
            runs: dict[str, list[tuple[float, int]]] = {mode: [] for mode in MODES}
            for _ in range(repeats):
                for mode in MODES:
                    runs[mode].append(await run(work, mode))
            found[name] = {mode: median_figures(runs[mode], len(work.records)) for mode in MODES}
    finally:
        await service.stop()
    return found


def workloads(notes: int) -> dict[str, Workload]:
    settings = Settings()
    tasks = load_tasks(settings.tasks_dir, settings.schemas_dir)
    # Without terminology linking: one generation per note (per form group) on both sides.
    plain = {n: Task(tasks[n].manifest, tasks[n].schema, tasks[n].source, tasks[n].kind) for n in TASKS}
    return {n: Workload(task, held_out_records(task, notes)) for n, task in plain.items()}


def table(diy: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    lines = [
        "| task | mode | medlora notes/s | DIY notes/s | medlora / DIY | decoded tokens medlora / DIY |"
        " tokens/s medlora / DIY |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in diy:
        for mode in MODES:
            m, d = ours[name][mode], diy[name][mode]
            lines.append(
                f"| {name} | {mode} | {m['notes_per_s']} | {d['notes_per_s']} | "
                f"**{m['notes_per_s'] / d['notes_per_s']:.1f}×** | {m['decoded_tokens']} / {d['decoded_tokens']} | "
                f"{m['tokens_per_s']} / {d['tokens_per_s']} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=DEMO_DIR)
    parser.add_argument("--notes", type=int, default=16, help="held-out notes per task (the same on both sides)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each task and mode; medians reported")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument(
        "--device", default="cpu", help="the DIY side's torch device (cuda: bfloat16 there; not run here, no GPU)"
    )
    args = parser.parse_args()
    work = {name: w for name, w in workloads(args.notes).items() if name in args.tasks}
    # The machine's load before each side: other work on shared cores slows whichever side it meets.
    print(json.dumps({"load_average_before_diy": os.getloadavg()}), flush=True)
    diy = measure_diy(args.demo, work, args.repeats, args.device)
    print(json.dumps({"diy": diy, "load_average_before_medlora": os.getloadavg()}, indent=2), flush=True)
    ours = asyncio.run(measure_medlora(args.demo, work, args.repeats))
    print(json.dumps({"medlora": ours, "load_average_after": os.getloadavg()}, indent=2))
    print("\n".join(table(diy, ours)))


if __name__ == "__main__":
    main()
