"""The embedded demo: a tiny Qwen3 that answers sensibly on synthetic clinical notes, shipped.

`medlora demo build` makes it, all local and deterministic, with `medlora train`'s own code:
1. a random-weight tiny Qwen3 (`tiny_model.build_tiny_base`, 4 layers x 128, 4 heads of 64),
   with word-level tokens learnt from the pretraining text (a word copied from a note into
   a JSON string keeps its token ids);
2. pretrained as a causal LM on synthetic notes, each in a chat turn answered by a JSON
   "span warm-up": runs of that note's words (random runs, or for half the NER notes the
   note's clinical terms), copied in document order into the NER and QA answer formats with
   random labels and attributes (never the gold labels, and never a classification label,
   so the base alone still cannot do the tasks: it plays the role of a general base model
   that knows JSON, medical terms and how to copy), plus the tasks' prompt heads;
3. one LoRA adapter per shipped task, trained by `train.train_adapter` on synthetic
   annotated notes;
4. measured: every task on held-out synthetic notes, with its adapter and with the same base
   alone, through the serving path (in-process vLLM).
The output (base, adapters, `recipe.json` with the recipe, seeds, data sizes and figures) is
committed as package data (app/data/demo, a few MB), so `medlora serve` starts in seconds.
A tiny model learning templated synthetic notes is a demo of the pipeline, not a claim
about real clinical text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.settings import DEMO_BASE_NAME, DEMO_DIR, Settings
from app.tasks.adapters import AdapterChoice
from app.tasks.prompts import build_messages, serialize_output
from app.tasks.service import build_service
from app.tasks.types.base import Task
from app.training.datasets import Record, load_records
from app.training.evaluate import predict_in_process, score
from app.training.synthetic import examples_for_task, write_jsonl
from app.training.tiny_model import CHAT_TEMPLATE, IM_END, TinyShape, build_tiny_base, train_word_tokenizer

log = logging.getLogger("medlora.demo")

# Bump with every change to the recipe or to a task's answer format: the shipped demo is
# rebuilt (`medlora demo build`) and its figures re-measured. 6: token-lean NER answers.
# 7: relation and form tasks.
RECIPE_VERSION = 7
TRAIN_SEED, TEST_SEED, PRETRAIN_SEED = 1, 99, 7
BASE_NAME = DEMO_BASE_NAME
RECIPE_FILE = "recipe.json"


@dataclass(frozen=True)
class DemoRecipe:
    # 4 layers x 4 heads (with 3 pretraining epochs and 30 prompt copies) over the 2 x 2 tests'
    # model: NER strict F1 0.36/0.25 -> 0.38/0.33 (it/en), QA 0.30 -> 0.43, classification
    # 0.33 -> 0.93 (recipe v4 experiments, docs/benchmarks.md), for twice the training time.
    shape: TinyShape = field(
        default_factory=lambda: TinyShape(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    )
    # Word-level tokens learned from the notes: their ~2,700 distinct words, numbers and
    # punctuation runs all become single tokens at this size (at 4096, 785 of them split).
    vocab_size: int = 6144
    pretrain_notes_per_task: int = 600
    prompt_copies: int = 30
    head_share: float = 0.1
    pretrain_epochs: int = 3
    pretrain_lr: float = 3e-3
    # Share of the NER notes whose warm-up copies the note's clinical terms (in order, with
    # random labels and attributes) instead of random word runs: a general model knows which
    # words are medical terms; what the adapter must learn is the task's labels and attributes.
    # NER-en strict F1 after 10 adapter epochs: 0.36 -> 0.50 (0.47 with every note's terms).
    mention_share: float = 0.5
    train_records: dict[str, int] = field(
        default_factory=lambda: {
            "ner-it-clinical": 300,
            "ner-en-clinical": 300,
            "qa-it-clinical": 300,
            "classify-it-note-type": 300,
            "re-it-medication": 300,
            "re-en-medication": 300,
            "crf-it-dyspnea": 300,
            # Trained alone on the shipped base in a few minutes (demo build --only): a smaller budget.
            "deid-clinical": 160,
        }
    )
    test_records: int = 50
    # Measured on 2 cores: 3 epochs of 120 notes left classification at one class; 300 x 6
    # reached 100% held-out accuracy. The tiny model needs this budget; real ones far less.
    epochs: float = 5.0
    # NER and QA copy spans, where the tiny model is short of training: passes over the same
    # notes are what helps (NER-en strict F1 0.36 after 10 epochs, 0.49 after 20; 600 notes x
    # 5 epochs gave 0.30), and so does a higher rate (0.36 -> 0.42 at 1e-2; docs/benchmarks.md).
    task_epochs: dict[str, float] = field(
        default_factory=lambda: {
            "ner-it-clinical": 10.0,
            "ner-en-clinical": 10.0,
            "qa-it-clinical": 10.0,
            "re-it-medication": 10.0,
            "re-en-medication": 10.0,
            "crf-it-dyspnea": 10.0,
            "deid-clinical": 3.0,
        }
    )
    learning_rate: float = 3e-3
    # QA on the v6 base (50 held-out notes, 10 epochs): EM 0.46 / 0.48 / 0.52 / 0.44 at
    # 2e-3 / 3e-3 / 4e-3 / 6e-3 (docs/benchmarks.md).
    task_learning_rates: dict[str, float] = field(
        default_factory=lambda: {
            "ner-it-clinical": 1e-2,
            "ner-en-clinical": 1e-2,
            "qa-it-clinical": 4e-3,
            "re-it-medication": 1e-2,
            "re-en-medication": 1e-2,
            "crf-it-dyspnea": 1e-2,
            "deid-clinical": 1e-2,
        }
    )
    rank: int = 16
    # No LoRA dropout: on CPU its masks cost ~12% of a training step, and NER F1 did not move.
    dropout: float = 0.0
    max_steps: int | None = None  # tests cap training to prove the pipeline, not quality


_WORD = re.compile(r"\w+")


def _random_spans(note: str, rng: random.Random, count: int) -> list[str]:
    """Up to `count` non-overlapping runs of 1-4 words of one line of `note`, in document order."""
    words = [(m.start(), m.end()) for m in _WORD.finditer(note)]
    spans: list[str] = []
    i = rng.randrange(3) if words else 0
    while i < len(words) and len(spans) < count:
        j = min(len(words), i + rng.randint(1, 4))
        text = note[words[i][0] : words[j - 1][1]]
        if "\n" not in text and len(text) <= 60:
            spans.append(text)
        # Half the spans start at the word right after the last one copied: a sharp target
        # for "continue where the last span ended", which NER needs before learning which
        # words to skip (still weakly learnt: docs/benchmarks.md, first span token).
        i = j + (0 if rng.random() < 0.5 else rng.randint(1, 4))
    return spans


def span_warmup(
    note: str,
    tasks: dict[str, Task],
    lang: str,
    rng: random.Random,
    mentions: list[str] | None = None,
    mention_share: float = 0.0,
) -> tuple[str, str] | None:
    """(task name, JSON answer) in the exact answer format of the NER or QA adapters
    (`serialize_output`), whose strings are copied from the note in order and whose labels
    and attributes are random. With probability `mention_share` the strings are the note's
    clinical terms (`mentions`), otherwise random word runs: the base learns to copy terms
    into the answer format and where terms sit, but no prior on any task's labels. None
    when `tasks` lacks the task of the format drawn (a demo built for some tasks only)."""
    if lang == "it" and rng.random() < 0.5:
        spans = _random_spans(note, rng, 1)
        answer = spans[0] if spans and rng.random() < 0.8 else None
        qa = tasks.get("qa-it-clinical")
        return None if qa is None else (qa.name, serialize_output(qa.schema, {"answer": answer}))
    ner = tasks.get(f"ner-{lang}-clinical")
    if ner is None:
        return None
    texts = mentions if mentions and rng.random() < mention_share else _random_spans(note, rng, rng.randint(1, 12))
    entities = []
    for text in texts:
        label = rng.choice(ner.label_names)
        flags = [name for name in ner.attribute_names if rng.random() < 0.15]
        entities.append([text, label, *flags])
    return ner.name, serialize_output(ner.schema, {"entities": entities})


def render_chat(messages: list[dict[str, str]], *, generation_prompt: bool) -> str:
    """The tiny base's own chat template, rendered as transformers does (thinking disabled)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(CHAT_TEMPLATE).render(
        messages=messages, add_generation_prompt=generation_prompt, enable_thinking=False
    )


