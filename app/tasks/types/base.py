"""The interface every task type implements: one module per type, registered by name.

A task type owns what differs between NER, QA, classification (and the types to come):
its request and response models, what its prompt shows the model, the model-facing answer
format (validated by the task's schema and admitted by its grammar), how an answer is
checked and grounded after decoding, how the answers for the chunks of a long note merge,
its gold records, training targets, metrics and synthetic data. Everything else (chunking,
prompt rendering, constrained generation, adapter leases, limits, metrics, routes, batch
jobs, training, evaluation) is shared and reaches the type only through this interface.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from jsonschema import Draft202012Validator
from pydantic import BaseModel

from app.tasks.chunking import Chunk
from app.tasks.confidence import Node, TokenConfidences, locate
from app.tasks.fhir import FhirNote
from app.tasks.normalization import NfcText, remap_spans
from app.tasks.protocol import ModelInfo, TaskRequest
from app.tasks.spec import TaskManifest
from app.tasks.terminology import LabelCoding

R = TypeVar("R")  # a type's result for one input (and for each chunk of it, before merging)
T = TypeVar("T", bound="type[TaskType[Any]]")


class Task:
    """A loaded task: its manifest, its checked output schema and its type."""

    def __init__(
        self,
        manifest: TaskManifest,
        schema: dict[str, Any],
        source: Path,
        kind: TaskType[Any],
        coding: Mapping[str, LabelCoding] | None = None,
    ):
        self.manifest = manifest
        self.coding: Mapping[str, LabelCoding] = coding or {}  # label -> its terminology (entity tasks)
        self.schema = schema
        self.source = source
        self.kind = kind
        self.validator = Draft202012Validator(schema)
        self.memo: dict[str, Any] = {}  # what a type derives once from the manifest (a form's groups)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def type(self) -> str:
        return self.manifest.type

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.manifest.labels]

    @property
    def attribute_names(self) -> list[str]:
        return [attr.name for attr in self.manifest.attributes]

    def with_manifest(self, manifest: TaskManifest) -> Task:
        """The same task with another manifest (few-shot examples, a sampling temperature)."""
        return Task(manifest, self.schema, self.source, self.kind, self.coding)


@dataclass(frozen=True)
class TaskInput:
    """One item of a request: its id and the prompt's input fields."""

    id: str
    payload: dict[str, str]
    source_field: str  # the payload field answers are grounded in (and long notes are chunked by)
    min_confidence: float | None = None  # parts of the answer below it are dropped (and counted)

    @property
    def source(self) -> str:
        return self.payload[self.source_field]

    def with_source(self, text: str) -> dict[str, str]:
        """The payload for one chunk of the source."""
        return {**self.payload, self.source_field: text}


@dataclass(frozen=True)
class Ask:
    """One constrained generation for one chunk: the prompt's input fields, and the schema the
    answer must obey (compiled into its grammar, grounded strings drawn from `source`).
    `part` names a slice of the task the prompt shows (a form's item group); "" for all of it.
    `messages`, when set, is the whole prompt instead of the task's (an entity's linking ask)."""

    payload: dict[str, str]
    schema: dict[str, Any]
    validator: Draft202012Validator
    source: str
    part: str = ""
    messages: list[dict[str, str]] | None = None


class Answer:
    """One generation's answer: the parsed, schema-valid output, the text it was decoded as,
    and, when the engine returned them, its tokens' log-probabilities for confidence."""

    def __init__(self, output: dict[str, Any], text: str, confidences: TokenConfidences | None = None):
        self.output = output
        self.text = text
        self.confidences = confidences
        self._tree: Node | None = None

    def confidence(self, *path: str | int, per_token: bool = False, with_key: bool = False) -> float | None:
        """The confidence of the value at `path` (object keys and array indices), e.g.
        `("entities", 2)`: the joint probability of its tokens, or with `per_token` their
        geometric mean; with `with_key`, an object member's key is part of it (a key the
        grammar lets the model leave out is a decision too). None without log-probabilities.
        See app/tasks/confidence.py."""
        if self.confidences is None:
            return None
        if self._tree is None:
            self._tree = locate(self.text)
        node = self._tree
        for step in path:
            node = node.items[step] if isinstance(step, int) else node.members[step]
        start = node.key_start if with_key and node.key_start is not None else node.start
        return round(self.confidences.of(start, node.end, per_token=per_token), 4)


@dataclass
class Tally:
    """What reading one item's answers did, for the per-task metrics."""

    dropped: Counter[str] = field(default_factory=Counter)  # grounded strings dropped, by reason
    returned: int | None = None  # grounded spans returned (None: the type returns no spans)
    limit_reached: bool = False  # some answer held the schema's maximum number of items
    mismatched: int = 0  # form values their evidence does not state (kept lowered, or made unknown)


