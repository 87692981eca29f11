"""Named-entity recognition: entities with exact offsets, a label and assertion attributes.

What the model writes (the task's schema, admitted by its grammar, taught by training) is
token-lean: `{"entities": [[text, label, attribute, ...], ...]}` in order of appearance,
naming only the attributes that hold, in the manifest's order; about 11 tokens an entity
with Qwen3's tokenizer where objects with every attribute as a boolean cost 36. The API
answers each entity with offsets, its text, label and every attribute as true or false.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, Field

from app.tasks.chunking import Chunk, merge_spans, shift
from app.tasks.gold import check_span, is_int, list_field, max_length, string_field
from app.tasks.grounding import Span, ground_spans, piece_boundaries
from app.tasks.protocol import DocumentsRequest, ModelInfo, OffsetUnit
from app.tasks.schema import GROUNDED, enum_values, flag_tail
from app.tasks.scoring import PRF, calibration, check_parallel, rounded
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

# Synthetic NER notes lean toward the discharge and emergency notes the NER tasks describe.
_NOTE_WEIGHTS = {"DISCHARGE_SUMMARY": 3, "EMERGENCY_NOTE": 3, "OUTPATIENT_VISIT": 2}


class NerRequest(DocumentsRequest):
    task: str = Field(examples=["ner-it-clinical"])


class EntityOut(BaseModel):
    start: int
    end: int
    text: str
    label: str
    attributes: dict[str, Any] = Field(default_factory=dict)
    confidence: float | None = Field(
        None, ge=0.0, le=1.0, description="The model's probability for this entity (text, label and attributes)."
    )


class NerDocumentOut(BaseModel):
    id: str
    entities: list[EntityOut]
    entity_limit_reached: bool = Field(
        False,
        description="A chunk of this document returned the task's maximum number of entities: "
        "the list may be incomplete (use smaller chunks or a larger maxItems for such notes).",
    )


class NerResponse(BaseModel):
    task: str
    model: ModelInfo
    offset_unit: OffsetUnit = "unicode_code_point"
    documents: list[NerDocumentOut]


@dataclass
class NerResult:
    entities: list[Span]
    # Some chunk returned the schema's maxItems entities: there may be more than were listed.
    limit_reached: bool = False


def _entity_schema(schema: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = schema.get("properties", {}).get("entities", {}).get("items", {})
    return item


@register
class NerType(TaskType[NerResult]):
    name = "ner"
    endpoint = "ner"
    summary = "Named entities with exact character offsets, labels and assertion attributes."
    request_model = NerRequest
    response_model = NerResponse
    headline = ("strict.f1", "lenient.f1")

    # -- manifest ------------------------------------------------------------------------
    def check(self, task: Task) -> str | None:
        item = _entity_schema(task.schema)
        prefix = item.get("prefixItems")
        if item.get("type") != "array" or not isinstance(prefix, list) or len(prefix) != 2:
            return "schema: entities.items must be a tuple array [text, label] followed by attribute names"
        if not prefix[0].get(GROUNDED):
            return f"schema: entities.items.prefixItems[0] (the entity text) must be marked {GROUNDED}"
        if enum_values(prefix[1]) != task.label_names:
            return "labels: must equal the schema's label enum (entities.items.prefixItems[1])"
        attributes = flag_tail(item) if "items" in item else []
        if attributes is None or attributes != task.attribute_names:
            return "attributes: must equal the schema's attribute enum (entities.items.items)"
        if not task.label_names:
            return "labels: at least one label is required"
        return None

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
        entities = answer.output.get("entities", [])
        names = task.attribute_names
        candidates = [(str(e[0]), str(e[1]), {n: n in e[2:] for n in names}) for e in entities]
        # Per token: on 50 held-out notes the joint probability of an entity's ~10 tokens was
        # far under how often it was right (ECE 0.44-0.47), their geometric mean close (0.04-0.05).
        confidences = [answer.confidence("entities", i, per_token=True) for i in range(len(entities))]
        grounded = ground_spans(chunk.text, candidates, confidences)
        tally.dropped.update(grounded.dropped)
        limit = int(task.schema["properties"]["entities"]["maxItems"])
        return NerResult([shift(s, chunk.start) for s in grounded.spans], len(entities) >= limit)

    def merge(self, task: Task, item: TaskInput, parts: list[NerResult], tally: Tally) -> NerResult:
        entities = keep_confident(merge_spans([part.entities for part in parts]), item.min_confidence, tally)
        limit_reached = any(part.limit_reached for part in parts)
        tally.returned = (tally.returned or 0) + len(entities)
        tally.limit_reached = tally.limit_reached or limit_reached
        return NerResult(entities, limit_reached)

    def respond(self, task: Task, model: ModelInfo, items: list[TaskInput], results: list[NerResult]) -> NerResponse:
        return NerResponse(
            task=task.name,
            model=model,
            documents=[
                NerDocumentOut(
                    id=item.id,
                    entities=[
                        EntityOut(
                            start=s.start,
                            end=s.end,
                            text=s.text,
                            label=s.label,
                            attributes=s.attributes,
                            confidence=s.confidence,
                        )
                        for s in result.entities
                    ],
                    entity_limit_reached=result.limit_reached,
                )
                for item, result in zip(items, results, strict=True)
            ],
        )

    # -- data ----------------------------------------------------------------------------
    def parse_gold(self, task: Task, obj: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
        text = string_field(obj, "text")
        entities = list_field(obj, "entities")
        max_chars = max_length(_entity_schema(task.schema)["prefixItems"][0])
        labels, attribute_names = set(task.label_names), task.attribute_names
        bounds = piece_boundaries(text)
        gold: list[dict[str, Any]] = []
        seen: set[tuple[int, int, str]] = set()
        for i, entity in enumerate(entities):
            where = f"entities[{i}]"
            start, end = check_span(
                text, bounds, entity, where, max_chars, {"start", "end", "text", "label", "attributes"}
            )
            label = entity.get("label")
            if label is None:
                raise BadRecord(f"{where}.label: missing")
            if not isinstance(label, str) or label not in labels:
                raise BadRecord(f"{where}.label: unknown label {label!r} (task labels: {task.label_names})")
            raw_attributes = entity.get("attributes", {})
            if not isinstance(raw_attributes, dict):
                raise BadRecord(f"{where}.attributes: must be an object")
            unknown = sorted(set(raw_attributes) - set(attribute_names))
            if unknown:
                raise BadRecord(
                    f"{where}.attributes: unknown attribute(s) {unknown} (task attributes: {attribute_names})"
                )
            for name, value in raw_attributes.items():
                if not isinstance(value, bool):
                    raise BadRecord(f"{where}.attributes.{name}: must be true or false")
            if (start, end, label) in seen:
                raise BadRecord(f"{where}: duplicate entity [{start}, {end}) {label}")
            seen.add((start, end, label))
            attributes = {name: bool(raw_attributes.get(name, False)) for name in attribute_names}
            gold.append({"start": start, "end": end, "text": text[start:end], "label": label, "attributes": attributes})
        gold.sort(key=lambda e: (e["start"], e["end"], task.label_names.index(e["label"])))
        return {"text": text}, {"entities": gold}

    def targets(self, task: Task, gold: dict[str, Any], chunk: Chunk) -> list[dict[str, Any]]:
        """The entities lying fully inside the chunk, in start order, capped at the schema's maxItems."""
        limit = int(task.schema["properties"]["entities"]["maxItems"])
        inside = [e for e in gold["entities"] if chunk.start <= e["start"] and e["end"] <= chunk.end]
        names = task.attribute_names
        entities = [[e["text"], e["label"], *(n for n in names if e["attributes"].get(n))] for e in inside[:limit]]
        return [{"entities": entities}]

    def prediction(self, item: dict[str, Any]) -> dict[str, Any]:
        keys = ("start", "end", "text", "label", "attributes", "confidence")
        return {"entities": [{k: e.get(k) for k in keys} for e in item["entities"]]}

    def empty_prediction(self) -> dict[str, Any]:
        return {"entities": []}

    def score(self, task: Task, golds: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> dict[str, Any]:
        ner = ner_scores([g["entities"] for g in golds], [p.get("entities", []) for p in predictions])
        # Each returned entity's confidence against whether it is right (a strict match).
        pairs: list[tuple[float, bool]] = []
        for gold, prediction in zip(golds, predictions, strict=True):
            right = {(g["start"], g["end"], g["label"]) for g in gold["entities"]}
            pairs += [
                (e["confidence"], (e["start"], e["end"], e["label"]) in right)
                for e in prediction.get("entities", [])
                if e.get("confidence") is not None
            ]
        return {
            "n": len(golds),
            "strict": ner.strict.to_dict(),
            "lenient": ner.lenient.to_dict(),
            "per_label_strict_f1": {label: round(prf.f1, 4) for label, prf in ner.per_label_strict.items()},
            "calibration": calibration(pairs),
        }

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
                for s in note.spans
            ]
            rows.append({"id": f"{world.language}-ner-{i:06d}", "text": note.text, "entities": entities})
        return rows


