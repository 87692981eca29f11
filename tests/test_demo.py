"""The demo recipe end to end at toy size: every file the service needs, correctly wired."""

from __future__ import annotations

import json
import random
from pathlib import Path

from app.tasks.adapters import inspect_adapter
from app.tasks.manifests import load_tasks
from app.training.demo import BASE_NAME, RECIPE_VERSION, DemoRecipe, build_demo, span_warmup
from app.training.synthetic import examples_for_task
from tests.conftest import SCHEMAS_DIR, TASKS_DIR, shipped_task


def test_demo_builds_a_pretrained_base_and_one_trained_adapter_per_task(tmp_path: Path) -> None:
    tasks = {k: v for k, v in load_tasks(TASKS_DIR, SCHEMAS_DIR).items() if k in {"ner-it-clinical", "qa-it-clinical"}}
    recipe = DemoRecipe(
        pretrain_notes_per_task=4,
        pretrain_epochs=2,
        prompt_copies=2,
        train_records={"ner-it-clinical": 4, "qa-it-clinical": 4},
        test_records=3,
        max_steps=1,
    )
    out = tmp_path / "demo"
    (out / "stale").mkdir(parents=True)  # a rebuild replaces what was there
    record = build_demo(out, tasks, recipe, measure_records=0)
    base = out / BASE_NAME
    assert (base / "model.safetensors").is_file() and (base / "tokenizer.json").is_file()
    assert not (out / "stale").exists()
    assert record["recipe_version"] == RECIPE_VERSION
    assert record["seeds"] == {"pretrain": 7, "train": 1, "test": 99}
    assert record["data"]["train_records"] == {"ner-it-clinical": 4, "qa-it-clinical": 4}
    # Pretraining ran: two epochs, the second with a lower loss.
    assert len(record["pretrain_loss"]) == 2 and record["pretrain_loss"][1] < record["pretrain_loss"][0]
    assert json.loads((out / "recipe.json").read_text()) == record
    for task in tasks.values():
        adapter = out / "adapters" / task.manifest.adapter.path
        # The registry accepts it for the shipped base, wherever that is installed.
        files = inspect_adapter(adapter, max_rank=16, base_model=str(base.resolve()))
        assert files.rank == 16 and files.base_model == BASE_NAME
        # Shipped files only: nothing holds this machine's paths or a training checkpoint.
        assert sorted(p.name for p in adapter.iterdir()) == [
            "adapter_config.json",
            "adapter_model.safetensors",
            "training.json",
        ]
    for path in out.rglob("*.json"):
        assert str(tmp_path) not in path.read_text(), path


def test_span_warmup_copies_word_runs_or_the_notes_terms_in_the_served_format_with_random_labels() -> None:
    ner, qa = shipped_task("ner-en-clinical"), shipped_task("qa-it-clinical")
    tasks = {ner.name: ner, qa.name: qa}
    row = examples_for_task(ner, 1, seed=5)[0]
    note, mentions = row["text"], [e["text"] for e in row["entities"]]
    gold_labels = [e["label"] for e in row["entities"]]
    labels_seen: list[list[str]] = []
    for seed in range(20):
        warmup = span_warmup(note, tasks, "en", random.Random(seed), mentions, mention_share=1.0)
        assert warmup is not None
        task_name, answer = warmup
        assert task_name == "ner-en-clinical"
        output = json.loads(answer)
        assert not list(ner.validator.iter_errors(output))  # the served schema
        assert [e[0] for e in output["entities"]] == mentions  # the terms, in document order
        labels_seen.append([e[1] for e in output["entities"]])
    # The labels are drawn at random, not taken from the gold annotation.
    assert sum(labels == gold_labels for labels in labels_seen) <= 1
    for seed in range(20):
        warmup = span_warmup(note, tasks, "en", random.Random(seed), mentions, mention_share=0.0)
        assert warmup is not None
        _, answer = warmup
        texts = [e[0] for e in json.loads(answer)["entities"]]
        assert texts and all(t in note for t in texts)
        assert texts != mentions


def test_the_shipped_demo_is_what_the_embedded_default_serves() -> None:
    """The embedded default's base and adapters are the shipped files, and the registry
    accepts each adapter for that base (the checks that run at startup)."""
    from app.engine.models import resolve_model
    from app.settings import Settings
    from app.training.demo import shipped_recipe

    model = resolve_model(Settings())
    assert (Path(model.path) / "model.safetensors").is_file()
    recipe = shipped_recipe()
    assert recipe is not None and recipe["recipe_version"] == RECIPE_VERSION
    for task in load_tasks(TASKS_DIR, SCHEMAS_DIR).values():
        inspect_adapter(model.adapters_root / task.manifest.adapter.path, max_rank=16, base_model=model.path)
        assert task.name in recipe["figures"]["tasks"]
    shipped = sum(p.stat().st_size for p in Path(model.path).parent.rglob("*") if p.is_file())
    assert shipped < 20 * 1024 * 1024
