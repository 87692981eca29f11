"""Entities as the span-extracting task types share them (NER, relations): the model-facing
tuple format, reading and grounding an answer's entities, gold entities, and their metrics.

The model writes an entity as `[text, label, attribute, ...]`, naming only the attributes
that hold, in the manifest's order (about 11 tokens an entity with Qwen3's tokenizer, where
objects with every attribute as a boolean cost 36). The API answers each entity with
offsets, its text, label and every attribute as true or false.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, Field

from app.tasks.chunking import Chunk, shift
from app.tasks.gold import check_span, is_int, max_length
from app.tasks.grounding import Span, ground_spans, piece_boundaries, sorted_spans
from app.tasks.schema import GROUNDED, enum_values, flag_tail
from app.tasks.scoring import PRF, check_parallel, rounded
from app.tasks.types.base import Answer, BadRecord, Tally, Task


class CodeOut(BaseModel):
    """A terminology code for an entity (a FHIR Coding: system, code, display)."""

    system: str = Field(description="The code system's URI (http://hl7.org/fhir/sid/icd-10-cm, ...).")
    code: str
    display: str
    confidence: float | None = Field(
        None, ge=0.0, le=1.0, description="The model's probability for this code among the candidates."
    )


class EntityOut(BaseModel):
    start: int
    end: int
    text: str
    label: str
    attributes: dict[str, Any] = Field(default_factory=dict)
    confidence: float | None = Field(
        None, ge=0.0, le=1.0, description="The model's probability for this entity (text, label and attributes)."
    )
    codes: list[CodeOut] = Field(
        default_factory=list,
        description="Terminology codes of the entity (at most one per terminology); empty when its label has no "
        "terminology, the matcher found no candidate, or the model chose none of them.",
    )

    @classmethod
    def of(cls, span: Span) -> EntityOut:
        return cls(
            start=span.start,
            end=span.end,
            text=span.text,
            label=span.label,
            attributes=span.attributes,
            confidence=span.confidence,
            codes=[
                CodeOut(system=c.system, code=c.code, display=c.display, confidence=c.confidence) for c in span.codes
            ],
        )


def entity_list_schema(schema: dict[str, Any]) -> dict[str, Any]:
    node: dict[str, Any] = schema.get("properties", {}).get("entities", {})
    return node


def entity_schema(schema: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = entity_list_schema(schema).get("items", {})
    return item


def entity_limit(task: Task) -> int:
    return int(entity_list_schema(task.schema)["maxItems"])


def check_entities(task: Task) -> str | None:
    """Why the schema's `entities` do not fit the manifest's labels and attributes, or None."""
    item = entity_schema(task.schema)
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


def read_entities(task: Task, chunk: Chunk, answer: Answer, tally: Tally) -> list[Span | None]:
    """The answer's entities grounded in the chunk, with whole-note offsets: one per entity
    written, in the answer's order, None where it could not be grounded (counted in `tally`)."""
    entities = answer.output.get("entities", [])
    names = task.attribute_names
    candidates = [(str(e[0]), str(e[1]), {n: n in e[2:] for n in names}) for e in entities]
    # Per token: on 50 held-out notes the joint probability of an entity's ~10 tokens was
    # far under how often it was right (ECE 0.44-0.47), their geometric mean close (0.04-0.05).
    confidences = [answer.confidence("entities", i, per_token=True) for i in range(len(entities))]
    # Written in order of appearance (the prompt asks it, training teaches it): placed so.
    grounded = ground_spans(chunk.text, candidates, confidences, in_order=True)
    tally.dropped.update(grounded.dropped)
    return [None if s is None else shift(s, chunk.start) for s in grounded.placed]