# -- metrics ---------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class _Span:
    start: int
    end: int
    label: str


@dataclass(frozen=True)
class NerScores:
    strict: PRF
    lenient: PRF
    per_label_strict: dict[str, PRF]
    per_label_lenient: dict[str, PRF]

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = rounded(asdict(self))
        return result


def _entity_span(entity: Mapping[str, object]) -> _Span:
    start, end, label = entity.get("start"), entity.get("end"), entity.get("label")
    if not is_int(start) or not is_int(end):
        raise ValueError(f"entity offsets must be ints: {dict(entity)!r}")
    if not isinstance(label, str):
        raise ValueError(f"entity label must be a string: {dict(entity)!r}")
    if start < 0 or end < start:
        raise ValueError(f"entity offsets must satisfy 0 <= start <= end: {dict(entity)!r}")
    return _Span(start, end, label)


def _by_label(entities: Iterable[Mapping[str, object]]) -> dict[str, set[_Span]]:
    # A set per label: the same (start, end, label) emitted twice is one mention, so it can be
    # neither a second TP nor an FP; gold is deduped the same way so both sides count alike.
    grouped: dict[str, set[_Span]] = defaultdict(set)
    for entity in entities:
        span = _entity_span(entity)
        grouped[span.label].add(span)
    return grouped