class BadRecord(ValueError):
    """One reason an annotated record is refused (the message names fields, never text)."""


# -- synthetic notes, as the training layer's generator provides them ---------------------


@dataclass(frozen=True)
class NoteSpan:
    start: int
    end: int
    text: str
    label: str
    flags: frozenset[str] = frozenset()  # assertion attributes that hold (negated, ...)
    # The (system, code) pairs of the concept written; None where the generator does not know.
    codes: tuple[tuple[str, str], ...] | None = None


@dataclass(frozen=True)
class SyntheticNote:
    """An invented note whose annotations were tracked while it was written."""

    kind: str  # its document type (DISCHARGE_SUMMARY, ...)
    text: str
    spans: tuple[NoteSpan, ...]  # entities, in document order
    facts: Mapping[str, NoteSpan]  # question key -> the span that answers it (stated once)
    mentions: frozenset[str]  # question keys the note talks about at all


@dataclass(frozen=True)
class RelationNote:
    """An invented note with its entities and the relations between them, tracked as written."""

    text: str
    spans: tuple[NoteSpan, ...]  # entities, in document order
    relations: tuple[tuple[str, int, int], ...]  # (relation type, head index, tail index) into spans


@dataclass(frozen=True)
class FormValue:
    value: str | bool | int | float | tuple[str, ...]  # dates as ISO 8601; a multiple choice as a tuple
    evidence: NoteSpan  # the words of the note that state it


@dataclass(frozen=True)
class FormNote:
    """An invented note with the form it fills: item name -> value; an unstated item is absent."""

    text: str
    values: Mapping[str, FormValue]


@dataclass(frozen=True)
class PhiNote:
    """An invented note with the identifiers (invented too) planted in it, at known offsets."""

    text: str
    spans: tuple[NoteSpan, ...]  # in document order, labelled with the deid task's PHI labels


class NoteWorld(Protocol):
    """A synthetic note generator for one language (app/training/synthetic)."""

    language: str
    note_kinds: tuple[str, ...]

    def compose(self, rng: random.Random, kind: str) -> SyntheticNote: ...

    def question_keys(self) -> list[str]: ...

    def question(self, key: str, rng: random.Random) -> str: ...

    def compose_relations(self, rng: random.Random) -> RelationNote:
        """A note about medications: drugs with their dosage, frequency, route and duration."""
        ...

    def compose_form(self, rng: random.Random, form: str) -> FormNote:
        """A note filling the form named `form`; ValueError if this world cannot write one."""
        ...

    def compose_phi(self, rng: random.Random) -> PhiNote:
        """A note with names, dates, codes and contacts planted in it (de-identification)."""
        ...


# -- the interface ---------------------------------------------------------------------


