"""Named-entity recognition: entities with exact offsets, a label and assertion attributes.

What the model writes (the task's schema, admitted by its grammar, taught by training) is
token-lean: `{"entities": [[text, label, attribute, ...], ...]}` in order of appearance
(see app/tasks/entities.py). The API answers each entity with offsets, its text, label and
every attribute as true or false.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from app.tasks.chunking import Chunk, merge_spans
from app.tasks.entities import (
    EntityOut,
    check_entities,
    entities_inside,
    entity_calibration_pairs,
    entity_limit,
    entity_prediction,
    entity_target,
    gold_entity,
    linking_scores,
    ner_scores,
    parse_gold_entities,
    read_entities,
    settle_spans,
)
from app.tasks.fhir import FhirNote, entity_resources
from app.tasks.gold import list_field, string_field
from app.tasks.grounding import Span, sorted_spans
from app.tasks.normalization import NfcText, remap_spans
from app.tasks.protocol import DocumentsRequest, FhirChoice, ModelInfo, SpansResponse, TaskRequest
from app.tasks.scoring import calibration
from app.tasks.types.base import (
    Answer,
    NoteSpan,
    NoteWorld,
    Tally,
    Task,
    TaskInput,
    TaskType,
    keep_confident,
    listing,
    register,
)

# Synthetic NER notes lean toward the discharge and emergency notes the NER tasks describe.
_NOTE_WEIGHTS = {"DISCHARGE_SUMMARY": 3, "EMERGENCY_NOTE": 3, "OUTPATIENT_VISIT": 2}


class NerRequest(DocumentsRequest, FhirChoice):
    task: str = Field(examples=["ner-it-clinical"])


class NerDocumentOut(BaseModel):
    id: str
    entities: list[EntityOut]
    entity_limit_reached: bool = Field(
        False,
        description="A chunk of this document returned the task's maximum number of entities: "
        "the list may be incomplete (use smaller chunks or a larger maxItems for such notes).",
    )


class NerResponse(SpansResponse):
    documents: list[NerDocumentOut]


@dataclass
class NerResult:
    entities: list[Span]
    # Some chunk returned the schema's maxItems entities: there may be more than were listed.
    limit_reached: bool = False
    chunk: Chunk | None = None  # where a chunk's result was found (its edges cut entities off)


def _gold_codes(task: Task, span: NoteSpan) -> dict[str, Any]:
    """The codes the generator planted, as gold, for a label the task codes with their system."""
    coding = task.coding.get(span.label)
    if coding is None or span.codes is None:
        return {}
    return {"codes": [{"system": s, "code": c} for s, c in span.codes if s in coding.terminology.systems]}


@register
class NerType(TaskType[NerResult]):
    name = "ner"
    endpoint = "ner"
    summary = "Named entities with exact character offsets, labels and assertion attributes."
    # Typed as the interface's, so that a type built on NER (deid) declares its own.
    request_model: ClassVar[type[TaskRequest]] = NerRequest
    response_model: ClassVar[type[BaseModel]] = NerResponse
    headline: ClassVar[tuple[str, ...]] = ("strict.f1", "lenient.f1")
    manifest_sections: ClassVar[frozenset[str]] = frozenset({"terminologies", "fhir"})

    # -- manifest ------------------------------------------------------------------------
    def check(self, task: Task) -> str | None:
        return check_entities(task)

    def grounded_strings(self, output: dict[str, Any]) -> list[str]:
        return [str(entity[0]) for entity in output.get("entities", [])]

    # -- prompt --------------------------------------------------------------------------
    def format_lines(self, task: Task, part: str = "") -> list[str]:
        lines = listing("Labels:", task.manifest.labels)
        lines += listing("Attributes (after the label, only those that hold):", task.manifest.attributes)
        return [*lines, "", 'Answer with one JSON object only: {"entities": [[text, label, attributes...], ...]}.']

    # -- serving -------------------------------------------------------------------------
    def blank(self, task: Task, item: TaskInput) -> NerResult | None:
        return NerResult([]) if not item.source.strip() else None

    def read(self, task: Task, item: TaskInput, chunk: Chunk, answers: list[Answer], tally: Tally) -> NerResult:
        answer = answers[0]
        entities = sorted_spans(read_entities(task, chunk, answer, tally))
        return NerResult(entities, len(answer.output.get("entities", [])) >= entity_limit(task), chunk)

    def merge(self, task: Task, item: TaskInput, parts: list[NerResult], tally: Tally) -> NerResult:
        found = merge_spans([part.entities for part in parts], [part.chunk for part in parts])
        entities = keep_confident(found, item.min_confidence, tally)
        limit_reached = any(part.limit_reached for part in parts)
        tally.returned = (tally.returned or 0) + len(entities)
        tally.limit_reached = tally.limit_reached or limit_reached
        return NerResult(entities, limit_reached)

    def to_original(self, task: Task, result: NerResult, text: NfcText, tally: Tally) -> NerResult:
        entities = settle_spans(remap_spans(result.entities, text.remap), tally)
        tally.returned = len(entities)
        return NerResult(entities, result.limit_reached)

    def respond(self, task: Task, model: ModelInfo, items: list[TaskInput], results: list[NerResult]) -> BaseModel:
        return NerResponse(
            task=task.name,
            model=model,
            documents=[
                NerDocumentOut(
                    id=item.id,
                    entities=[EntityOut.of(s) for s in result.entities],
                    entity_limit_reached=result.limit_reached,
                )
                for item, result in zip(items, results, strict=True)
            ],
        )

    def fhir_resources(self, task: Task, document: dict[str, Any], note: FhirNote) -> list[dict[str, Any]]:
        return entity_resources(task.manifest, document["entities"], note)

    # -- data ----------------------------------------------------------------------------
    def parse_gold(self, task: Task, obj: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
        text = string_field(obj, "text")
        return {"text": text}, {"entities": parse_gold_entities(task, text, list_field(obj, "entities"))}

    def targets(self, task: Task, gold: dict[str, Any], chunk: Chunk) -> list[dict[str, Any]]:
        """The entities lying fully inside the chunk, in start order, capped at the schema's maxItems."""
        return [{"entities": [entity_target(task, e) for e in entities_inside(task, gold["entities"], chunk)]}]

    def prediction(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"entities": [entity_prediction(e) for e in item["entities"]]}

    def empty_prediction(self) -> dict[str, Any]:
        return {"entities": []}

    def gold_fields(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"entities": [gold_entity(e) for e in item["entities"]]}

    def score(self, task: Task, golds: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> dict[str, Any]:
        gold_entities = [g["entities"] for g in golds]
        predicted = [p.get("entities", []) for p in predictions]
        ner = ner_scores(gold_entities, predicted)
        scores = {
            "n": len(golds),
            "strict": ner.strict.to_dict(),
            "lenient": ner.lenient.to_dict(),
            "per_label_strict_f1": {label: round(prf.f1, 4) for label, prf in ner.per_label_strict.items()},
            "calibration": calibration(entity_calibration_pairs(gold_entities, predicted)),
        }
        if task.coding:
            scores["linking"] = linking_scores(task, gold_entities, predicted)
        return scores

    def synthesize(self, task: Task, world: NoteWorld, n: int, seed: int) -> list[dict[str, Any]]:
        """Notes with every entity the generator wrote, offsets tracked as it wrote them."""
        rng = random.Random(seed)
        weights = [_NOTE_WEIGHTS.get(kind, 1) for kind in world.note_kinds]
        rows: list[dict[str, Any]] = []
        for i in range(n):
            note = world.compose(rng, rng.choices(world.note_kinds, weights)[0])
            entities = [
                {
                    "start": s.start,
                    "end": s.end,
                    "text": s.text,
                    "label": s.label,
                    "attributes": {name: name in s.flags for name in task.attribute_names},
                }
                | _gold_codes(task, s)
                for s in note.spans
            ]
            rows.append({"id": f"{world.language}-ner-{i:06d}", "text": note.text, "entities": entities})
        return rows