def _overlap_matches(gold: set[_Span], pred: set[_Span]) -> int:
    # One-to-one matching, so two preds over one gold give 1 TP + 1 FP. Greedy: preds in order of
    # end offset, each taking the unmatched overlapping gold that ends first. For intervals this
    # greedy is a maximum matching (exchange argument: any later pred that could use the gold we
    # took can use whichever later-ending gold the optimum gave us instead), so the count does not
    # depend on the order entities were listed in.
    free = sorted(gold, key=lambda s: (s.end, s.start))
    matched = 0
    for p in sorted(pred, key=lambda s: (s.end, s.start)):
        for i, g in enumerate(free):
            if p.start < g.end and g.start < p.end:
                del free[i]
                matched += 1
                break
    return matched


def ner_scores(
    gold: Sequence[Sequence[Mapping[str, object]]],
    pred: Sequence[Sequence[Mapping[str, object]]],
) -> NerScores:
    """Micro-averaged strict (exact start, end, label) and lenient (same label, ranges overlap) scores.

    Exact duplicates (same start, end, label in one document) are collapsed on both sides first.
    Lenient matching is one-to-one (see ``_overlap_matches``). Per-label dicts hold every label seen
    in gold or pred; the micro scores are the per-label counts summed.
    """
    check_parallel(gold, pred)
    strict: dict[str, Counter[str]] = defaultdict(Counter)
    lenient: dict[str, Counter[str]] = defaultdict(Counter)
    for gold_doc, pred_doc in zip(gold, pred, strict=True):
        gold_by_label, pred_by_label = _by_label(gold_doc), _by_label(pred_doc)
        for label in gold_by_label.keys() | pred_by_label.keys():
            g, p = gold_by_label.get(label, set()), pred_by_label.get(label, set())
            exact = len(g & p)
            strict[label].update(tp=exact, fp=len(p) - exact, fn=len(g) - exact)
            overlapping = _overlap_matches(g, p)
            lenient[label].update(tp=overlapping, fp=len(p) - overlapping, fn=len(g) - overlapping)

    def totals(counts: dict[str, Counter[str]]) -> tuple[PRF, dict[str, PRF]]:
        per_label = {label: PRF.from_counts(c["tp"], c["fp"], c["fn"]) for label, c in sorted(counts.items())}
        micro = PRF.from_counts(*(sum(c[key] for c in counts.values()) for key in ("tp", "fp", "fn")))
        return micro, per_label

    strict_micro, strict_per_label = totals(strict)
    lenient_micro, lenient_per_label = totals(lenient)
    return NerScores(strict_micro, lenient_micro, strict_per_label, lenient_per_label)
