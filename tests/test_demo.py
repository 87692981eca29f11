"""The demo recipe end to end at toy size: every artefact the service needs, correctly wired."""

from __future__ import annotations

import json
from pathlib import Path

from app.tasks.adapters import inspect_adapter
from app.training.datasets import load_records
from app.training.demo import DemoRecipe, ensure_demo
from app.tasks.manifests import load_tasks
from tests.conftest import SCHEMAS_DIR, TASKS_DIR


def test_demo_builds_pretrained_base_and_one_trained_adapter_per_task(tmp_path: Path) -> None:
    tasks = {k: v for k, v in load_tasks(TASKS_DIR, SCHEMAS_DIR).items() if k in {"ner-it-clinical", "qa-it-clinical"}}
    recipe = DemoRecipe(
        pretrain_notes_per_task=4,
        pretrain_epochs=1,
        train_records={"ner-it-clinical": 4, "qa-it-clinical": 4},
        test_records=3,
        max_steps=1,
    )
    root = ensure_demo(tmp_path / "demo", tasks, recipe)
    base = (root / "base").resolve()
    assert (base / "model.safetensors").is_file() and (base / "tokenizer.json").is_file()
    random_weights = (root / "random-base" / "model.safetensors").read_bytes()
    assert (base / "model.safetensors").read_bytes() != random_weights  # pretraining changed the base
    for task in tasks.values():
        adapter = root / "adapters" / task.manifest.adapter.path
        files = inspect_adapter(adapter, max_rank=16, base_model=str(base))
        assert files.rank == 16
        registration = json.loads((adapter / "registration.json").read_text())
        assert registration == {
            "name": task.manifest.adapter.name,
            "version": task.manifest.adapter.version,
            "path": str(adapter.resolve()),
        }
        assert not (adapter / "checkpoint").exists()
        assert len(load_records(task, root / "data" / f"{task.name}-test.jsonl")) == 3
    # Cached: a second call rebuilds nothing.
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.safetensors")}
    ensure_demo(tmp_path / "demo", tasks, recipe)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.safetensors")} == before


def test_span_warmup_copies_word_runs_or_the_notes_terms_in_the_served_shape_with_random_labels() -> None:
    import random

    from app.training.demo import span_warmup
    from app.synthetic import NER_LABELS, examples_for_task

    tasks = load_tasks(TASKS_DIR, SCHEMAS_DIR)
    row = examples_for_task("ner-en-clinical", 1, seed=5)[0]
    note, mentions = row["text"], [e["text"] for e in row["entities"]]
    gold_labels = [e["label"] for e in row["entities"]]
    labels_seen: list[list[str]] = []
    for seed in range(20):
        task_name, answer = span_warmup(note, "en", random.Random(seed), mentions, mention_share=1.0)
        assert task_name == "ner-en-clinical"
        output = json.loads(answer)
        assert not list(tasks[task_name].validator.iter_errors(output))  # the served schema
        assert [e["text"] for e in output["entities"]] == mentions  # the terms, in document order
        labels_seen.append([e["label"] for e in output["entities"]])
        assert all(e["label"] in NER_LABELS for e in output["entities"])
    # The labels are drawn at random, not taken from the gold annotation.
    assert sum(labels == gold_labels for labels in labels_seen) <= 1
    for seed in range(20):
        _, answer = span_warmup(note, "en", random.Random(seed), mentions, mention_share=0.0)
        texts = [e["text"] for e in json.loads(answer)["entities"]]
        assert texts and all(t in note for t in texts)
        assert texts != mentions
