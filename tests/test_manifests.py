from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from app.tasks.manifests import ManifestError, load_tasks
from tests.conftest import SCHEMAS_DIR, TASKS_DIR


@pytest.fixture
def copy_dirs(tmp_path: Path) -> tuple[Path, Path]:
    tasks, schemas = tmp_path / "tasks", tmp_path / "schemas"
    shutil.copytree(TASKS_DIR, tasks, ignore=shutil.ignore_patterns("*/"))
    shutil.copytree(SCHEMAS_DIR, schemas)
    return tasks, schemas


def edit(path: Path, change: dict[str, object]) -> None:
    data = yaml.safe_load(path.read_text())
    data.update(change)
    path.write_text(yaml.safe_dump(data, allow_unicode=True))


def test_shipped_manifests_load() -> None:
    tasks = load_tasks(TASKS_DIR, SCHEMAS_DIR)
    assert {t.type for t in tasks.values()} == {"ner", "qa", "classification"}
    assert {lang for t in tasks.values() for lang in t.manifest.languages} == {"it", "en"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"type": "relation"},
            "ner-it-clinical.yaml: type: unknown task type 'relation' (known: classification, ner, qa)",
        ),
        ({"labels": [{"name": "DRUG"}]}, "ner-it-clinical.yaml: labels: must equal the schema's"),
        ({"schema": "missing.json"}, "ner-it-clinical.yaml: schema: cannot load"),
        ({"adapter": {"name": "x", "version": "1"}}, "ner-it-clinical.yaml: adapter.path: Field required"),
        ({"surprise": 1}, "ner-it-clinical.yaml: surprise: Extra inputs are not permitted"),
        (
            {
                "examples": [
                    {
                        "input": {"text": "abc"},
                        "output": {"entities": [["zzz", "DRUG", "negated"]]},
                    }
                ]
            },
            "ner-it-clinical.yaml: examples.0: output: span 'zzz' is not in the example input",
        ),
    ],
)
def test_bad_manifest_is_refused_naming_file_and_field(
    copy_dirs: tuple[Path, Path], change: dict[str, object], message: str
) -> None:
    tasks, schemas = copy_dirs
    edit(tasks / "ner-it-clinical.yaml", change)
    with pytest.raises(ManifestError) as info:
        load_tasks(tasks, schemas)
    assert message in str(info.value)


def test_unbounded_schema_is_refused_at_startup(copy_dirs: tuple[Path, Path]) -> None:
    tasks, schemas = copy_dirs
    path = schemas / "qa-it-clinical.json"
    schema = json.loads(path.read_text())
    del schema["properties"]["answer"]["anyOf"][1]["maxLength"]
    path.write_text(json.dumps(schema))
    with pytest.raises(ManifestError, match=r"qa-it-clinical.json: .*string needs 'maxLength'"):
        load_tasks(tasks, schemas)


def test_duplicate_task_names_are_refused(copy_dirs: tuple[Path, Path]) -> None:
    tasks, schemas = copy_dirs
    shutil.copy(tasks / "qa-it-clinical.yaml", tasks / "qa-copy.yaml")
    with pytest.raises(ManifestError, match="already defined"):
        load_tasks(tasks, schemas)


def test_few_shot_flags_are_shown_as_the_grammar_writes_them(copy_dirs: tuple[Path, Path]) -> None:
    """An example may list an entity's attributes in any order: the prompt shows them as the
    model can write them (each once, in the manifest's order), so it never learns the unwritable."""
    from app.tasks.prompts import build_messages

    tasks_dir, schemas_dir = copy_dirs
    example = {"input": {"text": "Nega febbre."}, "output": {"entities": [["febbre", "SYMPTOM", "family", "negated"]]}}
    edit(tasks_dir / "ner-it-clinical.yaml", {"examples": [example]})
    task = load_tasks(tasks_dir, schemas_dir)["ner-it-clinical"]
    shown = build_messages(task, {"text": "x"})[2]["content"]
    assert shown == '{"entities":[["febbre","SYMPTOM","negated","family"]]}'
