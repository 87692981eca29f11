"""`medlora train`: fine-tune a per-task LoRA adapter with peft, on the serving prompt path.

What is trained is what is served: every example goes through `datasets.model_outputs`
(the same chunking as serving), `prompts.build_messages` and the model's chat template
with thinking disabled, and the target is `prompts.serialize_output` followed by the end
token. Loss is computed on the completion tokens only.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.engine.models import resolve_model
from app.settings import Settings
from app.tasks.manifests import ManifestError, load_tasks
from app.tasks.prompts import PromptRenderer, build_messages, serialize_output
from app.tasks.types.base import Task
from app.training.datasets import DataError, Record, load_records, model_outputs

log = logging.getLogger("medlora.train")

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainConfig:
    """Defaults suit a 1-2B model (Qwen3-1.7B); all can be overridden from the CLI."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ALL_PROJECTIONS
    learning_rate: float = 2e-4
    epochs: float = 3.0
    batch_size: int = 8  # sequences per optimizer step
    # Padded tokens per forward pass: the sequences of a step run together up to this size
    # (one at a time when they are longer). On CPU, one forward per sequence spends most of
    # its time in per-op overhead; on a GPU the budget bounds activation memory.
    max_batch_tokens: int = 8192
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_seq_len: int = 8192
    max_steps: int | None = None
    save_every: int = 100  # optimizer steps between resumable checkpoints
    seed: int = 0


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # -100 on prompt tokens: the loss sees only the completion

    @property
    def completion_start(self) -> int:
        return next(i for i, label in enumerate(self.labels) if label != -100)

    @property
    def completion_tokens(self) -> int:
        return sum(1 for label in self.labels if label != -100)


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    final_loss: float
    eval_loss: float | None
    examples: int
    skipped_too_long: int
    seconds: float
    losses: list[float] = field(default_factory=list)


def build_examples(
    task: Task, records: list[Record], renderer: PromptRenderer, eos_token: str, max_seq_len: int
) -> tuple[list[Example], int]:
    """Tokenized (prompt, completion) pairs; returns them and how many were too long."""
    examples: list[Example] = []
    too_long = 0
    for record in records:
        for ask, output in model_outputs(task, record):
            # As the runner builds it: a note (or a span copied from it) is text, never a control token.
            prompt_ids = renderer.prompt_ids(build_messages(task, ask.payload, ask.part))
            completion_ids = renderer.tokenizer.encode(
                serialize_output(ask.schema, output), add_special_tokens=False, split_special_tokens=True
            ) + renderer.tokenizer.encode(eos_token, add_special_tokens=False)
            if len(prompt_ids) + len(completion_ids) > max_seq_len:
                too_long += 1
                continue
            examples.append(Example(prompt_ids + completion_ids, [-100] * len(prompt_ids) + completion_ids))
    return examples, too_long


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def micro_batches(batch: list[Example], max_tokens: int) -> list[list[Example]]:
    """Split one optimizer step's sequences into forward passes of at most `max_tokens` padded
    tokens, grouping similar lengths so that little of each pass is padding."""
    groups: list[list[Example]] = []
    current: list[Example] = []
    for ex in sorted(batch, key=lambda e: len(e.input_ids)):
        # Sorted ascending, so the newest sequence is the widest of its group.
        if current and (len(current) + 1) * len(ex.input_ids) > max_tokens:
            groups.append(current)
            current = []
        current.append(ex)
    if current:
        groups.append(current)
    return groups


def _shared_prefix(group: list[Example]) -> int:
    """Tokens every sequence of the group starts with, stopping before the first position
    whose logits the loss needs (the one before the earliest completion token)."""
    limit = min(ex.completion_start for ex in group) - 1
    first = group[0].input_ids
    n = 0
    while n < limit and all(ex.input_ids[n] == first[n] for ex in group):
        n += 1
    return n


