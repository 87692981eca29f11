"""Task manifests: load `adapters/*.yaml`, check them against their output schemas.

Startup refuses a bad manifest with a message naming the file and the field, so a typo
never turns into a service that answers with the wrong labels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.tasks.schema import GROUNDED, SchemaBoundsError, check_schema

TaskType = Literal["ner", "qa", "classification"]
_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"


class ManifestError(ValueError):
    """A manifest or schema file is invalid; the message names file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelSpec(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str = ""


class AdapterRef(_Strict):
    name: str = Field(pattern=_NAME)
    version: str = Field(pattern=r"^[A-Za-z0-9._-]{1,32}$")
    path: str = Field(min_length=1, description="Adapter folder, relative to the adapters root.")


class GenerationSpec(_Strict):
    max_chunk_chars: int = Field(1500, ge=100, le=100_000)
    chunk_overlap_chars: int = Field(200, ge=0, le=10_000)
    temperature: float = Field(0.0, ge=0.0, le=2.0)


class Example(_Strict):
    input: dict[str, str]
    output: dict[str, Any]


class TaskManifest(_Strict):
    name: str = Field(pattern=_NAME)
    type: TaskType
    languages: list[str] = Field(min_length=1)
    description: str = ""
    labels: list[LabelSpec] = Field(default_factory=list)
    attributes: list[LabelSpec] = Field(default_factory=list)
    multi_label: bool = False
    instructions: str = Field(min_length=1)
    examples: list[Example] = Field(default_factory=list)
    schema_file: str = Field(alias="schema", min_length=1)
    adapter: AdapterRef
    generation: GenerationSpec = Field(default_factory=lambda: GenerationSpec())

    @field_validator("labels", "attributes")
    @classmethod
    def _unique(cls, value: list[LabelSpec]) -> list[LabelSpec]:
        names = [item.name for item in value]
        if len(names) != len(set(names)):
            raise ValueError("names must be unique")
        return value


class Task:
    """A loaded task: its manifest plus its parsed, checked output schema."""

    def __init__(self, manifest: TaskManifest, schema: dict[str, Any], source: Path):
        self.manifest = manifest
        self.schema = schema
        self.source = source
        self.validator = Draft202012Validator(schema)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def type(self) -> TaskType:
        return self.manifest.type

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.manifest.labels]

    @property
    def attribute_names(self) -> list[str]:
        return [attr.name for attr in self.manifest.attributes]


def load_tasks(tasks_dir: Path, schemas_dir: Path) -> dict[str, Task]:
    """Load and check every `*.yaml` manifest in tasks_dir."""
    files = sorted(tasks_dir.glob("*.yaml")) + sorted(tasks_dir.glob("*.yml"))
    if not files:
        raise ManifestError(f"{tasks_dir}: no task manifests (*.yaml) found")
    tasks: dict[str, Task] = {}
    for path in files:
        task = load_task(path, schemas_dir)
        if task.name in tasks:
            raise ManifestError(f"{path}: name: task {task.name!r} already defined in {tasks[task.name].source}")
        tasks[task.name] = task
    return tasks


def load_task(path: Path, schemas_dir: Path) -> Task:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(f"{path}: cannot read YAML: {exc}") from exc
    try:
        manifest = TaskManifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ManifestError(f"{path}: {field}: {first['msg']}") from exc
    schema_path = schemas_dir / manifest.schema_file
    try:
        schema = json.loads(schema_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: schema: cannot load {schema_path}: {exc}") from exc
    try:
        check_schema(schema)
    except SchemaBoundsError as exc:
        raise ManifestError(f"{schema_path}: {exc}") from exc
    task = Task(manifest, schema, path)
    problem = _check_consistency(task)
    if problem:
        raise ManifestError(f"{path}: {problem}")
    for i, example in enumerate(manifest.examples):
        problem = _check_example(task, example)
        if problem:
            raise ManifestError(f"{path}: examples.{i}: {problem}")
    return task


def _enum_at(schema: dict[str, Any], *keys: str) -> list[Any] | None:
    node: Any = schema
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node.get("enum") if isinstance(node, dict) else None


def _check_consistency(task: Task) -> str | None:
    """The schema must encode exactly the manifest's labels and attributes."""
    m, s = task.manifest, task.schema
    if m.type == "ner":
        item = s.get("properties", {}).get("entities", {}).get("items", {})
        props = item.get("properties", {})
        if _enum_at(props, "label") != task.label_names:
            return "labels: must equal the schema's entities.items.label enum"
        if not props.get("text", {}).get(GROUNDED):
            return f"schema: entities.items.text must be marked {GROUNDED}"
        attrs = list(props.get("attributes", {}).get("properties", {}))
        if attrs != task.attribute_names:
            return "attributes: must equal the schema's entities.items.attributes properties"
    elif m.type == "qa":
        alts = s.get("properties", {}).get("answer", {}).get("anyOf", [])
        kinds = sorted(str(a.get("type")) for a in alts)
        if kinds != ["null", "string"] or not any(a.get(GROUNDED) for a in alts):
            return f"schema: answer must be anyOf null | string marked {GROUNDED}"
    else:
        labels = s.get("properties", {}).get("labels", {})
        if _enum_at(labels, "items") != task.label_names:
            return "labels: must equal the schema's labels.items enum"
        if not m.multi_label and labels.get("maxItems") != 1:
            return "multi_label: false needs the schema's labels.maxItems == 1"
        if labels.get("minItems", 0) < 1:
            return "schema: labels.minItems must be at least 1"
    if m.type != "qa" and not task.label_names:
        return "labels: at least one label is required"
    return None


def _check_example(task: Task, example: Example) -> str | None:
    needed = {"context", "question"} if task.type == "qa" else {"text"}
    if set(example.input) != needed:
        return f"input: needs exactly the fields {sorted(needed)}"
    errors = sorted(task.validator.iter_errors(example.output), key=lambda e: e.path)
    if errors:
        return f"output: {errors[0].message}"
    source = example.input.get("text") or example.input.get("context", "")
    spans = [e["text"] for e in example.output.get("entities", [])]
    if task.type == "qa" and example.output.get("answer") is not None:
        spans.append(example.output["answer"])
    for span in spans:
        if span not in source:
            return f"output: span {span!r} is not in the example input"
    return None
