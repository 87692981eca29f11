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
    assert {t.type for t in tasks.values()} == {"ner", "qa", "classification", "relations", "form", "deid"}
    assert {lang for t in tasks.values() for lang in t.manifest.languages} == {"it", "en"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"type": "relation"},
            "ner-it-clinical.yaml: type: unknown task type 'relation' "
            "(known: classification, deid, form, ner, qa, relations)",
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


def _edit_item(path: Path, index: int, change: dict[str, object], drop: tuple[str, ...] = ()) -> None:
    data = yaml.safe_load(path.read_text())
    item = data["items"][index]
    item.update(change)
    for key in drop:
        item.pop(key)
    path.write_text(yaml.safe_dump(data, allow_unicode=True))


@pytest.mark.parametrize(
    ("index", "change", "drop", "message"),
    [
        (11, {}, ("max",), "items.11: max: required for integer items (unbounded numbers are refused)"),
        (15, {}, ("decimals",), "items.15: decimals: required for decimal items"),
        (15, {"decimals": 7}, (), "items.15.decimals: Input should be less than or equal to 4"),
        (2, {}, ("options",), "items.2: options: required for choice items"),
        (5, {"max": 3}, (), "items.5: max: not a field of boolean items"),
        (0, {"years": [2030, 2015]}, (), "items.0: years: must be [first, last]"),
        (11, {"name": "SpO2"}, (), "items.11.name: String should match pattern"),
    ],
)
def test_a_form_item_without_bounds_is_refused_naming_file_and_field(
    copy_dirs: tuple[Path, Path], index: int, change: dict[str, object], drop: tuple[str, ...], message: str
) -> None:
    tasks, schemas = copy_dirs
    _edit_item(tasks / "crf-it-dyspnea.yaml", index, change, drop)
    with pytest.raises(ManifestError) as info:
        load_tasks(tasks, schemas)
    assert f"crf-it-dyspnea.yaml: {message}" in str(info.value)


def test_a_form_example_must_answer_what_the_items_admit(copy_dirs: tuple[Path, Path]) -> None:
    tasks, schemas = copy_dirs
    path = tasks / "crf-it-dyspnea.yaml"
    data = yaml.safe_load(path.read_text())
    data["examples"][0]["output"]["spo2"] = ["SpO2 86%", 186]  # above the item's max
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    with pytest.raises(ManifestError, match=r"crf-it-dyspnea.yaml: examples.0: output"):
        load_tasks(tasks, schemas)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"relation_types": [{"name": "dosage", "head": ["PATIENT"], "tail": ["DOSAGE"]}]},
            "re-it-medication.yaml: relation_types.0.head: label 'PATIENT' is not declared in labels",
        ),
        (
            {"relation_types": [{"name": "dosage", "head": ["DRUG"], "tail": ["DOSE"]}]},
            "re-it-medication.yaml: relation_types.0.tail: label 'DOSE' is not declared in labels",
        ),
        ({"relation_types": []}, "re-it-medication.yaml: relation_types: at least one relation type is required"),
        ({"items": [{"name": "x", "kind": "boolean"}]}, "re-it-medication.yaml: items: relations tasks have no items"),
    ],
)
def test_a_relation_label_pair_naming_an_undeclared_label_is_refused(
    copy_dirs: tuple[Path, Path], change: dict[str, object], message: str
) -> None:
    tasks, schemas = copy_dirs
    edit(tasks / "re-it-medication.yaml", change)
    with pytest.raises(ManifestError) as info:
        load_tasks(tasks, schemas)
    assert message in str(info.value)


def test_relation_types_in_a_task_of_another_type_are_refused(copy_dirs: tuple[Path, Path]) -> None:
    tasks, schemas = copy_dirs
    edit(tasks / "ner-it-clinical.yaml", {"relation_types": [{"name": "r", "head": ["DRUG"], "tail": ["DRUG"]}]})
    with pytest.raises(ManifestError, match=r"ner-it-clinical\.yaml: relation_types: ner tasks have no relation_types"):
        load_tasks(tasks, schemas)