def completion_logits(model: Any, group: list[Example], pad_id: int, device: str) -> tuple[Any, Any]:
    """Logits and targets for the completion positions of a group of sequences, in one forward
    pass: logits[r, j] predicts targets[r, j] (-100 where row r has no completion token there).

    The prompt head (instructions, labels, few-shot examples) is the same for every example
    of a task and is most of each sequence: it runs once, and its keys and values are shared
    by every row. Right padding needs no attention mask: under causal attention a real token
    only sees the tokens before it, all real, and padded positions carry no label.
    """
    import torch

    width = max(len(ex.input_ids) for ex in group)
    ids = torch.full((len(group), width), pad_id, dtype=torch.long)
    labels = torch.full((len(group), width), -100, dtype=torch.long)
    for row, ex in enumerate(group):
        ids[row, : len(ex.input_ids)] = torch.tensor(ex.input_ids)
        labels[row, : len(ex.labels)] = torch.tensor(ex.labels)
    # Logits only from the position before the earliest completion token on: with a 150k
    # vocabulary the prompt's logits would be most of the activation memory, and unused.
    first = min(ex.completion_start for ex in group)
    keep = width - first + 1
    prefix = _shared_prefix(group) if len(group) > 1 else 0
    cache = None
    if prefix > 0:
        cache = model(input_ids=ids[:1, :prefix].to(device), use_cache=True, logits_to_keep=1).past_key_values
    # A model that returns no cache (gradient checkpointing) or one that cannot be repeated
    # across the batch runs whole sequences instead.
    if cache is not None and hasattr(cache, "batch_repeat_interleave"):
        cache.batch_repeat_interleave(len(group))
        out = model(input_ids=ids[:, prefix:].to(device), past_key_values=cache, use_cache=True, logits_to_keep=keep)
    else:
        out = model(input_ids=ids.to(device), use_cache=False, logits_to_keep=keep)
    return out.logits[:, :-1, :], labels[:, width - keep + 1 :].to(device)


def _loss_sum(model: Any, group: list[Example], pad_id: int, device: str) -> tuple[Any, int]:
    """Summed completion-token loss of a group of sequences, and its token count."""
    import torch

    logits, targets = completion_logits(model, group, pad_id, device)
    loss = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return loss, int((targets != -100).sum().item())


def evaluate_loss(model: Any, examples: list[Example], pad_id: int, device: str, max_tokens: int) -> float:
    """Mean completion-token loss (nats per token) over the examples."""
    import torch

    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for group in micro_batches(examples, max_tokens):
            loss, n = _loss_sum(model, group, pad_id, device)
            total += loss.item()
            tokens += n
    model.train()
    return total / max(tokens, 1)


def train_adapter(
    task: Task,
    base_model: str,
    train_records: list[Record],
    out_dir: Path,
    *,
    config: TrainConfig,
    eval_records: list[Record] | None = None,
    adapter_name: str | None = None,
    adapter_version: str = "1",
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    started = time.perf_counter()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    device = _device()
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    renderer = PromptRenderer(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples, too_long = build_examples(task, train_records, renderer, tokenizer.eos_token, config.max_seq_len)
    if not examples:
        raise ValueError("no training example fits max_seq_len")
    eval_examples = (
        build_examples(task, eval_records, renderer, tokenizer.eos_token, config.max_seq_len)[0] if eval_records else []
    )
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model: Any = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    model = model.to(device)
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    model.train()

    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total_steps = config.max_steps or math.ceil(steps_per_epoch * config.epochs)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)

    checkpoint = out_dir / "checkpoint"
    step, losses = 0, []
    if resume and (checkpoint / "trainer_state.pt").is_file():
        state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
        set_peft_model_state_dict(model, load_file(str(checkpoint / "adapter_model.safetensors")))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, losses = int(state["step"]), list(state["losses"])
        random.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        log.info("resumed", extra={"step": step})

    def save_checkpoint() -> None:
        checkpoint.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(checkpoint))
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "losses": losses,
            "python_rng": random.getstate(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        torch.save(state, checkpoint / "trainer_state.pt.tmp")
        os.replace(checkpoint / "trainer_state.pt.tmp", checkpoint / "trainer_state.pt")

    # The data order is a pure function of (seed, epoch), so a resumed run sees the same batches.
    def batches_from(step_index: int) -> list[list[Example]]:
        epoch = step_index // steps_per_epoch
        order = list(range(len(examples)))
        random.Random(config.seed * 1_000_003 + epoch).shuffle(order)
        batches = [
            [examples[i] for i in order[b : b + config.batch_size]] for b in range(0, len(order), config.batch_size)
        ]
        return batches[step_index % steps_per_epoch :]

    bar = tqdm(total=total_steps, initial=step, disable=not progress, desc=f"train {task.name}", unit="step")
    while step < total_steps:
        for batch in batches_from(step):
            if step >= total_steps:
                break
            # Token mean over the whole step, whatever the split into forward passes.
            n_tokens = sum(ex.completion_tokens for ex in batch)
            batch_loss = 0.0
            for group in micro_batches(batch, config.max_batch_tokens):
                loss_sum, _ = _loss_sum(model, group, pad_id, device)
                loss = loss_sum / max(n_tokens, 1)
                loss.backward()
                batch_loss += loss.item()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(round(batch_loss, 5))
            bar.update(1)
            bar.set_postfix(loss=f"{batch_loss:.4f}")
            if not progress and (step % 10 == 0 or step == total_steps):
                # No terminal: periodic plain lines instead of a redrawn bar.
                print(f"step {step}/{total_steps} loss {batch_loss:.4f}", file=sys.stderr, flush=True)
            if step % config.save_every == 0:
                save_checkpoint()
    bar.close()
    save_checkpoint()

    eval_loss = evaluate_loss(model, eval_examples, pad_id, device, config.max_batch_tokens) if eval_examples else None
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    _finalize_adapter_config(out_dir, base_model)
    name = adapter_name or task.name
    (out_dir / "registration.json").write_text(
        json.dumps({"name": name, "version": adapter_version, "path": str(out_dir.resolve())}, indent=2) + "\n"
    )
    result = TrainResult(
        out_dir=out_dir,
        steps=step,
        final_loss=losses[-1] if losses else float("nan"),
        eval_loss=eval_loss,
        examples=len(examples),
        skipped_too_long=too_long,
        seconds=round(time.perf_counter() - started, 1),
        losses=losses,
    )
    summary = {**asdict(result), "out_dir": str(out_dir), "task": task.name, "config": asdict(config)}
    (out_dir / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return result


def _finalize_adapter_config(out_dir: Path, base_model: str) -> None:
    # The served base is named exactly as the service will load it, so registration's
    # base-model check compares like with like.
    config_path = out_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_model
    config_path.write_text(json.dumps(config, indent=2) + "\n")


# -- CLI ---------------------------------------------------------------------------------


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    parser.add_argument("--task", required=True, help="Task name from the task manifests.")
    parser.add_argument("--data", required=True, type=Path, help="Training JSONL in the API's shapes.")
    parser.add_argument("--eval", dest="eval_data", type=Path, help="Optional dev JSONL: reports completion loss.")
    parser.add_argument("--out", required=True, type=Path, help="Adapter output folder.")
    parser.add_argument("--model", help="Base model (default: the service's, embedded tiny model included).")
    parser.add_argument("--tasks", type=Path, help="Task manifests folder.")
    parser.add_argument("--name", help="Adapter name for registration (default: the task name).")
    parser.add_argument("--version", default="1", help="Adapter version for registration.")
    parser.add_argument("--rank", type=int, default=d.rank)
    parser.add_argument("--alpha", type=int, default=d.alpha)
    parser.add_argument("--dropout", type=float, default=d.dropout)
    parser.add_argument("--target-modules", default=",".join(d.target_modules))
    parser.add_argument("--lr", type=float, default=d.learning_rate)
    parser.add_argument("--epochs", type=float, default=d.epochs)
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="Sequences per optimizer step.")
    parser.add_argument(
        "--max-batch-tokens", type=int, default=d.max_batch_tokens, help="Padded tokens per forward pass."
    )
    parser.add_argument("--max-seq-len", type=int, default=d.max_seq_len)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--save-every", type=int, default=d.save_every)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--resume", action="store_true", help="Continue from OUT/checkpoint.")