def prompt_documents(tasks: dict[str, Task]) -> list[str]:
    """Each task's served prompt head (instructions, label list, few-shot example) in the chat
    layout. Without them the word-level tokens of label names, of the classification JSON
    (`":["`, `"]}`) and of the instructions are never trained, and tied embeddings push their
    logits so low (initial completion loss 22) that a LoRA on the projections cannot raise them."""
    docs: list[str] = []
    payload = {"text": "", "context": "", "question": ""}
    for task in tasks.values():
        # One head per part the task asks for (a large form's item groups each have theirs).
        for ask in task.kind.asks(task, payload):
            # build_messages ends with the user turn for the payload; keep the head before it.
            head = build_messages(task, payload, ask.part)[:-1]
            docs.append(render_chat(head, generation_prompt=False))
    return docs


def pretrain_texts(recipe: DemoRecipe, tasks: dict[str, Task]) -> list[str]:
    """Every note as a chat turn answered by its span warm-up (a `head_share` of the NER ones
    behind the task's full served prompt head, so copying is learnt at serving positions and
    past the same instructions), plus `prompt_copies` of every task's prompt head."""
    rng = random.Random(PRETRAIN_SEED)
    texts: list[str] = []
    for task_name in recipe.train_records:
        if task_name not in tasks:  # a demo built for some tasks only
            continue
        lang = tasks[task_name].manifest.languages[0]
        for row in examples_for_task(tasks[task_name], recipe.pretrain_notes_per_task, PRETRAIN_SEED):
            note = row.get("text") or row["context"]
            mentions = [e["text"] for e in row.get("entities", [])]
            warmup = span_warmup(note, tasks, lang, rng, mentions, recipe.mention_share)
            if warmup is None:
                continue
            shape, answer = warmup
            task = tasks.get(shape)
            if task is not None and task.type == "ner" and rng.random() < recipe.head_share:
                messages = build_messages(task, {"text": note})
            else:
                messages = [{"role": "user", "content": f"Text:\n{note}"}]
            texts.append(render_chat(messages, generation_prompt=True) + answer + IM_END)
    texts += prompt_documents(tasks) * recipe.prompt_copies
    rng.shuffle(texts)
    return texts


