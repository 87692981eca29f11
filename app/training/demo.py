"""The embedded demo: a tiny Qwen3 that answers sensibly on synthetic clinical notes.

Recipe, all local and deterministic, cached after the first run:
1. a random-weight tiny Qwen3 (`tiny_model.build_tiny_base`, 4 layers x 128, 4 heads of 64),
   with word-level tokens learnt from the pretraining text (a word copied from a note into
   a JSON string keeps its token ids);
2. pretrained as a causal LM on synthetic notes, each in a chat turn answered by a JSON
   "span warm-up": runs of that note's words (random runs, or for half the NER notes the
   note's clinical terms), copied in document order into the NER and QA output shapes with
   random labels and attributes (never the gold labels, and never a classification label,
   so the base alone still cannot do the tasks: it plays the role of a general base model
   that knows JSON, medical terms and how to copy), plus the tasks' prompt heads;
3. one LoRA adapter per shipped task, trained by `train.train_adapter` (the code behind
   `medlora train`) on synthetic annotated notes.
Held-out synthetic test sets are written beside them for `medlora eval`.
A tiny model learning templated synthetic notes is a demo of the pipeline, not a claim
about real clinical text.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.training.datasets import load_records
from app.tasks.manifests import Task
from app.tasks.prompts import build_messages
from app.synthetic import NER_ATTRIBUTES, NER_LABELS, examples_for_task, write_jsonl
from app.training.tiny_model import (
    CHAT_TEMPLATE,
    IM_END,
    TMP_PREFIX,
    TinyShape,
    build_tiny_adapter,
    build_tiny_base,
    is_complete_base,
    publish_dir,
    sweep_stale_tmp,
)

log = logging.getLogger("medlora.demo")

DEMO_CACHE_NAME = "embedded-demo-v5"
TRAIN_SEED, TEST_SEED, PRETRAIN_SEED = 1, 99, 7


@dataclass(frozen=True)
class DemoRecipe:
    # 4 layers x 4 heads (with 3 pretraining epochs and 30 prompt copies) over the 2 x 2 tests'
    # model: NER strict F1 0.36/0.25 -> 0.38/0.33 (it/en), QA 0.30 -> 0.43, classification
    # 0.33 -> 0.93 (recipe v4 experiments, docs/benchmarks.md), for twice the training time.
    shape: TinyShape = field(
        default_factory=lambda: TinyShape(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    )
    # Word-level tokens learned from the notes: their ~1,500 distinct words, numbers and
    # punctuation runs all become single tokens well within this.
    vocab_size: int = 4096
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
        default_factory=lambda: {"ner-it-clinical": 10.0, "ner-en-clinical": 10.0, "qa-it-clinical": 10.0}
    )
    learning_rate: float = 3e-3
    task_learning_rates: dict[str, float] = field(
        default_factory=lambda: {"ner-it-clinical": 1e-2, "ner-en-clinical": 1e-2}
    )
    rank: int = 16
    # No LoRA dropout: on CPU its masks cost ~12% of a training step, and NER F1 did not move.
    dropout: float = 0.0
    max_steps: int | None = None  # tests cap training to prove the pipeline, not quality


def _complete_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file() and (path / "registration.json").is_file()


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
    note: str, lang: str, rng: random.Random, mentions: list[str] | None = None, mention_share: float = 0.0
) -> tuple[str, str]:
    """(task name, JSON answer) in the exact serialisation of the NER or QA adapters (compact,
    keys in schema order, as `serialize_output`), whose strings are copied from the note in
    order and whose labels and attributes are random. With probability `mention_share` the
    strings are the note's clinical terms (`mentions`), otherwise random word runs: the base
    learns to copy terms into JSON and where terms sit, but no prior on any task's labels."""
    if lang == "it" and rng.random() < 0.5:
        spans = _random_spans(note, rng, 1)
        answer = spans[0] if spans and rng.random() < 0.8 else None
        return "qa-it-clinical", json.dumps({"answer": answer}, ensure_ascii=False, separators=(",", ":"))
    attributes = NER_ATTRIBUTES["it" if lang == "it" else "en"]
    entities = [
        {
            "text": text,
            "label": rng.choice(NER_LABELS),
            "attributes": {name: rng.random() < 0.15 for name in attributes},
        }
        for text in (
            mentions if mentions and rng.random() < mention_share else _random_spans(note, rng, rng.randint(1, 12))
        )
    ]
    return f"ner-{lang}-clinical", json.dumps({"entities": entities}, ensure_ascii=False, separators=(",", ":"))


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
    for task in tasks.values():
        # build_messages ends with the user turn for the payload; keep the head before it.
        head = build_messages(task, {"text": "", "context": "", "question": ""})[:-1]
        docs.append(render_chat(head, generation_prompt=False))
    return docs