def train_main(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.model:
        overrides["model"] = args.model
    if args.tasks:
        overrides["tasks_dir"] = args.tasks
    settings = Settings(**overrides)
    try:
        tasks = load_tasks(settings.tasks_dir, settings.schemas_dir)
    except ManifestError as exc:
        print(f"medlora train: {exc}", file=sys.stderr)
        return 2
    task = tasks.get(args.task)
    if task is None:
        print(f"medlora train: unknown task {args.task!r} (known: {', '.join(sorted(tasks))})", file=sys.stderr)
        return 2
    try:
        train_records = load_records(task, args.data)
        eval_records = load_records(task, args.eval_data) if args.eval_data else None
    except DataError as exc:
        print(f"medlora train: {exc}", file=sys.stderr)
        return 2
    base = resolve_model(settings).path
    config = TrainConfig(
        rank=args.rank,
        alpha=args.alpha,
        dropout=args.dropout,
        target_modules=tuple(m for m in args.target_modules.split(",") if m),
        learning_rate=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens,
        max_seq_len=args.max_seq_len,
        max_steps=args.max_steps,
        save_every=args.save_every,
        seed=args.seed,
    )
    result = train_adapter(
        task,
        base,
        train_records,
        args.out,
        config=config,
        eval_records=eval_records,
        adapter_name=args.name,
        adapter_version=args.version,
        resume=args.resume,
        progress=sys.stderr.isatty(),
    )
    print(
        json.dumps(
            {
                "adapter": str(result.out_dir.resolve()),
                "registration": str((result.out_dir / "registration.json").resolve()),
                "steps": result.steps,
                "final_loss": result.final_loss,
                "eval_loss": result.eval_loss,
                "examples": result.examples,
                "skipped_too_long": result.skipped_too_long,
                "seconds": result.seconds,
            }
        )
    )
    return 0
