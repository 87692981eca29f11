"""Relation extraction: entities with exact offsets, and typed relations between them.

What the model writes: `{"entities": [[text, label, attribute, ...], ...], "relations":
[[type, head, tail], ...]}`, where head and tail are positions in that answer's entity list
(bounded integers: the grammar admits no position past the list's maximum). The manifest
declares each relation type with the labels its head and tail may have. After decoding, a
relation is returned only if both its arguments were grounded and their labels fit its type;
anything else is dropped and counted (`relation_argument_missing`: a position past the
entities written; `relation_argument_dropped`: an entity that could not be grounded or fell
under min_confidence; `relation_labels`: a label pair the type does not allow;
`relation_self`: head and tail the same entity, as written or once chunks are merged;
`duplicate`).

Long notes: relations are found within a chunk (both arguments in the same chunk). When
overlapping chunks find the same entity, it is merged into one and keeps every relation any
chunk found for it. A copy of an entity cut off at a chunk's edge (it reaches the edge, and
the whole entity, found by another chunk, goes on past it) hands its relations to the whole
one; an entity inside another one, away from the edges, is an entity of its own. A
relation whose arguments never share a chunk is not found: chunks overlap by the manifest's
`chunk_overlap_chars` (200 by default), so arguments closer than that are always together
in some chunk.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from app.tasks.chunking import Chunk, merge_chunk_spans
from app.tasks.entities import (
    EntityOut,
    check_entities,
    entities_inside,
    entity_calibration_pairs,
    entity_limit,
    entity_prediction,
    entity_target,
    gold_entity,
    key,
    linking_scores,
    ner_scores,
    overlaps,
    parse_gold_entities,
    read_entities,
    settle_spans,
    totals,
)
from app.tasks.fhir import FhirNote, entity_resources
from app.tasks.gold import list_field, string_field
from app.tasks.grounding import Span, sorted_spans
from app.tasks.normalization import NfcText, remap_spans
from app.tasks.protocol import DocumentsRequest, FhirChoice, ModelInfo, SpansResponse
from app.tasks.schema import enum_values
from app.tasks.scoring import calibration
from app.tasks.spec import RelationTypeSpec
from app.tasks.types.base import (
    Answer,
    BadRecord,
    NoteWorld,
    Tally,
    Task,
    TaskInput,
    TaskType,
    keep_confident,
    listing,
    register,
)

SpanKey = tuple[int, int, str]  # (start, end, label): an entity's identity within a note


class RelationsRequest(DocumentsRequest, FhirChoice):
    task: str = Field(examples=["re-it-medication"])


class RelationEntityOut(EntityOut):
    id: str = Field(description="The entity's id in this document (e1, e2, ... in document order).")


class RelationOut(BaseModel):
    type: str
    head: str = Field(description="The id of the head entity.")
    tail: str = Field(description="The id of the tail entity.")
    confidence: float | None = Field(
        None, ge=0.0, le=1.0, description="The model's probability for this relation (type and arguments)."
    )


class RelationsDocumentOut(BaseModel):
    id: str
    entities: list[RelationEntityOut]
    relations: list[RelationOut]
    entity_limit_reached: bool = Field(
        False, description="A chunk returned the task's maximum number of entities: the list may be incomplete."
    )
    relation_limit_reached: bool = Field(
        False, description="A chunk returned the task's maximum number of relations: the list may be incomplete."
    )


class RelationsResponse(SpansResponse):
    documents: list[RelationsDocumentOut]


@dataclass(frozen=True)
class Relation:
    type: str
    head: Span
    tail: Span
    confidence: float | None = None


@dataclass
class RelationsResult:
    entities: list[Span]
    relations: list[Relation]
    entity_limit_reached: bool = False
    relation_limit_reached: bool = False
    chunk: Chunk | None = None  # where a chunk's result was found (its edges cut entities off)


def _relation_schema(schema: dict[str, Any]) -> dict[str, Any]:
    node: dict[str, Any] = schema.get("properties", {}).get("relations", {})
    return node


def _span_key(span: Span) -> SpanKey:
    return span.start, span.end, span.label


@register
class RelationsType(TaskType[RelationsResult]):
    name = "relations"
    endpoint = "relations"
    summary = "Entities with exact offsets and the typed relations between them (a drug and its dosage, ...)."
    request_model = RelationsRequest
    response_model = RelationsResponse
    manifest_sections = frozenset({"relation_types", "terminologies", "fhir"})
    headline = ("relations.strict.f1", "relations.lenient.f1", "entities.strict.f1")

    # -- manifest ------------------------------------------------------------------------
    def check(self, task: Task) -> str | None:
        problem = check_entities(task)
        if problem:
            return problem
        types = task.manifest.relation_types
        if not types:
            return "relation_types: at least one relation type is required"
        labels = set(task.label_names)
        for i, spec in enumerate(types):
            for side in ("head", "tail"):
                unknown = [label for label in getattr(spec, side) if label not in labels]
                if unknown:
                    return f"relation_types.{i}.{side}: label {unknown[0]!r} is not declared in labels"
        relations = _relation_schema(task.schema)
        prefix = relations.get("items", {}).get("prefixItems")
        if relations.get("type") != "array" or not isinstance(prefix, list) or len(prefix) != 3:
            return "schema: relations.items must be a tuple array [type, head, tail]"
        if enum_values(prefix[0]) != [spec.name for spec in types]:
            return "relation_types: must equal the schema's relation type enum (relations.items.prefixItems[0])"
        top = entity_limit(task) - 1
        for position in prefix[1:]:
            if position.get("type") != "integer" or position.get("minimum") != 0 or position.get("maximum") != top:
                return f"schema: relation head and tail must be integers from 0 to {top} (entities.maxItems - 1)"
        return None

    def grounded_strings(self, output: dict[str, Any]) -> list[str]:
        return [str(entity[0]) for entity in output.get("entities", [])]

    def describe(self, task: Task) -> dict[str, Any]:
        return {"relation_types": [spec.model_dump() for spec in task.manifest.relation_types]}

    # -- prompt --------------------------------------------------------------------------
    def format_lines(self, task: Task, part: str = "") -> list[str]:
        lines = listing("Labels:", task.manifest.labels)
        lines += listing("Attributes (after the label, only those that hold):", task.manifest.attributes)
        lines += ["", "Relations [type, head, tail]:"]
        for spec in task.manifest.relation_types:
            arguments = f"{'|'.join(spec.head)} -> {'|'.join(spec.tail)}"
            lines.append(f"- {spec.name}: {arguments}" + (f" ({spec.description})" if spec.description else ""))
        return [
            *lines,
            "",
            'Answer with one JSON object only: {"entities": [[text, label, attributes...], ...], '
            '"relations": [[type, head, tail], ...]}; head and tail are positions in the entities list, from 0.',
        ]

    # -- serving -------------------------------------------------------------------------
    def blank(self, task: Task, item: TaskInput) -> RelationsResult | None:
        return RelationsResult([], []) if not item.source.strip() else None

    def read(self, task: Task, item: TaskInput, chunk: Chunk, answers: list[Answer], tally: Tally) -> RelationsResult:
        answer = answers[0]
        placed = read_entities(task, chunk, answer, tally)
        allowed = {spec.name: spec for spec in task.manifest.relation_types}
        written = answer.output.get("relations", [])
        relations: list[Relation] = []
        seen: set[tuple[str, SpanKey, SpanKey]] = set()
        for i, (kind, head_at, tail_at) in enumerate(written):
            reason = _unfit(allowed[kind], placed, head_at, tail_at)
            if reason is None:
                head, tail = placed[head_at], placed[tail_at]
                assert head is not None and tail is not None  # _unfit checked
                identity = (kind, _span_key(head), _span_key(tail))
                reason = "duplicate" if identity in seen else None
            if reason is not None:
                tally.dropped[reason] += 1
                continue
            seen.add(identity)
            # The joint probability of the triple's tokens: on the demo it was calibrated (ECE
            # 0.14-0.20) where their geometric mean was not (0.23-0.27; docs/benchmarks.md).
            relations.append(Relation(kind, head, tail, answer.confidence("relations", i)))
        entities = sorted_spans(placed)
        return RelationsResult(
            entities,
            relations,
            len(answer.output.get("entities", [])) >= entity_limit(task),
            len(written) >= int(_relation_schema(task.schema)["maxItems"]),
            chunk,
        )

    def merge(self, task: Task, item: TaskInput, parts: list[RelationsResult], tally: Tally) -> RelationsResult:
        found = merge_chunk_spans([part.entities for part in parts], [part.chunk for part in parts])
        merged = keep_confident(found.spans, item.min_confidence, tally)
        by_key = {_span_key(s): s for s in merged}
        kept: dict[tuple[str, SpanKey, SpanKey], Relation] = {}
        for part in parts:
            for relation in part.relations:
                head, tail = _whole(relation.head, found.whole, by_key), _whole(relation.tail, found.whole, by_key)
                if head is None or tail is None:  # an argument under min_confidence
                    tally.dropped["relation_argument_dropped"] += 1
                    continue
                if _span_key(head) == _span_key(tail):  # two copies of one entity, cut off by chunk edges
                    tally.dropped["relation_self"] += 1
                    continue
                identity = (relation.type, _span_key(head), _span_key(tail))
                best = kept.get(identity)
                if best is None or (relation.confidence or 0.0) > (best.confidence or 0.0):
                    kept[identity] = Relation(relation.type, head, tail, relation.confidence)
        relations = keep_confident(list(kept.values()), item.min_confidence, tally)
        relations.sort(key=lambda r: (_span_key(r.head), _span_key(r.tail), r.type))
        tally.returned = (tally.returned or 0) + len(merged)
        limit = any(p.entity_limit_reached for p in parts)
        tally.limit_reached = tally.limit_reached or limit
        return RelationsResult(merged, relations, limit, any(p.relation_limit_reached for p in parts))

    def to_original(self, task: Task, result: RelationsResult, text: NfcText, tally: Tally) -> RelationsResult:
        # As for NER (entities.settle_spans); a relation follows its arguments: gone with an
        # argument that kept nothing, and one relation where two became the same.
        entities = settle_spans(remap_spans(result.entities, text.remap), tally)
        by_key = {_span_key(s): s for s in entities}
        kept: dict[tuple[str, SpanKey, SpanKey], Relation] = {}
        for relation in result.relations:
            head, tail = text.remap(relation.head), text.remap(relation.tail)
            if _span_key(head) not in by_key or _span_key(tail) not in by_key:
                tally.dropped["relation_argument_dropped"] += 1
            elif _span_key(head) == _span_key(tail):
                tally.dropped["relation_self"] += 1
            else:
                identity = (relation.type, _span_key(head), _span_key(tail))
                best = kept.get(identity)
                if best is None or (relation.confidence or 0.0) > (best.confidence or 0.0):
                    kept[identity] = Relation(
                        relation.type, by_key[identity[1]], by_key[identity[2]], relation.confidence
                    )
        relations = sorted(kept.values(), key=lambda r: (_span_key(r.head), _span_key(r.tail), r.type))
        tally.returned = len(entities)
        return RelationsResult(entities, relations, result.entity_limit_reached, result.relation_limit_reached)

    def fhir_resources(self, task: Task, document: dict[str, Any], note: FhirNote) -> list[dict[str, Any]]:
        return entity_resources(task.manifest, document["entities"], note, document["relations"])

    def respond(
        self, task: Task, model: ModelInfo, items: list[TaskInput], results: list[RelationsResult]
    ) -> RelationsResponse:
        documents = []
        for item, result in zip(items, results, strict=True):
            ids = {_span_key(s): f"e{i}" for i, s in enumerate(result.entities, start=1)}
            documents.append(
                RelationsDocumentOut(
                    id=item.id,
                    entities=[
                        RelationEntityOut(id=ids[_span_key(s)], **EntityOut.of(s).model_dump()) for s in result.entities
                    ],
                    relations=[
                        RelationOut(
                            type=r.type,
                            head=ids[_span_key(r.head)],
                            tail=ids[_span_key(r.tail)],
                            confidence=r.confidence,
                        )
                        for r in result.relations
                    ],
                    entity_limit_reached=result.entity_limit_reached,
                    relation_limit_reached=result.relation_limit_reached,
                )
            )
        return RelationsResponse(task=task.name, model=model, documents=documents)

    # -- data ----------------------------------------------------------------------------
    def parse_gold(self, task: Task, obj: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
        """`{"id", "text", "entities": [{"id", "start", "end", "label", ...}], "relations":
        [{"type", "head", "tail"}]}`, head and tail naming entity ids of the record."""
        text = string_field(obj, "text")
        entities = parse_gold_entities(task, text, list_field(obj, "entities"), frozenset({"id"}))
        by_id: dict[str, dict[str, Any]] = {}
        for i, entity in enumerate(entities):
            entity_id = entity.pop("id", None)
            if not isinstance(entity_id, str) or not entity_id:
                raise BadRecord(f"entities: every entity needs a string id (relations name them); entity {i} has none")
            if entity_id in by_id:
                raise BadRecord(f"entities: duplicate id {entity_id!r}")
            by_id[entity_id] = entity
        allowed = {spec.name: spec for spec in task.manifest.relation_types}
        relations: list[dict[str, Any]] = []
        seen: set[tuple[str, SpanKey, SpanKey]] = set()
        for i, relation in enumerate(list_field(obj, "relations")):
            where = f"relations[{i}]"
            if not isinstance(relation, dict) or set(relation) - {"type", "head", "tail"}:
                raise BadRecord(f"{where}: must be an object with type, head and tail")
            kind = relation.get("type")
            if kind not in allowed:
                raise BadRecord(f"{where}.type: unknown relation type {kind!r} (task types: {sorted(allowed)})")
            ends = []
            for side in ("head", "tail"):
                argument = by_id.get(str(relation.get(side)))
                if argument is None:
                    raise BadRecord(f"{where}.{side}: no entity with id {relation.get(side)!r}")
                if argument["label"] not in getattr(allowed[kind], side):
                    raise BadRecord(f"{where}.{side}: a {kind} relation's {side} cannot be a {argument['label']}")
                ends.append(argument)
            identity = (str(kind), key(ends[0]), key(ends[1]))
            if ends[0] is ends[1] or identity in seen:
                raise BadRecord(f"{where}: a duplicate or self relation")
            seen.add(identity)
            relations.append({"type": kind, "head": _arg(ends[0]), "tail": _arg(ends[1])})
        return {"text": text}, {"entities": entities, "relations": relations}

    def targets(self, task: Task, gold: dict[str, Any], chunk: Chunk) -> list[dict[str, Any]]:
        """The entities inside the chunk (as NER), and the relations between two of them."""
        inside = entities_inside(task, gold["entities"], chunk)
        position = {key(e): i for i, e in enumerate(inside)}
        limit = int(_relation_schema(task.schema)["maxItems"])
        relations = [
            [r["type"], position[key(r["head"])], position[key(r["tail"])]]
            for r in gold["relations"]
            if key(r["head"]) in position and key(r["tail"]) in position
        ]
        return [{"entities": [entity_target(task, e) for e in inside], "relations": relations[:limit]}]

    def gold_fields(self, item: dict[str, Any]) -> dict[str, Any]:
        return {
            "entities": [gold_entity(e, ("id",)) for e in item["entities"]],
            "relations": [{"type": r["type"], "head": r["head"], "tail": r["tail"]} for r in item["relations"]],
        }

    def prediction(self, item: dict[str, Any]) -> dict[str, Any]:
        by_id = {e["id"]: e for e in item["entities"]}
        return {
            "entities": [entity_prediction(e) for e in item["entities"]],
            "relations": [
                {
                    "type": r["type"],
                    "head": _arg(by_id[r["head"]]),
                    "tail": _arg(by_id[r["tail"]]),
                    "confidence": r.get("confidence"),
                }
                for r in item["relations"]
            ],
        }

    def empty_prediction(self) -> dict[str, Any]:
        return {"entities": [], "relations": []}

    def score(self, task: Task, golds: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> dict[str, Any]:
        gold_entities = [g["entities"] for g in golds]
        predicted_entities = [p.get("entities", []) for p in predictions]
        ner = ner_scores(gold_entities, predicted_entities)
        scores = relation_scores([g["relations"] for g in golds], [p.get("relations", []) for p in predictions])
        result = {
            "n": len(golds),
            "relations": scores,
            "entities": {"strict": ner.strict.to_dict(), "lenient": ner.lenient.to_dict()},
            "calibration": calibration(_relation_pairs(golds, predictions)),
            "entity_calibration": calibration(entity_calibration_pairs(gold_entities, predicted_entities)),
        }
        if task.coding:
            result["linking"] = linking_scores(task, gold_entities, predicted_entities)
        return result

    def synthesize(self, task: Task, world: NoteWorld, n: int, seed: int) -> list[dict[str, Any]]:
        """Medication notes with the entities and relations the generator wrote, kept to the
        task's labels and relation types."""
        rng = random.Random(seed)
        allowed = {spec.name: spec for spec in task.manifest.relation_types}
        labels = set(task.label_names)
        rows: list[dict[str, Any]] = []
        for i in range(n):
            note = world.compose_relations(rng)
            entities = [
                {"id": f"e{j}", "start": s.start, "end": s.end, "text": s.text, "label": s.label}
                | {"attributes": {name: name in s.flags for name in task.attribute_names}}
                for j, s in enumerate(note.spans, start=1)
                if s.label in labels
            ]
            ids = {e["id"] for e in entities}
            relations = [
                {"type": kind, "head": f"e{head + 1}", "tail": f"e{tail + 1}"}
                for kind, head, tail in note.relations
                if kind in allowed and f"e{head + 1}" in ids and f"e{tail + 1}" in ids
            ]
            rows.append(
                {"id": f"{world.language}-re-{i:06d}", "text": note.text, "entities": entities, "relations": relations}
            )
        return rows


