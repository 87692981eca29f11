"""The embedded demo: a tiny Qwen3 that answers sensibly on synthetic clinical notes.

Recipe, all local and deterministic, cached after the first run:
1. a random-weight tiny Qwen3 (`tiny_model.build_tiny_base`);
2. pretrained as a plain language model on synthetic note text only (no task outputs, so
   the base alone still cannot do the tasks: it plays the role of a general base model);
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
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.datasets import load_records
from app.manifests import Task
from app.synthetic import examples_for_task, write_jsonl
from app.tiny_model import (
    TMP_PREFIX,
    build_tiny_adapter,
    build_tiny_base,
    is_complete_base,
    publish_dir,
    sweep_stale_tmp,
)

log = logging.getLogger("medlora.demo")

DEMO_CACHE_NAME = "embedded-demo-v2"
TRAIN_SEED, TEST_SEED, PRETRAIN_SEED = 1, 99, 7


@dataclass(frozen=True)
class DemoRecipe:
    pretrain_notes_per_task: int = 600
    pretrain_epochs: int = 2
    pretrain_lr: float = 3e-3
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
    learning_rate: float = 3e-3
    rank: int = 16
    max_steps: int | None = None  # tests cap training to prove the pipeline, not quality


def _complete_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file() and (path / "registration.json").is_file()


def pretrain_texts(recipe: DemoRecipe) -> list[str]:
    texts: list[str] = []
    for task in recipe.train_records:
        for row in examples_for_task(task, recipe.pretrain_notes_per_task, PRETRAIN_SEED):
            texts.append(row.get("text") or row["context"])
    random.Random(PRETRAIN_SEED).shuffle(texts)
    return texts


def pretrain_base(random_base: Path, out_dir: Path, texts: list[str], *, epochs: int, lr: float) -> None:
    """Full-parameter causal-LM training of the tiny base on plain note text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(PRETRAIN_SEED)
    tokenizer = AutoTokenizer.from_pretrained(random_base)
    model: Any = AutoModelForCausalLM.from_pretrained(random_base, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    encoded = [tokenizer.encode(t, add_special_tokens=False)[:512] for t in texts]
    batch_size = 8
    for epoch in range(epochs):
        total = 0.0
        for i in range(0, len(encoded), batch_size):
            batch = encoded[i : i + batch_size]
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
            extra={"epoch": epoch, "loss": round(total / max(1, len(encoded) // batch_size), 4)},
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
    from app.train import TrainConfig, train_adapter

    recipe = recipe or DemoRecipe()
    root = Path(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    base = (root / "base").resolve()
    if not is_complete_base(base):
        started = time.perf_counter()
        sweep_stale_tmp(root)
        random_base = root / "random-base"
        if not is_complete_base(random_base):
            build_tiny_base(random_base)
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + "base-", dir=root))
        try:
            pretrain_base(
                random_base, tmp, pretrain_texts(recipe), epochs=recipe.pretrain_epochs, lr=recipe.pretrain_lr
            )
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
                        learning_rate=recipe.learning_rate,
                        epochs=recipe.epochs,
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
