"""De-identification: PHI spans (names, dates, ages over 89, addresses, contacts, codice
fiscale, tessera sanitaria and other identifiers), and the note with each one masked or
replaced by a consistent surrogate.

It is span extraction with PHI labels, so it is NER's machinery (the model writes
`{"entities": [[text, label], ...]}`, grounded like any entity) joined with deterministic
detectors for what has a checksum or a fixed shape (app/tasks/phi_detectors.py). The join
is a union: every detector span is kept; a model span that overlaps one keeps only its parts
outside it (the rule's offsets and label win where both saw the same identifier, and
nothing the model saw around it goes unmasked). The text is rewritten by
app/tasks/surrogates.py.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.tasks.entities import check_entities, entity_calibration_pairs, ner_scores, parse_gold_entities
from app.tasks.gold import list_field, string_field
from app.tasks.grounding import Span
from app.tasks.phi_detectors import DETECTOR_LABELS, FIXED_SHAPE_LABELS, detect_phi, resolve_overlaps
from app.tasks.protocol import DocumentsRequest, ModelInfo, SpansResponse
from app.tasks.scoring import PRF, calibration
from app.tasks.surrogates import deidentify
from app.tasks.types.base import NoteWorld, Tally, Task, TaskInput, keep_confident, register
from app.tasks.types.ner import NerResult, NerType

# The shipped task: a request may leave `task` out.
DEFAULT_TASK = "deid-clinical"


class DeidRequest(DocumentsRequest):
    task: str = Field(DEFAULT_TASK, examples=[DEFAULT_TASK], description="Optional: the shipped deid task by default.")
    replace: Literal["mask", "surrogate"] = Field(
        "mask",
        description='How `deidentified` replaces each span: "mask" writes its label ([NAME]); "surrogate" an '
        "invented value of the same kind, the same one for the same original within a note.",
    )
    return_mapping: bool = Field(
        False, description="Return `mapping`: where each replacement stands in `deidentified` and what it replaced."
    )


class PhiSpanOut(BaseModel):
    start: int
    end: int
    text: str
    label: str
    confidence: float | None = Field(None, ge=0.0, le=1.0)


class MappingOut(BaseModel):
    start: int = Field(description="Offset of the replacement in `deidentified`.")
    end: int
    text: str = Field(description="The replacement (a mask or a surrogate).")
    original: str
    label: str


class DeidDocumentOut(BaseModel):
    id: str
    spans: list[PhiSpanOut]
    deidentified: str
    mapping: list[MappingOut] | None = Field(None, description="Only when the request set return_mapping.")
    span_limit_reached: bool = Field(
        False,
        description="A chunk returned the schema's maximum number of model spans: the model may have missed more.",
    )


class DeidResponse(SpansResponse):
    replace: Literal["mask", "surrogate"]
    documents: list[DeidDocumentOut]


@dataclass(frozen=True)
class DeidInput(TaskInput):
    replace: Literal["mask", "surrogate"] = "mask"
    return_mapping: bool = False


def join_spans(source: str, detected: list[Span], model: list[Span], tally: Tally) -> list[Span]:
    """Detector spans, and what the model found outside them (see the module's docstring)."""
    pieces: list[Span] = []
    for span in model:
        cuts = sorted((d.start, d.end) for d in detected if d.start < span.end and span.start < d.end)
        if not cuts:
            pieces.append(span)
            continue
        tally.dropped["overlaps_detector"] += 1
        edges = [span.start, *(x for cut in cuts for x in cut), span.end]
        for start, end in zip(edges[::2], edges[1::2], strict=True):
            start, end = max(start, span.start), min(end, span.end)
            while start < end and not source[start].isalnum():
                start += 1
            while end > start and not source[end - 1].isalnum():
                end -= 1
            if start < end:
                pieces.append(Span(start, end, source[start:end], span.label, confidence=span.confidence))
    # Model spans may overlap each other (an address and the town inside it): the longer wins.
    ranked = [(0, d) for d in detected] + [(1, p) for p in pieces]
    chosen = resolve_overlaps([s for _, s in ranked], lambda s: (s not in detected, -(s.end - s.start), s.start))
    return chosen


def propagate_names(source: str, spans: list[Span]) -> list[Span]:
    """Every other whole-word occurrence of a name found once, and of each of its capitalised
    words ("Rossi" again after "Mario Rossi"): a name is PHI wherever the note repeats it, and
    the model, writing each name once, or grounding places a repeat inside the first mention."""
    names = {s.text for s in spans if s.label == "NAME"}
    names |= {w for name in names for w in re.findall(r"\w{3,}", name) if w[0].isupper()}
    extra = []
    for name in sorted(names, key=len, reverse=True):
        confidence = max((s.confidence or 0.0 for s in spans if s.label == "NAME" and name in s.text), default=0.0)
        for match in re.finditer(rf"(?<!\w){re.escape(name)}(?!\w)", source):
            extra.append(Span(match.start(), match.end(), name, "NAME", confidence=confidence or None))
    return extra


@register
class DeidType(NerType):
    name = "deid"
    endpoint = "deid"
    summary = "PHI spans and the note with each masked or replaced by a consistent surrogate."
    request_model = DeidRequest
    response_model = DeidResponse
    headline = ("strict.recall", "lenient.recall", "fixed_shape_recall")
    # PHI is neither coded nor exported as clinical resources: NER's terminologies and fhir are refused.
    manifest_sections = frozenset()

    def check(self, task: Task) -> str | None:
        missing = sorted(DETECTOR_LABELS - set(task.label_names))
        if missing:
            return f"labels: a deid task must declare every detector label (missing {missing})"
        return check_entities(task)

    def format_lines(self, task: Task, part: str = "") -> list[str]:
        lines = super().format_lines(task, part)
        return [*lines[:-1], 'Answer with one JSON object only: {"entities": [[text, label], ...]}.']

    def inputs(self, body: Any) -> list[TaskInput]:
        assert isinstance(body, DeidRequest)
        return [
            DeidInput(d.id, {"text": d.text}, "text", body.min_confidence, body.replace, body.return_mapping)
            for d in body.documents
        ]

    def merge(self, task: Task, item: TaskInput, parts: list[NerResult], tally: Tally) -> NerResult:
        found = super().merge(task, item, parts, tally)
        detected = keep_confident(detect_phi(item.source), item.min_confidence, tally)
        model = found.entities + propagate_names(item.source, found.entities)
        joined = join_spans(item.source, detected, model, tally)
        tally.returned = (tally.returned or 0) - len(found.entities) + len(joined)
        return NerResult(joined, found.limit_reached)

    def blank(self, task: Task, item: TaskInput) -> NerResult | None:
        return NerResult([]) if not item.source.strip() else None

    def respond(self, task: Task, model: ModelInfo, items: list[TaskInput], results: list[NerResult]) -> DeidResponse:
        documents = []
        replace: Literal["mask", "surrogate"] = "mask"
        for item, result in zip(items, results, strict=True):
            # An item read by another path (evaluation, review) is answered with the defaults.
            options = item if isinstance(item, DeidInput) else DeidInput(item.id, item.payload, item.source_field)
            replace = options.replace
            text, replacements = deidentify(item.source, result.entities, replace)
            mapping = (
                [
                    MappingOut(start=r.start, end=r.end, text=r.text, original=r.original, label=r.label)
                    for r in replacements
                ]
                if options.return_mapping
                else None
            )
            documents.append(
                DeidDocumentOut(
                    id=item.id,
                    spans=[
                        PhiSpanOut(start=s.start, end=s.end, text=s.text, label=s.label, confidence=s.confidence)
                        for s in result.entities
                    ],
                    deidentified=text,
                    mapping=mapping,
                    span_limit_reached=result.limit_reached,
                )
            )
        return DeidResponse(task=task.name, model=model, replace=replace, documents=documents)

    # -- data: gold records say `spans`, as the response does ---------------------------
    def parse_gold(self, task: Task, obj: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
        text = string_field(obj, "text")
        return {"text": text}, {"entities": parse_gold_entities(task, text, list_field(obj, "spans"))}

    def prediction(self, item: dict[str, Any]) -> dict[str, Any]:
        keys = ("start", "end", "text", "label", "confidence")
        return {"entities": [{k: s.get(k) for k in keys} for s in item["spans"]]}

    def gold_fields(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"spans": [{k: s[k] for k in ("start", "end", "text", "label")} for s in item["spans"]]}

    def score(self, task: Task, golds: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> dict[str, Any]:
        """NER's scores, plus what de-identification is judged by: recall per label (a PHI
        span missed is PHI left in the note) and over the fixed-shape identifiers."""
        gold_entities = [g["entities"] for g in golds]
        predicted = [p.get("entities", []) for p in predictions]
        scores = ner_scores(gold_entities, predicted)
        fixed = [scores.per_label_lenient[label] for label in FIXED_SHAPE_LABELS if label in scores.per_label_lenient]
        tp, fn = sum(p.tp for p in fixed), sum(p.fn for p in fixed)
        return {
            "n": len(golds),
            "strict": scores.strict.to_dict(),
            "lenient": scores.lenient.to_dict(),
            "per_label_lenient_recall": {
                label: round(prf.recall, 4) for label, prf in scores.per_label_lenient.items()
            },
            "per_label_lenient_precision": {
                label: round(prf.precision, 4) for label, prf in scores.per_label_lenient.items()
            },
            "fixed_shape_recall": round(PRF.from_counts(tp, 0, fn).recall, 4),
            "calibration": calibration(entity_calibration_pairs(gold_entities, predicted)),
        }

    def synthesize(self, task: Task, world: NoteWorld, n: int, seed: int) -> list[dict[str, Any]]:
        """Notes with invented PHI planted at known offsets."""
        rng = random.Random(seed)
        rows: list[dict[str, Any]] = []
        for i in range(n):
            note = world.compose_phi(rng)
            spans = [{"start": s.start, "end": s.end, "text": s.text, "label": s.label} for s in note.spans]
            rows.append({"id": f"{world.language}-deid-{i:06d}", "text": note.text, "spans": spans})
        return rows
