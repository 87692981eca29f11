"""`medlora train` on a tiny random Qwen3: what is trained is what is served, loss only on the
completion, batched forward passes equal to one-at-a-time, reproducible and resumable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from app.tasks.manifests import load_tasks
from app.tasks.prompts import PromptRenderer, build_messages, serialize_output
from app.tasks.types.base import Task
from app.training.datasets import Record, load_records, model_outputs
from app.training.synthetic import examples_for_task, write_jsonl
from app.training.tiny_model import build_tiny_base, train_word_tokenizer
from app.training.train import (
    Example,
    TrainConfig,
    _loss_sum,
    _shared_prefix,
    build_examples,
    completion_logits,
    micro_batches,
    train_adapter,
)
from tests.conftest import SCHEMAS_DIR, TASKS_DIR, shipped_task


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The demo's word-level tokenizer keeps these mechanics tests fast; training on the real
    # Qwen3 vocabulary is exercised end to end (tests/e2e/test_live_training.py).
    notes = [row["text"] for row in examples_for_task(shipped_task("ner-it-clinical"), 20, seed=0)]
    return build_tiny_base(tmp_path_factory.mktemp("train") / "base", tokenizer=train_word_tokenizer(notes, 1536))


@pytest.fixture(scope="module")
def ner_task() -> Task:
    return load_tasks(TASKS_DIR, SCHEMAS_DIR)["ner-it-clinical"]


@pytest.fixture(scope="module")
def records(ner_task: Task, tmp_path_factory: pytest.TempPathFactory) -> list[Record]:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    write_jsonl(path, examples_for_task(ner_task, 6, seed=3))
    return load_records(ner_task, path)


def _renderer(base: Path) -> PromptRenderer:
    from transformers import AutoTokenizer

    return PromptRenderer(AutoTokenizer.from_pretrained(base))


def test_examples_are_the_served_prompt_followed_by_the_serialised_output_and_loss_sees_only_the_output(
    base: Path, ner_task: Task, records: list[Record]
) -> None:
    renderer = _renderer(base)
    eos = renderer.tokenizer.eos_token  # type: ignore[attr-defined]
    examples, too_long = build_examples(ner_task, records, renderer, eos, max_seq_len=8192)
    pairs = [pair for record in records for pair in model_outputs(ner_task, record)]
    assert too_long == 0 and len(examples) == len(pairs)
    for example, (ask, output) in zip(examples, pairs, strict=True):
        prompt = renderer.render(build_messages(ner_task, ask.payload))
        prompt_ids = renderer.tokenizer.encode(prompt, add_special_tokens=False)
        n = len(prompt_ids)
        assert example.input_ids[:n] == prompt_ids
        assert example.labels[:n] == [-100] * n
        completion = example.labels[n:]
        assert -100 not in completion and completion == example.input_ids[n:]
        decoded = renderer.tokenizer.decode(completion)  # type: ignore[attr-defined]
        assert decoded == serialize_output(ner_task.schema, output) + eos
        assert output["entities"] and all(isinstance(e, list) for e in output["entities"])  # the lean format


def test_too_long_examples_are_counted_not_truncated(base: Path, ner_task: Task, records: list[Record]) -> None:
    renderer = _renderer(base)
    eos = renderer.tokenizer.eos_token  # type: ignore[attr-defined]
    lengths = sorted(len(e.input_ids) for e in build_examples(ner_task, records, renderer, eos, 8192)[0])
    limit = lengths[len(lengths) // 2]
    kept, too_long = build_examples(ner_task, records, renderer, eos, max_seq_len=limit)
    assert too_long == sum(1 for n in lengths if n > limit) > 0
    assert all(len(e.input_ids) <= limit for e in kept)


def _example(length: int) -> Example:
    return Example(list(range(length)), [-100] * (length - 2) + [1, 2])


def test_micro_batches_keep_every_sequence_and_respect_the_token_budget() -> None:
    batch = [_example(n) for n in (50, 300, 120, 90, 400, 60, 500, 45)]
    groups = micro_batches(batch, max_tokens=1000)
    assert sorted(len(e.input_ids) for g in groups for e in g) == sorted(len(e.input_ids) for e in batch)
    for group in groups:
        assert len(group) == 1 or len(group) * max(len(e.input_ids) for e in group) <= 1000
    assert len(groups) < len(batch)  # short ones share a pass
    # A sequence over the budget still trains, alone.
    assert micro_batches([_example(2000), _example(10)], max_tokens=1000) == [[_example(10)], [_example(2000)]]


def _lora_model(base: Path) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    # init_lora_weights=False: non-zero B factors, so the adapter changes every projection.
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    return get_peft_model(model, LoraConfig(**{**lora.to_dict(), "init_lora_weights": False}))


def _examples(base: Path, task: Task, records: list[Record]) -> tuple[list[Any], int]:
    renderer = _renderer(base)
    tokenizer: Any = renderer.tokenizer
    return build_examples(task, records, renderer, tokenizer.eos_token, 8192)[0], tokenizer.pad_token_id


def test_a_batched_pass_with_a_shared_prompt_head_gives_each_row_its_own_full_sequence_logits(
    base: Path, ner_task: Task, records: list[Record]
) -> None:
    examples, pad_id = _examples(base, ner_task, records)
    assert _shared_prefix(examples) > 100  # the cached head is really used
    assert len({len(e.input_ids) for e in examples}) > 1  # and rows are padded
    model = _lora_model(base).eval()
    with torch.no_grad():
        logits, targets = completion_logits(model, examples, pad_id, "cpu")
        width = max(len(e.input_ids) for e in examples)
        start = width - logits.shape[1] - 1  # position whose logits come first
        for row, ex in enumerate(examples):
            full = model(input_ids=torch.tensor([ex.input_ids])).logits[0]
            n = len(ex.input_ids) - 1 - start  # this row's real positions among the kept ones
            torch.testing.assert_close(logits[row, :n], full[start : start + n], atol=2e-4, rtol=1e-4)
            assert targets[row, :n].tolist() == ex.labels[start + 1 : start + 1 + n]
            assert (targets[row, n:] == -100).all()  # padding is never a target


def test_batched_loss_and_gradients_equal_one_sequence_at_a_time(
    base: Path, ner_task: Task, records: list[Record]
) -> None:
    examples, pad_id = _examples(base, ner_task, records)
    model = _lora_model(base).train()
    lora = [p for p in model.parameters() if p.requires_grad]

    together, n_together = _loss_sum(model, examples, pad_id, "cpu")
    together.backward()
    batched = [p.grad.clone() for p in lora]
    model.zero_grad()
    alone_total, n_alone = 0.0, 0
    for ex in examples:
        loss, n = _loss_sum(model, [ex], pad_id, "cpu")
        # The reference for one sequence: the model's own loss (mean over completion tokens).
        reference = model(input_ids=torch.tensor([ex.input_ids]), labels=torch.tensor([ex.labels])).loss
        assert n == sum(1 for label in ex.labels if label != -100)
        assert loss.item() / n == pytest.approx(reference.item(), rel=1e-4)
        loss.backward()
        alone_total, n_alone = alone_total + loss.item(), n_alone + n
    assert n_together == n_alone
    assert together.item() == pytest.approx(alone_total, rel=1e-4)
    assert any(g.abs().sum() > 0 for g in batched)
    for got, want in zip(batched, [p.grad for p in lora], strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)


def _train(base: Path, task: Task, records: list[Record], out: Path, resume: bool = False, **overrides: Any) -> Any:
    config = TrainConfig(rank=4, alpha=8, learning_rate=1e-2, batch_size=4, save_every=2, **overrides)
    return train_adapter(task, str(base), records, out, config=config, resume=resume, progress=False)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def test_training_lowers_the_loss_and_writes_a_registrable_adapter(
    base: Path, ner_task: Task, records: list[Record], tmp_path: Path
) -> None:
    result = _train(base, ner_task, records, tmp_path / "a", max_steps=6)
    assert result.steps == 6 and len(result.losses) == 6
    assert result.losses[-1] < result.losses[0]
    registration = json.loads((tmp_path / "a" / "registration.json").read_text())
    assert registration == {"name": ner_task.name, "version": "1", "path": str((tmp_path / "a").resolve())}
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base) and config["r"] == 4


def test_same_seed_gives_the_same_adapter_and_resume_continues_exactly(
    base: Path, ner_task: Task, records: list[Record], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = _train(base, ner_task, records, tmp_path / "straight", max_steps=4)
    again = _train(base, ner_task, records, tmp_path / "again", max_steps=4)
    assert again.losses == straight.losses
    first, second = _weights(tmp_path / "straight"), _weights(tmp_path / "again")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)

    # Interrupted during step 3 (the checkpoint of step 2 is on disk), then resumed: the same run.
    import app.training.train

    calls = {"n": 0}
    real = app.training.train.micro_batches

    def interrupt_on_step_3(batch: list[Example], max_tokens: int) -> list[list[Example]]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(batch, max_tokens)

    monkeypatch.setattr(app.training.train, "micro_batches", interrupt_on_step_3)
    with pytest.raises(KeyboardInterrupt):
        _train(base, ner_task, records, tmp_path / "resumed", max_steps=4)
    monkeypatch.undo()
    assert not (tmp_path / "resumed" / "adapter_model.safetensors").exists()
    assert (tmp_path / "resumed" / "checkpoint" / "trainer_state.pt").is_file()
    passes = {"n": 0}

    def counting(batch: list[Example], max_tokens: int) -> list[list[Example]]:
        passes["n"] += 1
        return real(batch, max_tokens)

    monkeypatch.setattr(app.training.train, "micro_batches", counting)
    resumed = _train(base, ner_task, records, tmp_path / "resumed", resume=True, max_steps=4)
    assert resumed.steps == 4
    assert passes["n"] == 2  # steps 3 and 4 only: it continued, it did not start over
    assert resumed.losses == straight.losses
    final = _weights(tmp_path / "resumed")
    assert all(torch.allclose(final[k], first[k], atol=1e-6) for k in first)