def _unfit(spec: RelationTypeSpec, placed: list[Span | None], head_at: int, tail_at: int) -> str | None:
    """Why a relation the model wrote cannot be returned, or None."""
    if head_at >= len(placed) or tail_at >= len(placed):
        return "relation_argument_missing"
    head, tail = placed[head_at], placed[tail_at]
    if head is None or tail is None:
        return "relation_argument_dropped"
    if head_at == tail_at:
        return "relation_self"
    if head.label not in spec.head or tail.label not in spec.tail:
        return "relation_labels"
    return None


def _whole(span: Span, cut_from: Mapping[SpanKey, Span], kept: Mapping[SpanKey, Span]) -> Span | None:
    """The merged entity a chunk's entity became: itself, or the whole entity it is a copy of
    cut off at its chunk's edge; None if that was left out (under min_confidence). An entity
    inside another is never handed its relations: only a cut-off copy is."""
    whole = cut_from.get(_span_key(span))
    return kept.get(_span_key(whole if whole is not None else span))


def _arg(entity: Mapping[str, Any]) -> dict[str, Any]:
    return {"start": entity["start"], "end": entity["end"], "label": entity["label"]}


# -- metrics ---------------------------------------------------------------------------

RelationKey = tuple[str, SpanKey, SpanKey]