def parse_gold_entities(
    task: Task, text: str, entities: list[Any], extra_fields: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """Checked gold entities in document order (BadRecord naming the first problem); each
    keeps the `extra_fields` it has (a relation task's entity ids)."""
    max_chars = max_length(entity_schema(task.schema)["prefixItems"][0])
    labels, attribute_names = set(task.label_names), task.attribute_names
    bounds = piece_boundaries(text)
    allowed = {"start", "end", "text", "label", "attributes", "codes"} | extra_fields
    gold: list[dict[str, Any]] = []
    seen: set[tuple[int, int, str]] = set()
    for i, entity in enumerate(entities):
        where = f"entities[{i}]"
        start, end = check_span(text, bounds, entity, where, max_chars, allowed)
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
            raise BadRecord(f"{where}.attributes: unknown attribute(s) {unknown} (task attributes: {attribute_names})")
        for name, value in raw_attributes.items():
            if not isinstance(value, bool):
                raise BadRecord(f"{where}.attributes.{name}: must be true or false")
        if (start, end, label) in seen:
            raise BadRecord(f"{where}: duplicate entity [{start}, {end}) {label}")
        seen.add((start, end, label))
        attributes = {name: bool(raw_attributes.get(name, False)) for name in attribute_names}
        row = {"start": start, "end": end, "text": text[start:end], "label": label, "attributes": attributes}
        if "codes" in entity:
            row["codes"] = _gold_codes(task, label, entity["codes"], f"{where}.codes")
        gold.append(row | {k: entity[k] for k in extra_fields if k in entity})
    gold.sort(key=lambda e: (e["start"], e["end"], task.label_names.index(e["label"])))
    return gold


def _gold_codes(task: Task, label: str, codes: Any, where: str) -> list[dict[str, str]]:
    """An entity's gold codes as {system, code} (display and confidence, if given, ignored);
    an empty list says the entity has no code in its terminology."""
    if not isinstance(codes, list):
        raise BadRecord(f"{where}: must be a list")
    coding = task.coding.get(label)
    known = coding.terminology.codes() if coding else None
    checked: list[dict[str, str]] = []
    for j, code in enumerate(codes):
        if not isinstance(code, dict) or not all(isinstance(code.get(k), str) for k in ("system", "code")):
            raise BadRecord(f"{where}[{j}]: must be an object with string system and code")
        if known is not None and (code["system"], code["code"]) not in known:
            raise BadRecord(f"{where}[{j}].code: {code['code']!r} of {code['system']} is not in the terminology")
        checked.append({"system": code["system"], "code": code["code"]})
    return checked


def entities_inside(task: Task, gold: list[dict[str, Any]], chunk: Chunk) -> list[dict[str, Any]]:
    """The gold entities lying fully inside the chunk, in start order, capped at the schema's maxItems."""
    inside = [e for e in gold if chunk.start <= e["start"] and e["end"] <= chunk.end]
    return inside[: entity_limit(task)]


def entity_target(task: Task, entity: Mapping[str, Any]) -> list[Any]:
    """One gold entity as the model writes it."""
    names = task.attribute_names
    return [entity["text"], entity["label"], *(n for n in names if entity["attributes"].get(n))]


def settle_spans(spans: Iterable[Span], tally: Tally) -> list[Span]:
    """Spans moved back from a note's NFC form (normalization.py), in document order again: one
    that kept nothing is dropped (`normalization`), and two that became the same span (their
    ends fell in one run of marks NFC reordered) are one, with the higher confidence."""
    kept: dict[tuple[int, int, str], Span] = {}
    for span in spans:
        if span.start == span.end:
            tally.dropped["normalization"] += 1
            continue
        key = (span.start, span.end, span.label)
        if key not in kept or (span.confidence or 0.0) > (kept[key].confidence or 0.0):
            kept[key] = span
    return sorted_spans(kept.values())


def gold_entity(entity: Mapping[str, Any], extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """A response entity as a gold record's (what parse_gold_entities reads). Its codes are
    kept when it has some: an empty list may be an abstention, not a judgement that none fits."""
    gold = {k: entity[k] for k in (*extra, "start", "end", "text", "label", "attributes") if k in entity}
    if entity.get("codes"):
        gold["codes"] = [{"system": c["system"], "code": c["code"]} for c in entity["codes"]]
    return gold


def entity_prediction(entity: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("start", "end", "text", "label", "attributes", "confidence")
    return {k: entity.get(k) for k in keys} | {"codes": list(entity.get("codes", []))}


def key(entity: Mapping[str, Any]) -> tuple[int, int, str]:
    return int(entity["start"]), int(entity["end"]), str(entity["label"])


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


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


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
            if overlaps((p.start, p.end), (g.start, g.end)):
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

    strict_micro, strict_per_label = totals(strict)
    lenient_micro, lenient_per_label = totals(lenient)
    return NerScores(strict_micro, lenient_micro, strict_per_label, lenient_per_label)


def totals(counts: Mapping[str, Counter[str]]) -> tuple[PRF, dict[str, PRF]]:
    """Micro P/R/F1 over per-class tp/fp/fn counts, and each class's own."""
    per_label = {label: PRF.from_counts(c["tp"], c["fp"], c["fn"]) for label, c in sorted(counts.items())}
    micro = PRF.from_counts(*(sum(c[k] for c in counts.values()) for k in ("tp", "fp", "fn")))
    return micro, per_label


def linking_scores(
    task: Task, golds: Sequence[Sequence[Mapping[str, Any]]], predictions: Sequence[Sequence[Mapping[str, Any]]]
) -> dict[str, Any]:
    """Entity linking against gold entities that carry `codes` (of a label with a terminology).

    Over the gold entities the prediction found exactly (offsets and label) whose gold has a
    code: `accuracy_at_1` (the first code returned is the gold one) and `abstention_rate`
    (no code returned); over those whose gold has none (the concept is not in the file):
    `false_code_rate`. `candidate_recall_at_k`, over every gold entity with a code, found or
    not: the gold code is among the matcher's k candidates for the gold text (k from the
    manifest); it bounds what the model can choose, so it tells matcher from model."""
    found = right = abstained = uncoded = wrongly_coded = with_code = recalled = 0
    for gold, prediction in zip(golds, predictions, strict=True):
        predicted = {key(e): e.get("codes") or [] for e in prediction}
        for entity in gold:
            coding = task.coding.get(entity["label"])
            if coding is None or "codes" not in entity:
                continue
            gold_codes = {(c["system"], c["code"]) for c in entity["codes"]}
            if gold_codes:
                with_code += 1
                candidates = coding.terminology.candidates(
                    entity["text"], task.manifest.languages, coding.candidates, coding.min_score
                )
                recalled += any((c.concept.system, c.concept.code) in gold_codes for c in candidates)
            codes = predicted.get(key(entity))
            if codes is None:
                continue
            if not gold_codes:
                uncoded += 1
                wrongly_coded += bool(codes)
                continue
            found += 1
            abstained += not codes
            right += bool(codes) and (codes[0]["system"], codes[0]["code"]) in gold_codes

    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 4) if b else None

    return {
        "n_found": found,
        "accuracy_at_1": ratio(right, found),
        "abstention_rate": ratio(abstained, found),
        "n_found_uncoded": uncoded,
        "false_code_rate": ratio(wrongly_coded, uncoded),
        "n_gold_coded": with_code,
        "candidate_recall_at_k": ratio(recalled, with_code),
    }


def entity_calibration_pairs(
    golds: Sequence[Sequence[Mapping[str, Any]]], predictions: Sequence[Sequence[Mapping[str, Any]]]
) -> list[tuple[float, bool]]:
    """Each returned entity's confidence against whether it is right (a strict match)."""
    pairs: list[tuple[float, bool]] = []
    for gold, prediction in zip(golds, predictions, strict=True):
        right = {key(g) for g in gold}
        pairs += [(e["confidence"], key(e) in right) for e in prediction if e.get("confidence") is not None]
    return pairs