def pretrain_base(random_base: Path, out_dir: Path, texts: list[str], *, epochs: int, lr: float) -> list[float]:
    """Full-parameter causal-LM training of the tiny base on the texts (whole sequences);
    returns the mean loss of each epoch."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(PRETRAIN_SEED)
    tokenizer = AutoTokenizer.from_pretrained(random_base)
    model: Any = AutoModelForCausalLM.from_pretrained(random_base, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    # 1024 fits a note behind the longest prompt head (NER-it, ~410 tokens) and its answer.
    encoded = [tokenizer.encode(t, add_special_tokens=False)[:1024] for t in texts]
    batch_size = 8
    # Batches of similar lengths (in shuffled order): a few long texts would otherwise pad
    # most batches to their width.
    by_length = sorted(range(len(encoded)), key=lambda k: len(encoded[k]))
    batches = [by_length[i : i + batch_size] for i in range(0, len(by_length), batch_size)]
    order = random.Random(PRETRAIN_SEED)
    epoch_losses: list[float] = []
    for epoch in range(epochs):
        total = 0.0
        order.shuffle(batches)
        for indices in batches:
            batch = [encoded[k] for k in indices]
            width = max(len(ids) for ids in batch)
            inputs = torch.full((len(batch), width), tokenizer.pad_token_id)
            labels = torch.full((len(batch), width), -100)
            for row, ids in enumerate(batch):
                inputs[row, : len(ids)] = torch.tensor(ids)
                labels[row, : len(ids)] = torch.tensor(ids)
            loss = model(input_ids=inputs, labels=labels, attention_mask=(labels != -100).long()).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.item()
        epoch_losses.append(round(total / max(1, len(batches)), 4))
        log.info("demo base pretraining", extra={"epoch": epoch, "loss": epoch_losses[-1]})
    # Saved in bf16 like the random base: vLLM's CPU backend serves it as such.
    model.to(torch.bfloat16).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    for extra in ("generation_config.json",):
        if (random_base / extra).is_file() and not (out_dir / extra).is_file():
            shutil.copy(random_base / extra, out_dir / extra)
    return epoch_losses


def build_demo(
    out_dir: Path, tasks: dict[str, Task], recipe: DemoRecipe | None = None, *, measure_records: int | None = None
) -> dict[str, Any]:
    """Build the demo into out_dir (base, adapters/<manifest adapter path>, recipe.json) from
    scratch, replacing what is there; return the recipe record. Every task of `tasks` must be
    one the recipe trains (and the synthetic generator writes).

    `measure_records` held-out notes per task are then scored with the adapter and with the
    base alone (0: not measured; default: the recipe's test_records)."""
    recipe = recipe or DemoRecipe()
    missing = sorted(set(tasks) - set(recipe.train_records))
    if missing:
        raise ValueError(f"the demo recipe has no training data for {missing}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".demo-build-", dir=out_dir.parent) as tmp:
        work = Path(tmp)
        staged = work / "demo"
        base = staged / BASE_NAME
        texts = pretrain_texts(recipe, tasks)
        # Merges from exactly the pretraining text: every token the tasks use gets trained.
        tokenizer = train_word_tokenizer(texts, recipe.vocab_size)
        random_base = build_tiny_base(work / "random-base", tokenizer=tokenizer, shape=recipe.shape)
        losses = pretrain_base(random_base, base, texts, epochs=recipe.pretrain_epochs, lr=recipe.pretrain_lr)
        timings = {"pretrain_s": round(time.perf_counter() - started, 1)}
        for task in tasks.values():
            timings[f"{task.name}_s"] = _train_demo_adapter(task, base, staged / "adapters", work / "data", recipe)
        record = {**_record(recipe, tasks, timings), "pretrain_loss": losses}
        (staged / RECIPE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.move(staged, out_dir)
    n = recipe.test_records if measure_records is None else measure_records
    if n:
        record["figures"] = asyncio.run(measure(out_dir, tasks, n))
    record["build_seconds"] = round(time.perf_counter() - started, 1)
    (out_dir / RECIPE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    log.info("demo built", extra={"seconds": record["build_seconds"], "out": str(out_dir)})
    return record


def add_demo_adapter(
    demo_dir: Path, task: Task, recipe: DemoRecipe | None = None, *, measure_records: int | None = None
) -> dict[str, Any]:
    """Train one task's adapter on the demo's existing base (the recipe's data, seed, epochs and
    rate for that task) and add it to the demo and its recipe.json, keeping the base and every
    other adapter: a task added after the demo was built, without the hour a rebuild takes.
    The base was not pretrained on this task's notes or prompt head; recipe.json says so."""
    recipe = recipe or DemoRecipe()
    demo_dir = Path(demo_dir)
    record = shipped_recipe(demo_dir)
    if record is None:
        raise ValueError(f"{demo_dir} holds no built demo (no {RECIPE_FILE})")
    with tempfile.TemporaryDirectory(prefix=".demo-adapter-", dir=demo_dir.parent) as tmp:
        staged = Path(tmp) / "adapters"
        seconds = _train_demo_adapter(task, demo_dir / BASE_NAME, staged, Path(tmp) / "data", recipe)
        target = demo_dir / "adapters" / task.manifest.adapter.path
        if target.exists():
            shutil.rmtree(target)
        shutil.move(staged / task.manifest.adapter.path, target)
    record["data"]["train_records"][task.name] = recipe.train_records[task.name]
    record["tasks"][task.name] = {"adapter": task.manifest.adapter.path, "schema": task.manifest.schema_file}
    record["timings"][f"{task.name}_s"] = seconds
    added = record.setdefault("added_later", {})
    added[task.name] = {
        "how": "adapter trained alone on the existing base (medlora demo build --only); the base's "
        "pretraining saw neither this task's notes nor its prompt head",
        "train_records": recipe.train_records[task.name],
        "epochs": recipe.task_epochs.get(task.name, recipe.epochs),
        "learning_rate": recipe.task_learning_rates.get(task.name, recipe.learning_rate),
        "max_steps": recipe.max_steps,
        "seconds": seconds,
    }
    (demo_dir / RECIPE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    n = recipe.test_records if measure_records is None else measure_records
    return measure_added(demo_dir, task, n) if n else record


def measure_added(demo_dir: Path, task: Task, n: int) -> dict[str, Any]:
    """The held-out figures of one task's demo adapter (as build_demo measures every task's),
    recorded beside the others in recipe.json."""
    figures = asyncio.run(measure(demo_dir, {task.name: task}, n))
    record = shipped_recipe(demo_dir)
    assert record is not None
    record.setdefault("figures", {"tasks": {}})["tasks"][task.name] = figures["tasks"][task.name]
    (demo_dir / RECIPE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _train_demo_adapter(task: Task, base: Path, adapters: Path, data: Path, recipe: DemoRecipe) -> float:
    from app.training.train import TrainConfig, train_adapter

    started = time.perf_counter()
    data.mkdir(parents=True, exist_ok=True)
    train_path = data / f"{task.name}-train.jsonl"
    write_jsonl(train_path, examples_for_task(task, recipe.train_records[task.name], TRAIN_SEED))
    target = adapters / task.manifest.adapter.path
    train_adapter(
        task,
        str(base),
        load_records(task, train_path),
        target,
        config=TrainConfig(
            rank=recipe.rank,
            alpha=2 * recipe.rank,
            dropout=recipe.dropout,
            learning_rate=recipe.task_learning_rates.get(task.name, recipe.learning_rate),
            epochs=recipe.task_epochs.get(task.name, recipe.epochs),
            max_steps=recipe.max_steps,
            save_every=10**9,
        ),
        adapter_name=task.manifest.adapter.name,
        adapter_version=task.manifest.adapter.version,
        progress=False,
    )
    # Shipped files only: the weights, their config naming the shipped base, the training
    # summary. registration.json and PEFT's model card would hold this machine's paths.
    shutil.rmtree(target / "checkpoint", ignore_errors=True)
    (target / "registration.json").unlink(missing_ok=True)
    (target / "README.md").unlink(missing_ok=True)
    config_path = target / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = BASE_NAME
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    summary_path = target / "training.json"
    summary = json.loads(summary_path.read_text())
    summary["out_dir"] = task.manifest.adapter.path
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    seconds = round(time.perf_counter() - started, 1)
    log.info("demo adapter trained", extra={"task": task.name, "seconds": seconds})
    return seconds


def _record(recipe: DemoRecipe, tasks: dict[str, Task], timings: dict[str, float]) -> dict[str, Any]:
    import torch
    import transformers

    return {
        "recipe_version": RECIPE_VERSION,
        "base": BASE_NAME,
        "seeds": {"pretrain": PRETRAIN_SEED, "train": TRAIN_SEED, "test": TEST_SEED},
        "data": {
            "pretrain_notes_per_task": recipe.pretrain_notes_per_task,
            "train_records": {name: recipe.train_records[name] for name in tasks},
            "test_records": recipe.test_records,
        },
        "recipe": asdict(recipe),
        "tasks": {
            name: {"adapter": task.manifest.adapter.path, "schema": task.manifest.schema_file}
            for name, task in tasks.items()
        },
        "built_with": {"torch": torch.__version__, "transformers": transformers.__version__, "cpus": os.cpu_count()},
        "timings": timings,
    }


def held_out_records(task: Task, n: int) -> list[Record]:
    """The held-out synthetic notes the demo's figures are measured on (seed TEST_SEED)."""
    rows = examples_for_task(task, n, TEST_SEED)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "test.jsonl"
        write_jsonl(path, rows)
        return load_records(task, path)


async def measure(demo_dir: Path, tasks: dict[str, Task], n: int) -> dict[str, Any]:
    """Every task on `n` held-out notes through the serving path (one in-process engine): with
    its demo adapter, and with the same base alone (`"adapter": "none"`, prompted with the
    manifest's few-shot example)."""
    demo_dir = Path(demo_dir)
    settings = Settings(model=str(demo_dir / BASE_NAME), adapters_dir=demo_dir / "adapters", engine="local")
    from prometheus_client import CollectorRegistry

    # A registry of its own: a process may measure more than once (bench.calibration_rules).
    service = build_service(settings, tasks=tasks, metrics_registry=CollectorRegistry())
    started = time.perf_counter()
    await service.start()
    figures: dict[str, Any] = {"engine_start_s": round(time.perf_counter() - started, 1), "tasks": {}}
    try:
        for task in service.tasks.values():
            records = held_out_records(task, n)
            runs: dict[str, Any] = {}
            choices: tuple[tuple[str, AdapterChoice], ...] = (("adapter", None), ("base", "none"))
            for run_name, choice in choices:
                predictions = await predict_in_process(service, task, records, adapter=choice)
                # A failed request is scored as an empty prediction: say how many there were.
                failed = sum("error" in p for p in predictions)
                runs[run_name] = {**score(task, records, predictions), "failed": failed}
            figures["tasks"][task.name] = {"n": len(records), **runs}
    finally:
        await service.stop()
    return figures


def shipped_recipe(demo_dir: Path = DEMO_DIR) -> dict[str, Any] | None:
    path = Path(demo_dir) / RECIPE_FILE
    return dict(json.loads(path.read_text())) if path.is_file() else None
