"""Task manifests: load `adapters/*.yaml`, check each against its output schema and its type.

Startup refuses a bad manifest with a message naming the file and the field, so a typo
never turns into a service that answers with the wrong labels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from app.settings import SHIPPED_TASKS_DIR
from app.tasks.fhir import check_mapping
from app.tasks.schema import SchemaBoundsError, check_schema
from app.tasks.spec import Example, TaskManifest
from app.tasks.terminology import LabelCoding, Terminology, TerminologyError, load_terminology
from app.tasks.types import task_types
from app.tasks.types.base import Task, TaskType


class ManifestError(ValueError):
    """A manifest or schema file is invalid; the message names file and field."""


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
        message = first["msg"].removeprefix("Value error, ")
        raise ManifestError(f"{path}: {field}: {message}") from exc
    kinds = task_types()
    kind = kinds.get(manifest.type)
    if kind is None:
        raise ManifestError(f"{path}: type: unknown task type {manifest.type!r} (known: {', '.join(sorted(kinds))})")
    optional = ("relation_types", "items", "on_evidence_mismatch", "values_stated_in_note", "terminologies", "fhir")
    for section in optional:
        if getattr(manifest, section) and section not in kind.manifest_sections:
            raise ManifestError(f"{path}: {section}: {manifest.type} tasks have no {section}")
    schema, schema_source = _schema(path, manifest, kind, schemas_dir)
    try:
        check_schema(schema)
    except SchemaBoundsError as exc:
        raise ManifestError(f"{schema_source}: {exc}") from exc
    task = Task(manifest, schema, path, kind)
    problem = kind.check(task) or check_mapping(manifest)
    if problem:
        raise ManifestError(f"{path}: {problem}")
    task.coding = _coding(path, task)
    for i, example in enumerate(manifest.examples):
        problem = _check_example(task, example)
        if problem:
            raise ManifestError(f"{path}: examples.{i}: {problem}")
    return task


def _schema(path: Path, manifest: TaskManifest, kind: TaskType[Any], schemas_dir: Path) -> tuple[dict[str, Any], str]:
    """The task's output schema, and where it comes from (for messages)."""
    derived = kind.derived_schema(manifest)
    if derived is not None:
        if manifest.schema_file is not None:
            raise ManifestError(
                f"{path}: schema: {manifest.type} tasks derive their schema from the manifest; remove it"
            )
        return derived, f"{path} (derived schema)"
    if manifest.schema_file is None:
        raise ManifestError(f"{path}: schema: required for {manifest.type} tasks")
    schema_path = schemas_dir / manifest.schema_file
    try:
        return dict(json.loads(schema_path.read_text(encoding="utf-8"))), str(schema_path)
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: schema: cannot load {schema_path}: {exc}") from exc


def _coding(path: Path, task: Task) -> dict[str, LabelCoding]:
    """Each coded label's terminology, files loaded and checked (the file, line and field of
    a bad row named after the manifest's own field)."""
    coding: dict[str, LabelCoding] = {}
    for i, spec in enumerate(task.manifest.terminologies):
        where = f"{path}: terminologies.{i}"
        for label in spec.labels:
            if label not in task.label_names:
                raise ManifestError(f"{where}.labels: unknown label {label!r} (task labels: {task.label_names})")
            if label in coding:
                raise ManifestError(f"{where}.labels: label {label!r} already has a terminology")
        file = _terminology_file(path, spec.file)
        try:
            terminology = load_terminology(file, spec.systems)
        except TerminologyError as exc:
            raise ManifestError(f"{where}.file: {exc}") from exc
        if not _in_languages(terminology, task.manifest.languages):
            raise ManifestError(f"{where}.file: {file} has no codes in the task's languages {task.manifest.languages}")
        for label in spec.labels:
            coding[label] = LabelCoding(terminology, spec.candidates, spec.min_score)
    return coding


def _terminology_file(manifest: Path, name: str) -> Path:
    """An absolute path as it is; a relative one from the manifest's folder, or, when not there,
    from the shipped manifests' folder: a shipped manifest mounted elsewhere (a Helm ConfigMap
    holds YAML files only) still finds the terminology the image ships."""
    file = Path(name)
    if file.is_absolute():
        return file
    local, shipped = manifest.parent / file, SHIPPED_TASKS_DIR / file
    return shipped if not local.exists() and shipped.is_file() else local


def _in_languages(terminology: Terminology, languages: list[str]) -> bool:
    return any(c.language in languages for c in terminology.concepts)


def _check_example(task: Task, example: Example) -> str | None:
    needed = set(task.kind.input_fields)
    if set(example.input) != needed:
        return f"input: needs exactly the fields {sorted(needed)}"
    errors = sorted(task.validator.iter_errors(example.output), key=lambda e: e.path)
    if errors:
        return f"output: {errors[0].message}"
    source = example.input[task.kind.source_field]
    for span in task.kind.grounded_strings(example.output):
        if span not in source:
            return f"output: span {span!r} is not in the example input"
    return None