def _relation_key(relation: Mapping[str, Any]) -> RelationKey:
    return str(relation["type"]), key(relation["head"]), key(relation["tail"])


def _lenient_match(gold: RelationKey, pred: RelationKey) -> bool:
    (g_type, g_head, g_tail), (p_type, p_head, p_tail) = gold, pred
    return (
        g_type == p_type
        and g_head[2] == p_head[2]
        and g_tail[2] == p_tail[2]
        and overlaps(g_head[:2], p_head[:2])
        and overlaps(g_tail[:2], p_tail[:2])
    )


def relation_scores(
    gold: Sequence[Sequence[Mapping[str, Any]]], pred: Sequence[Sequence[Mapping[str, Any]]]
) -> dict[str, Any]:
    """Micro P/R/F1 of relations. Strict: the type and both arguments' spans and labels equal.
    Lenient: the type and both labels equal and each argument's span overlaps the gold one,
    matched one to one (greedily, predictions in document order). Duplicates count once."""
    strict: dict[str, Counter[str]] = defaultdict(Counter)
    lenient: dict[str, Counter[str]] = defaultdict(Counter)
    for gold_doc, pred_doc in zip(gold, pred, strict=True):
        g, p = {_relation_key(r) for r in gold_doc}, {_relation_key(r) for r in pred_doc}
        for kind in {k[0] for k in g | p}:
            gk, pk = {r for r in g if r[0] == kind}, {r for r in p if r[0] == kind}
            exact = len(gk & pk)
            strict[kind].update(tp=exact, fp=len(pk) - exact, fn=len(gk) - exact)
            free, matched = sorted(gk), 0
            for candidate in sorted(pk):
                hit = next((i for i, r in enumerate(free) if _lenient_match(r, candidate)), None)
                if hit is not None:
                    del free[hit]
                    matched += 1
            lenient[kind].update(tp=matched, fp=len(pk) - matched, fn=len(gk) - matched)
    strict_micro, per_type = totals(strict)
    lenient_micro, _ = totals(lenient)
    return {
        "strict": strict_micro.to_dict(),
        "lenient": lenient_micro.to_dict(),
        "per_type_strict_f1": {kind: round(prf.f1, 4) for kind, prf in per_type.items()},
    }


def _relation_pairs(golds: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> list[tuple[float, bool]]:
    """Each returned relation's confidence against whether it is right (a strict match)."""
    pairs: list[tuple[float, bool]] = []
    for gold, prediction in zip(golds, predictions, strict=True):
        right = {_relation_key(r) for r in gold["relations"]}
        pairs += [
            (r["confidence"], _relation_key(r) in right)
            for r in prediction.get("relations", [])
            if r.get("confidence") is not None
        ]
    return pairs