def pretrain_texts(recipe: DemoRecipe, tasks: dict[str, Task]) -> list[str]:
    """Every note as a chat turn answered by its span warm-up (a `head_share` of the NER ones
    behind the task's full served prompt head, so copying is learnt at serving positions and
    past the same instructions), plus `prompt_copies` of every task's prompt head."""
    rng = random.Random(PRETRAIN_SEED)
    texts: list[str] = []
    for task_name in recipe.train_records:
        lang = "en" if task_name.startswith("ner-en") else "it"
        for row in examples_for_task(task_name, recipe.pretrain_notes_per_task, PRETRAIN_SEED):
            note = row.get("text") or row["context"]
            mentions = [e["text"] for e in row.get("entities", [])]
            shape, answer = span_warmup(note, lang, rng, mentions, recipe.mention_share)
            task = tasks.get(shape)
            if task is not None and task.type == "ner" and rng.random() < recipe.head_share:
                messages = build_messages(task, {"text": note})
            else:
                messages = [{"role": "user", "content": f"Text:\n{note}"}]
            texts.append(render_chat(messages, generation_prompt=True) + answer + IM_END)
    texts += prompt_documents(tasks) * recipe.prompt_copies
    rng.shuffle(texts)
    return texts


def pretrain_base(random_base: Path, out_dir: Path, texts: list[str], *, epochs: int, lr: float) -> None:
    """Full-parameter causal-LM training of the tiny base on the texts (whole sequences)."""
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
        log.info(
            "demo base pretraining",
            extra={"epoch": epoch, "loss": round(total / max(1, len(batches)), 4)},
        )
    # Saved in bf16 like the random base: vLLM's CPU backend serves it as such.
    model.to(torch.bfloat16).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    for extra in ("generation_config.json",):
        if (random_base / extra).is_file() and not (out_dir / extra).is_file():
            shutil.copy(random_base / extra, out_dir / extra)


def ensure_demo(cache_dir: Path, tasks: dict[str, Task], recipe: DemoRecipe | None = None) -> Path:
    """Build (once) the pretrained tiny base and one trained adapter per task; return the root.

    Layout: base/, adapters/<manifest adapter path>/, data/<task>-{train,test}.jsonl.
    A task the synthetic generator does not know gets a random adapter (and a warning).
    """
    from app.training.train import TrainConfig, train_adapter

    recipe = recipe or DemoRecipe()
    root = Path(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    base = (root / "base").resolve()
    if not is_complete_base(base):
        started = time.perf_counter()
        sweep_stale_tmp(root)
        random_base = root / "random-base"
        texts = pretrain_texts(recipe, tasks)
        if not is_complete_base(random_base):
            # Merges from exactly the pretraining text: every token the tasks use gets trained.
            build_tiny_base(random_base, shape=recipe.shape, tokenizer_corpus=texts, vocab_size=recipe.vocab_size)
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + "base-", dir=root))
        try:
            pretrain_base(random_base, tmp, texts, epochs=recipe.pretrain_epochs, lr=recipe.pretrain_lr)
            publish_dir(tmp, base, is_complete_base)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("demo base ready", extra={"seconds": round(time.perf_counter() - started, 1)})

    data = root / "data"
    data.mkdir(exist_ok=True)
    for task in tasks.values():
        target = root / "adapters" / task.manifest.adapter.path
        if _complete_adapter(target):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{target.name}-", dir=target.parent))
        try:
            n_train = recipe.train_records.get(task.name)
            if n_train is None:
                log.warning("no synthetic data for task; using a random adapter", extra={"task": task.name})
                build_tiny_adapter(base, tmp, seed=zlib.crc32(task.name.encode()) % 10_000)
                (tmp / "registration.json").write_text("{}\n")
            else:
                train_path = data / f"{task.name}-train.jsonl"
                write_jsonl(train_path, examples_for_task(task.name, n_train, TRAIN_SEED))
                write_jsonl(
                    data / f"{task.name}-test.jsonl", examples_for_task(task.name, recipe.test_records, TEST_SEED)
                )
                started = time.perf_counter()
                train_adapter(
                    task,
                    str(base),
                    load_records(task, train_path),
                    tmp,
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
                shutil.rmtree(tmp / "checkpoint", ignore_errors=True)
                log.info(
                    "demo adapter trained",
                    extra={"task": task.name, "seconds": round(time.perf_counter() - started, 1)},
                )
            publish_dir(tmp, target, _complete_adapter)
            registration = target / "registration.json"
            if registration.read_text().strip() != "{}":
                # Training wrote the temp folder's path; point it at the published one.
                info = json.loads(registration.read_text())
                info["path"] = str(target.resolve())
                registration.write_text(json.dumps(info, indent=2) + "\n")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root