class TaskType(ABC, Generic[R]):
    name: ClassVar[str]  # the manifest's `type`
    endpoint: ClassVar[str]  # served at POST /v1/<endpoint>
    summary: ClassVar[str]  # one line for the API docs
    items_field: ClassVar[str] = "documents"  # the request's list of inputs
    input_fields: ClassVar[tuple[str, ...]] = ("text",)  # the first is the grounding source
    request_model: ClassVar[type[TaskRequest]]
    response_model: ClassVar[type[BaseModel]]

    # The manifest sections beyond labels and attributes this type reads (others are refused).
    manifest_sections: ClassVar[frozenset[str]] = frozenset()

    @property
    def source_field(self) -> str:
        return self.input_fields[0]

    # -- manifest ------------------------------------------------------------------------
    def derived_schema(self, manifest: TaskManifest) -> dict[str, Any] | None:
        """The output schema, for types that derive it from the manifest (a form's items);
        None for types whose manifest names a schema file."""
        return None

    @abstractmethod
    def check(self, task: Task) -> str | None:
        """Why the manifest and its schema do not fit this type (labels, grounded fields), or None."""

    @abstractmethod
    def grounded_strings(self, output: dict[str, Any]) -> list[str]:
        """The strings of a model answer that must be spans of its source (few-shot checks)."""

    def describe(self, task: Task) -> dict[str, Any]:
        """Type-specific facts `GET /v1/tasks` shows for a task."""
        return {}

    # -- prompt --------------------------------------------------------------------------
    @abstractmethod
    def format_lines(self, task: Task, part: str = "") -> list[str]:
        """System prompt lines after the instructions: label lists, the answer format."""

    def user_prompt(self, payload: Mapping[str, str]) -> str:
        return f"Text:\n{payload['text']}"

    def example_output(self, task: Task, output: dict[str, Any], part: str = "") -> dict[str, Any]:
        """What a few-shot example answers in a prompt for `part` (a form group: its items only)."""
        return output

    def asks(self, task: Task, payload: dict[str, str]) -> list[Ask]:
        """The generations one chunk needs (one here; a large form splits into several)."""
        return [Ask(payload, task.schema, task.validator, payload[self.source_field])]

    # -- serving -------------------------------------------------------------------------
    def inputs(self, body: TaskRequest) -> list[TaskInput]:
        items: Sequence[Any] = getattr(body, self.items_field)
        return [
            TaskInput(i.id, {f: getattr(i, f) for f in self.input_fields}, self.source_field, body.min_confidence)
            for i in items
        ]

    def blank(self, task: Task, item: TaskInput) -> R | None:
        """The result for an input answered without the model (a blank source), or None."""
        return None

    @abstractmethod
    def read(self, task: Task, item: TaskInput, chunk: Chunk, answers: list[Answer], tally: Tally) -> R:
        """One chunk's schema-valid answers (one per ask) as a result with whole-note offsets
        and confidences; strings that cannot be grounded are dropped and counted in `tally`."""

    @abstractmethod
    def merge(self, task: Task, item: TaskInput, parts: list[R], tally: Tally) -> R:
        """The results of a note's chunks (in document order) as one."""

    def to_original(self, task: Task, result: R, text: NfcText, tally: Tally) -> R:
        """A result grounded in the NFC form of a note, with every span moved back to the note
        as sent (offsets and text); see app/tasks/normalization.py."""
        return remap_spans(result, text.remap)

    @abstractmethod
    def respond(self, task: Task, model: ModelInfo, items: list[TaskInput], results: list[R]) -> BaseModel:
        """The response body."""

    def fhir_resources(self, task: Task, document: dict[str, Any], note: FhirNote) -> list[dict[str, Any]]:
        """One response document as FHIR R4 resources (app/tasks/fhir.py), for the types whose
        manifests take a `fhir:` mapping."""
        raise NotImplementedError(f"{self.name} tasks have no FHIR mapping")

    # -- data: gold records, training targets, metrics, synthetic notes ----------------
    @abstractmethod
    def parse_gold(self, task: Task, obj: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
        """An annotated record (the API's shapes) as (prompt input, checked gold); BadRecord if wrong."""

    @abstractmethod
    def targets(self, task: Task, gold: dict[str, Any], chunk: Chunk) -> list[dict[str, Any]]:
        """What the model must answer for one chunk (one per ask) for serving to return the gold."""

    @abstractmethod
    def prediction(self, item: dict[str, Any]) -> dict[str, Any]:
        """A response item read back in the gold shape (for scoring)."""

    @abstractmethod
    def gold_fields(self, item: dict[str, Any]) -> dict[str, Any]:
        """A response item as the annotation fields of a gold record (what `parse_gold` reads,
        beside the id and the input fields): a reviewed answer becomes training and evaluation
        data as it stands. Confidences and other response-only fields are left out."""

    def confidences(self, item: dict[str, Any]) -> list[float]:
        """Every confidence in a response item (what review ranks notes by, the lowest first):
        here each `confidence` field, at any depth."""
        found: list[float] = []
        stack: list[Any] = [item]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                value = node.get("confidence")
                if isinstance(value, int | float) and not isinstance(value, bool):
                    found.append(float(value))
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
        return found

    @abstractmethod
    def empty_prediction(self) -> dict[str, Any]:
        """The prediction of an item whose request failed."""

    @abstractmethod
    def score(self, task: Task, golds: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> dict[str, Any]:
        """Metrics of predictions against gold (parallel lists)."""

    headline: ClassVar[tuple[str, ...]] = ()  # the metrics a summary table shows first

    @abstractmethod
    def synthesize(self, task: Task, world: NoteWorld, n: int, seed: int) -> list[dict[str, Any]]:
        """`n` invented annotated records for `task`, deterministic by seed."""


_REGISTRY: dict[str, TaskType[Any]] = {}


def register(cls: T) -> T:
    """Class decorator: make a task type available under its `name`."""
    if cls.name in _REGISTRY:
        raise ValueError(f"task type {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def registered() -> dict[str, TaskType[Any]]:
    return dict(_REGISTRY)


def listing(title: str, specs: Sequence[Any]) -> list[str]:
    """A titled list of names and descriptions for a system prompt; nothing when empty."""
    if not specs:
        return []
    return ["", title, *(f"- {s.name}: {s.description}".rstrip(": ") for s in specs)]


class Confident(Protocol):
    @property
    def confidence(self) -> float | None: ...


C = TypeVar("C", bound=Confident)


def keep_confident(found: list[C], threshold: float | None, tally: Tally) -> list[C]:
    """What is at or above a request's min_confidence (entities, answers, relations, form
    values); the rest counted as dropped."""
    if threshold is None:
        return found
    kept = [f for f in found if f.confidence is None or f.confidence >= threshold]
    if len(kept) < len(found):
        tally.dropped["low_confidence"] += len(found) - len(kept)
    return kept
