"""Case-report forms: every item of a declared form, filled with a bounded value and the words
of the note that state it, or `unknown`.

The manifest declares the items (`items:` with a kind and its bounds); the output schema is
derived from them, so a form is one YAML file. What the model writes is token-lean: an object
with the items the note states, in declared order, each at most once (the grammar admits
nothing else), and nothing for the items it does not state:

    {"spo2": ["SpO2 88%", 88], "chest_xray": ["congestione e versamento", "congestione polmonare",
     "versamento pleurico"], "working_diagnosis": "scompenso cardiaco acuto"}

An item is `[evidence, value]` (a multiple choice: `[evidence, option, ...]`, at least one);
a text item is its own evidence, a verbatim span. The evidence comes first so that the value
is decoded after the words that state it. The API answers every item exactly once: `filled`
with its value, evidence offsets and confidence, or `unknown` with `value: null`.

Big forms are split into item groups, one generation each, sized so that each group's
worst-case answer stays under `generation.max_group_tokens` for text of one byte a
character (max_tokens always uses the chunk's real worst case, and a chunk whose prompt and
worst case do not fit the context is split further). Across chunks of a long note a filled
value beats `unknown`; a value whose evidence (a text item: the value itself) is cut off at
its chunk's edge yields to the one whose evidence another chunk saw whole, without a
conflict; the same value found twice keeps both evidence spans and the higher confidence; a
multiple choice unites its options; different values of one item are a conflict: the most
confident wins (the first in the note when confidences tie or are missing), the item is
flagged `conflict: true` and the others are listed as `alternatives`.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Any, overload

from jsonschema import Draft202012Validator
from pydantic import BaseModel, Field

from app.tasks.agreement import date_agrees, dates_in, number_agrees, stated_numbers
from app.tasks.chunking import Chunk, cut_off, shift
from app.tasks.entities import overlaps
from app.tasks.fhir import FhirNote, form_observations
from app.tasks.gold import check_span, is_int, iso_date, list_field, string_field
from app.tasks.grounding import Span, ground_spans, piece_boundaries
from app.tasks.normalization import NfcText, remap_spans
from app.tasks.protocol import DocumentsRequest, FhirChoice, ModelInfo, SpansResponse
from app.tasks.ranges import canonical_number, format_number, is_number, scaled
from app.tasks.schema import DECIMALS, DEFAULT_YEARS, GROUNDED, YEARS, SpanBytes, worst_case_bytes
from app.tasks.scoring import PRF, calibration, mean
from app.tasks.spec import FormItemSpec, TaskManifest
from app.tasks.types.base import (
    Answer,
    Ask,
    BadRecord,
    NoteWorld,
    Tally,
    Task,
    TaskInput,
    TaskType,
    keep_confident,
    register,
)

EVIDENCE_MAX_CHARS = 120
TEXT_MAX_CHARS = 120
# Groups are sized for text of one byte a character: typical clinical prose (Italian is about
# 1.02), so the same items group together for every note.
_NOMINAL_SOURCE = SpanBytes("x" * 1000)

Value = str | bool | int | float | list[str]


class FormRequest(DocumentsRequest, FhirChoice):
    task: str = Field(examples=["crf-it-dyspnea"])


class EvidenceOut(BaseModel):
    start: int
    end: int
    text: str


_MISMATCH_DOC = (
    "The value is a number or date its evidence does not state (in any notation, through the item's declared "
    "unit conversions): kept with its confidence halved, or (on_evidence_mismatch: unknown) the item is unknown."
)


class AlternativeOut(BaseModel):
    value: Value
    evidence: list[EvidenceOut]
    confidence: float | None = Field(None, ge=0.0, le=1.0)
    evidence_mismatch: bool = Field(False, description=_MISMATCH_DOC)


class FormItemOut(BaseModel):
    name: str
    status: str = Field(description='"filled" or "unknown".', examples=["filled"])
    value: Value | None = Field(
        description="The item's value (null when unknown): an option, a list of options, "
        "true/false, a number, an ISO 8601 date or a verbatim span."
    )
    evidence: list[EvidenceOut] = Field(description="The spans of the note that state the value.")
    confidence: float | None = Field(None, ge=0.0, le=1.0, description="The model's probability for this value.")
    conflict: bool = Field(False, description="Chunks of the note gave different values; see alternatives.")
    alternatives: list[AlternativeOut] = Field(default_factory=list)
    evidence_mismatch: bool = Field(False, description=_MISMATCH_DOC)


class FormDocumentOut(BaseModel):
    id: str
    items: list[FormItemOut]


class FormResponse(SpansResponse):
    documents: list[FormDocumentOut]


@dataclass(frozen=True)
class Filled:
    """One item's value with the span that states it, as one chunk answered it."""

    value: Value
    evidence: tuple[Span, ...]
    confidence: float | None = None
    mismatch: bool = False  # a number or date its evidence does not state


@dataclass
class FormItemResult:
    filled: Filled | None = None
    alternatives: list[Filled] = field(default_factory=list)  # conflicting values, less confident
    mismatch: bool = False  # unknown because the value found disagreed with its evidence


@dataclass
class FormResult:
    items: dict[str, FormItemResult]  # every item of the form, in declared order
    chunk: Chunk | None = None  # where a chunk's answer was found (its edges cut evidence off)


@dataclass(frozen=True)
class _Group:
    part: str
    names: tuple[str, ...]
    schema: dict[str, Any]
    validator: Draft202012Validator


# -- the derived schema ------------------------------------------------------------------


def _evidence() -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": EVIDENCE_MAX_CHARS, GROUNDED: True}


def _whole(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def value_schema(item: FormItemSpec) -> dict[str, Any]:
    """What the model writes for one item (see the module docstring)."""
    about = {"description": item.description} if item.description else {}
    if item.kind == "text":
        return {
            "type": "string",
            "minLength": 1,
            "maxLength": item.max_length or TEXT_MAX_CHARS,
            GROUNDED: True,
        } | about
    if item.kind == "choice" and item.multiple:
        options = list(item.options or [])
        return {
            "type": "array",
            "prefixItems": [_evidence()],
            "items": {"enum": options},
            "minItems": 2,
            "maxItems": 1 + len(options),
        } | about
    value: dict[str, Any]
    if item.kind == "choice":
        value = {"enum": list(item.options or [])}
    elif item.kind == "boolean":
        value = {"type": "boolean"}
    elif item.kind == "integer":
        value = {"type": "integer", "minimum": int(item.min or 0), "maximum": int(item.max or 0)}
    elif item.kind == "decimal":
        value = {"type": "number", "minimum": _whole(item.min or 0), "maximum": _whole(item.max or 0)}
        value[DECIMALS] = item.decimals
    else:  # date
        value = {"type": "string", "format": "date", YEARS: list(item.years or DEFAULT_YEARS)}
    return {"type": "array", "prefixItems": [_evidence(), value], "minItems": 2, "maxItems": 2} | about


def stated_values(item: FormItemSpec, source: str) -> list[Any] | None:
    """The values of a number or date item that `source` states, within the item's bounds, in
    every notation and through its conversions (the grammar variant: `values_stated_in_note`);
    None for other kinds."""
    if item.kind in ("integer", "decimal"):
        low, high = Decimal(str(item.min)), Decimal(str(item.max))
        places = Decimal(1).scaleb(-(item.decimals or 0))
        found = {v.normalize() for v in stated_numbers(source, item.conversions) if low <= v <= high}
        fitting = sorted(v for v in found if v == v.quantize(places, rounding=ROUND_DOWN))
        return [int(v) if v == v.to_integral_value() else float(v) for v in fitting]
    if item.kind == "date":
        first, last = item.years or DEFAULT_YEARS
        return sorted(d.isoformat() for d in dates_in(source) if first <= d.year <= last)
    return None


def form_schema(
    items: Sequence[FormItemSpec], title: str = "", stated: Mapping[str, list[Any]] | None = None
) -> dict[str, Any]:
    """The group's schema; with `stated`, those items' values are limited to the listed ones
    (an item with none is left out: the grammar cannot fill it)."""
    properties = {}
    for item in items:
        schema = value_schema(item)
        if stated is not None and item.name in stated:
            if not stated[item.name]:
                continue
            schema["prefixItems"] = [schema["prefixItems"][0], {"enum": stated[item.name]}]
        properties[item.name] = schema
    return {
        "type": "object",
        "title": title or "Form output (what the model writes)",
        "description": "The items the text states, in declared order, each [evidence, value] (a text item: its span).",
        "properties": properties,
        "required": [],
        "additionalProperties": False,
    }


def _member_bytes(item: FormItemSpec) -> int:
    return len(item.name.encode()) + 4 + worst_case_bytes(value_schema(item), _NOMINAL_SOURCE)


def item_groups(items: Sequence[FormItemSpec], max_group_tokens: int) -> list[list[FormItemSpec]]:
    """Consecutive items in as few groups as keep each group's nominal worst case (bytes,
    which bound tokens) under the budget, balanced so the groups are about the same size;
    an item larger than the budget is a group of its own."""
    sizes = [_member_bytes(item) for item in items]
    fewest = len(_pack(sizes, max_group_tokens))
    # The smallest capacity that still packs into that many groups evens them out.
    lo, hi = max(sizes, default=0), max(max_group_tokens, max(sizes, default=0))
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if len(_pack(sizes, mid)) <= fewest else (mid + 1, hi)
    groups, at = [], 0
    for length in _pack(sizes, lo):
        groups.append(list(items[at : at + length]))
        at += length
    return groups


def _pack(sizes: Sequence[int], capacity: int) -> list[int]:
    """Greedy consecutive packing: the number of items in each group."""
    groups: list[int] = []
    used = 0
    for size in sizes:
        if groups and used + size <= capacity:
            groups[-1] += 1
            used += size
        else:
            groups.append(1)
            used = 2 + size
    return groups


def _kind_line(item: FormItemSpec) -> str:
    if item.kind == "choice":
        options = " | ".join(item.options or [])
        return f"{'one or more' if item.multiple else 'one'} of: {options}"
    if item.kind in ("integer", "decimal"):
        bounds = (
            f"{format_number(item.min or 0, item.decimals or 0)}-{format_number(item.max or 0, item.decimals or 0)}"
        )
        return f"{item.kind} {bounds}" + (f" {item.unit}" if item.unit else "")
    if item.kind == "date":
        return "date YYYY-MM-DD"
    if item.kind == "text":
        return "text copied from the note"
    return "true or false"


# -- the type --------------------------------------------------------------------------


@register
class FormType(TaskType[FormResult]):
    name = "form"
    endpoint = "forms"
    summary = "A case-report form: every item filled with a bounded value and its evidence, or unknown."
    request_model = FormRequest
    response_model = FormResponse
    manifest_sections = frozenset({"items", "on_evidence_mismatch", "values_stated_in_note", "fhir"})
    headline = ("slots.f1", "accuracy")

    def derived_schema(self, manifest: TaskManifest) -> dict[str, Any] | None:
        return form_schema(manifest.items, f"{manifest.name} output (what the model writes)")

    def check(self, task: Task) -> str | None:
        if not task.manifest.items:
            return "items: a form needs at least one item"
        if task.manifest.labels or task.manifest.attributes:
            return "labels: a form has items, not labels or attributes"
        return None

    def grounded_strings(self, output: dict[str, Any]) -> list[str]:
        return [str(value if isinstance(value, str) else value[0]) for value in output.values()]

    def describe(self, task: Task) -> dict[str, Any]:
        return {
            "items": [item.model_dump(exclude_none=True) for item in task.manifest.items],
            "item_groups": len(self._groups(task)),
        }

    def _groups(self, task: Task) -> list[_Group]:
        cached: list[_Group] | None = task.memo.get("groups")
        if cached is None:
            packed = item_groups(task.manifest.items, task.manifest.generation.max_group_tokens)
            cached = []
            for i, group in enumerate(packed, start=1):
                schema = form_schema(group)
                part = "" if len(packed) == 1 else f"{i}/{len(packed)}"
                cached.append(_Group(part, tuple(item.name for item in group), schema, Draft202012Validator(schema)))
            task.memo["groups"] = cached
        return cached

    def _items(self, task: Task) -> dict[str, FormItemSpec]:
        return {item.name: item for item in task.manifest.items}

    # -- prompt --------------------------------------------------------------------------
    def format_lines(self, task: Task, part: str = "") -> list[str]:
        group = next(g for g in self._groups(task) if g.part == part)
        items = self._items(task)
        lines = ["", "Items (answer only those the text states; leave out the others):"]
        for name in group.names:
            item = items[name]
            lines.append(f"- {name} ({_kind_line(item)})" + (f": {item.description}" if item.description else ""))
        return [
            *lines,
            "",
            'Answer with one JSON object only: {"item": ["evidence", value], ...}, in this order; the evidence '
            "is copied exactly from the text; a text item is just its copied text.",
        ]

    def asks(self, task: Task, payload: dict[str, str]) -> list[Ask]:
        source = payload[self.source_field]
        if task.manifest.values_stated_in_note:
            items = self._items(task)
            asks = []
            for g in self._groups(task):
                group = [items[name] for name in g.names]
                stated = {i.name: v for i in group if (v := stated_values(i, source)) is not None}
                schema = form_schema(group, stated=stated)
                asks.append(Ask(payload, schema, Draft202012Validator(schema), source, g.part))
            return asks
        return [Ask(payload, g.schema, g.validator, source, g.part) for g in self._groups(task)]

    def example_output(self, task: Task, output: dict[str, Any], part: str = "") -> dict[str, Any]:
        names = next(g.names for g in self._groups(task) if g.part == part)
        return {name: value for name, value in output.items() if name in names}

    # -- serving -------------------------------------------------------------------------
    def blank(self, task: Task, item: TaskInput) -> FormResult | None:
        if item.source.strip():
            return None
        return FormResult({spec.name: FormItemResult() for spec in task.manifest.items})

    def read(self, task: Task, item: TaskInput, chunk: Chunk, answers: list[Answer], tally: Tally) -> FormResult:
        items = self._items(task)
        result = FormResult({name: FormItemResult() for name in items}, chunk)
        for answer in answers:
            written = {name: _split(items[name], output) for name, output in answer.output.items()}
            # Each item's evidence on its first occurrence (the item's name as its label: one
            # span each), the chunk's piece boundaries computed once for all of them.
            candidates: list[tuple[str, str, dict[str, Any]]] = [(ev, name, {}) for name, (ev, _) in written.items()]
            grounded = ground_spans(chunk.text, candidates)
            tally.dropped.update(grounded.dropped)
            for (name, (_, value)), span in zip(written.items(), grounded.placed, strict=True):
                if span is None:
                    continue
                if items[name].kind == "text":
                    value = span.text
                # Key, evidence and value: writing the key is the decision to fill the item.
                # Their joint probability (ECE 0.12 on the demo; the geometric mean 0.47).
                confidence = answer.confidence(name, with_key=True)
                mismatch = not agrees(items[name], value, span.text)
                if mismatch:
                    tally.mismatched += 1
                    if task.manifest.on_evidence_mismatch == "unknown":
                        result.items[name].mismatch = True
                        continue
                    confidence = None if confidence is None else confidence * MISMATCH_CONFIDENCE_FACTOR
                result.items[name].filled = Filled(value, (shift(span, chunk.start),), confidence, mismatch)
        return result

    def to_original(self, task: Task, result: FormResult, text: NfcText, tally: Tally) -> FormResult:
        # A text item's value is its evidence, a verbatim span: the characters sent, too.
        moved = remap_spans(result, text.remap)
        kinds = {spec.name: spec.kind for spec in task.manifest.items}
        for name, item in moved.items.items():
            # Evidence that kept nothing (normalization.py) goes; a value left without evidence
            # is not returned (an alternative that still has its evidence takes its place).
            mapped = [_mapped(f, tally) for f in (item.filled, *item.alternatives) if f is not None]
            values = [f for f in mapped if f is not None]
            if kinds[name] == "text":
                values = [_verbatim(f) for f in values]
            item.filled, item.alternatives = (values[0], values[1:]) if values else (None, [])
        return moved

    def merge(self, task: Task, item: TaskInput, parts: list[FormResult], tally: Tally) -> FormResult:
        merged: dict[str, FormItemResult] = {}
        for spec in task.manifest.items:
            found = [(p.chunk, f) for p in parts if (f := p.items[spec.name].filled) is not None]
            result = _merge_item(spec, _whole_values(found))
            if result.filled is not None and not keep_confident([result.filled], item.min_confidence, tally):
                result = FormItemResult()
            if result.filled is None:
                result.mismatch = any(p.items[spec.name].mismatch for p in parts)
            merged[spec.name] = result
        tally.returned = (tally.returned or 0) + sum(
            len(r.filled.evidence) for r in merged.values() if r.filled is not None
        )
        return FormResult(merged)

    def respond(self, task: Task, model: ModelInfo, items: list[TaskInput], results: list[FormResult]) -> FormResponse:
        return FormResponse(
            task=task.name,
            model=model,
            documents=[
                FormDocumentOut(id=item.id, items=[_item_out(name, r) for name, r in result.items.items()])
                for item, result in zip(items, results, strict=True)
            ],
        )

    def fhir_resources(self, task: Task, document: dict[str, Any], note: FhirNote) -> list[dict[str, Any]]:
        return form_observations(task.manifest, document["items"], note)

    # -- data ----------------------------------------------------------------------------
    def parse_gold(self, task: Task, obj: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
        """`{"id", "text", "items": [{"name", "status", "value", "evidence": [{"start", "end"}]}]}`;
        an item left out is unknown. Gold keeps the filled items: name -> value and evidence."""
        text = string_field(obj, "text")
        specs = self._items(task)
        bounds = piece_boundaries(text)
        gold: dict[str, Any] = {}
        seen: set[str] = set()
        for i, entry in enumerate(list_field(obj, "items")):
            where = f"items[{i}]"
            if not isinstance(entry, dict) or set(entry) - {"name", "status", "value", "evidence", "confidence"}:
                raise BadRecord(f"{where}: must be an object with name, status, value and evidence")
            name = entry.get("name")
            if name not in specs:
                raise BadRecord(f"{where}.name: not an item of the form: {name!r}")
            if name in seen:
                raise BadRecord(f"{where}.name: {name} is listed twice")
            seen.add(str(name))
            where = f"{where} ({name})"  # a schema name, never note text: messages say which item
            status = entry.get("status", "filled")
            if status == "unknown":
                if entry.get("value") is not None or entry.get("evidence"):
                    raise BadRecord(f"{where}: an unknown item has value null and no evidence")
                continue
            if status != "filled":
                raise BadRecord(f"{where}.status: must be 'filled' or 'unknown'")
            spec = specs[str(name)]
            value = _checked_value(spec, entry.get("value"), f"{where}.value")
            raw_evidence = entry.get("evidence")
            if not isinstance(raw_evidence, list) or not raw_evidence:
                raise BadRecord(f"{where}.evidence: a filled item needs at least one evidence span")
            evidence = []
            for j, span in enumerate(raw_evidence):
                start, end = check_span(
                    text, bounds, span, f"{where}.evidence[{j}]", _evidence_chars(spec), {"start", "end", "text"}
                )
                evidence.append({"start": start, "end": end, "text": text[start:end]})
            if spec.kind == "text" and value != evidence[0]["text"]:
                raise BadRecord(f"{where}: a text item's value must be its first evidence span's text")
            gold[str(name)] = {"value": value, "evidence": evidence}
        return {"text": text}, {"items": gold}

    def targets(self, task: Task, gold: dict[str, Any], chunk: Chunk) -> list[dict[str, Any]]:
        """For each group: its gold items with an evidence span inside the chunk (the first one)."""
        specs = self._items(task)
        outputs = []
        for group in self._groups(task):
            output: dict[str, Any] = {}
            for name in group.names:
                filled = gold["items"].get(name)
                if filled is None:
                    continue
                inside = [e for e in filled["evidence"] if chunk.start <= e["start"] and e["end"] <= chunk.end]
                if inside:
                    output[name] = _written(specs[name], filled["value"], inside[0]["text"])
            outputs.append(output)
        return outputs

    def gold_fields(self, item: dict[str, Any]) -> dict[str, Any]:
        # Conflicts and alternatives are the reviewer's to settle: the value shown is the one kept.
        return {
            "items": [
                {
                    "name": entry["name"],
                    "status": entry["status"],
                    "value": entry["value"],
                    "evidence": [{k: e[k] for k in ("start", "end", "text")} for e in entry["evidence"]],
                }
                for entry in item["items"]
            ]
        }

    def prediction(self, item: dict[str, Any]) -> dict[str, Any]:
        return {
            "items": {
                entry["name"]: {
                    "value": entry["value"],
                    "evidence": entry["evidence"],
                    "confidence": entry.get("confidence"),
                }
                for entry in item["items"]
                if entry["status"] == "filled"
            },
            "evidence_mismatch": [entry["name"] for entry in item["items"] if entry.get("evidence_mismatch")],
        }

    def empty_prediction(self) -> dict[str, Any]:
        return {"items": {}}

    def score(self, task: Task, golds: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> dict[str, Any]:
        scores = form_scores(
            task.manifest.items, [g["items"] for g in golds], [p.get("items", {}) for p in predictions]
        )
        return {**scores, "evidence_mismatch": mismatch_rates(task.manifest.items, predictions)}

    def synthesize(self, task: Task, world: NoteWorld, n: int, seed: int) -> list[dict[str, Any]]:
        """Notes written for this form, with the value and evidence of every item they state."""
        rng = random.Random(seed)
        specs = self._items(task)
        rows: list[dict[str, Any]] = []
        for i in range(n):
            note = world.compose_form(rng, task.name)
            unknown = sorted(set(note.values) - set(specs))
            if unknown:
                raise ValueError(f"the {task.name} note generator writes items the form lacks: {unknown}")
            items = [
                {
                    "name": name,
                    "status": "filled",
                    "value": list(v.value) if isinstance(v.value, tuple) else v.value,
                    "evidence": [{"start": v.evidence.start, "end": v.evidence.end, "text": v.evidence.text}],
                }
                for name, v in sorted(note.values.items(), key=lambda kv: list(specs).index(kv[0]))
            ]
            rows.append({"id": f"{world.language}-form-{i:06d}", "text": note.text, "items": items})
        return rows


# -- reading and merging ---------------------------------------------------------------


# A value its evidence does not state keeps half its confidence (on_evidence_mismatch: lower).
MISMATCH_CONFIDENCE_FACTOR = 0.5


def agrees(spec: FormItemSpec, value: Value, evidence: str) -> bool:
    """Whether a number or date is one its evidence states; other kinds are their evidence's by grounding."""
    if spec.kind in ("integer", "decimal") and is_number(value):
        return number_agrees(value, [evidence], spec.conversions)
    if spec.kind == "date" and isinstance(value, str):
        return date_agrees(value, [evidence])
    return True


def mismatch_rates(items: Sequence[FormItemSpec], predictions: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per number and date item: the share of its answers (filled, or made unknown for it) whose
    value its evidence did not state; None where the item was never answered."""
    rates: dict[str, float | None] = {}
    for spec in items:
        if spec.kind not in ("integer", "decimal", "date"):
            continue
        flagged = [spec.name in p.get("evidence_mismatch", []) for p in predictions]
        answered = [spec.name in p.get("items", {}) or f for p, f in zip(predictions, flagged, strict=True)]
        n = sum(answered)
        rates[spec.name] = round(sum(flagged) / n, 4) if n else None
    return rates


def _split(spec: FormItemSpec, written: Any) -> tuple[str, Value]:
    """(evidence, value) of what the model wrote for one item."""
    if spec.kind == "text":
        return str(written), str(written)
    if spec.kind == "choice" and spec.multiple:
        return str(written[0]), [str(v) for v in written[1:]]
    return str(written[0]), written[1]


def _written(spec: FormItemSpec, value: Value, evidence: str) -> Any:
    """A gold value as the model writes it (the inverse of _split)."""
    if spec.kind == "text":
        return evidence
    if spec.kind == "choice" and spec.multiple:
        return [evidence, *value] if isinstance(value, list) else [evidence, value]
    if spec.kind in ("integer", "decimal") and is_number(value):
        return [evidence, canonical_number(value, spec.decimals or 0)]
    return [evidence, value]


def _same(a: Value, b: Value) -> bool:
    # True == 1 in Python; a boolean item's value never equals a number.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _whole_values(found: list[tuple[Chunk | None, Filled]]) -> list[Filled]:
    """The values found, less those whose evidence is a longer evidence of another chunk cut
    off by their own chunk's edge: a cut copy is neither a conflict nor a second evidence."""
    evidence = [span for _, f in found for span in f.evidence]
    return [
        f
        for chunk, f in found
        if chunk is None or not any(cut_off(span, chunk, other) for span in f.evidence for other in evidence)
    ]


def _merge_item(spec: FormItemSpec, found: list[Filled]) -> FormItemResult:
    if not found:
        return FormItemResult()
    if spec.kind == "choice" and spec.multiple:
        chosen = {v for f in found if isinstance(f.value, list) for v in f.value}
        options = [o for o in spec.options or [] if o in chosen]
        return FormItemResult(Filled(options, _evidence_union(found), _best_confidence(found)))
    by_value: list[list[Filled]] = []
    for candidate in found:
        same = next((group for group in by_value if _same(group[0].value, candidate.value)), None)
        if same is None:
            by_value.append([candidate])
        else:
            same.append(candidate)
    # A value disagrees only if no evidence of it states it.
    merged = [
        Filled(group[0].value, _evidence_union(group), _best_confidence(group), all(f.mismatch for f in group))
        for group in by_value
    ]
    # The most confident value wins; sorted() is stable, so ties keep document order.
    ranked = sorted(merged, key=lambda f: -(f.confidence if f.confidence is not None else 0.0))
    return FormItemResult(ranked[0], ranked[1:])


def _evidence_union(found: list[Filled]) -> tuple[Span, ...]:
    spans = {(s.start, s.end): s for f in found for s in f.evidence}
    return tuple(spans[k] for k in sorted(spans))


def _best_confidence(found: list[Filled]) -> float | None:
    known = [f.confidence for f in found if f.confidence is not None]
    return max(known) if known else None


def _evidence_out(spans: Sequence[Span]) -> list[EvidenceOut]:
    return [EvidenceOut(start=s.start, end=s.end, text=s.text) for s in spans]


def _mapped(filled: Filled, tally: Tally) -> Filled | None:
    evidence = tuple(span for span in filled.evidence if span.start < span.end)
    tally.dropped["normalization"] += len(filled.evidence) - len(evidence)
    return dataclasses.replace(filled, evidence=evidence) if evidence else None


@overload
def _verbatim(filled: Filled) -> Filled: ...


@overload
def _verbatim(filled: None) -> None: ...


def _verbatim(filled: Filled | None) -> Filled | None:
    """A text item's value as its (first) evidence span's text."""
    if filled is None or not filled.evidence:
        return filled
    return dataclasses.replace(filled, value=filled.evidence[0].text)


def _item_out(name: str, result: FormItemResult) -> FormItemOut:
    filled = result.filled
    if filled is None:
        return FormItemOut(name=name, status="unknown", value=None, evidence=[], evidence_mismatch=result.mismatch)
    return FormItemOut(
        name=name,
        status="filled",
        value=filled.value,
        evidence=_evidence_out(filled.evidence),
        confidence=filled.confidence,
        conflict=bool(result.alternatives),
        alternatives=[
            AlternativeOut(
                value=a.value, evidence=_evidence_out(a.evidence), confidence=a.confidence, evidence_mismatch=a.mismatch
            )
            for a in result.alternatives
        ],
        evidence_mismatch=filled.mismatch,
    )


# -- gold values -----------------------------------------------------------------------


def _evidence_chars(spec: FormItemSpec) -> int:
    return (spec.max_length or TEXT_MAX_CHARS) if spec.kind == "text" else EVIDENCE_MAX_CHARS


def _checked_value(spec: FormItemSpec, value: Any, where: str) -> Value:
    """A gold value that the item's grammar could write (BadRecord naming what is wrong)."""
    options = spec.options or []
    if spec.kind == "choice" and spec.multiple:
        if not isinstance(value, list) or not value or any(v not in options for v in value):
            raise BadRecord(f"{where}: must be a non-empty list of options {options}")
        if len(set(value)) != len(value):
            raise BadRecord(f"{where}: lists an option twice")
        return [o for o in options if o in value]
    if spec.kind == "choice":
        if value not in options:
            raise BadRecord(f"{where}: must be one of {options}")
        return str(value)
    if spec.kind == "boolean":
        if not isinstance(value, bool):
            raise BadRecord(f"{where}: must be true or false")
        return value
    if spec.kind in ("integer", "decimal"):
        decimals = spec.decimals or 0
        if not is_number(value) or (spec.kind == "integer" and not is_int(value)):
            raise BadRecord(f"{where}: must be {'an integer' if spec.kind == 'integer' else 'a number'}")
        if scaled(value, decimals) is None:
            raise BadRecord(f"{where}: has more than {decimals} decimals")
        if not (spec.min or 0) <= value <= (spec.max or 0):
            raise BadRecord(f"{where}: outside [{spec.min}, {spec.max}]")
        return canonical_number(value, decimals)
    if spec.kind == "date":
        first, last = spec.years or DEFAULT_YEARS
        day = iso_date(value)
        if day is None or not first <= day.year <= last:
            raise BadRecord(f"{where}: must be an ISO date YYYY-MM-DD in {first}-{last}")
        return str(value)
    if not isinstance(value, str) or not value:
        raise BadRecord(f"{where}: must be the evidence text")
    return value


# -- metrics ---------------------------------------------------------------------------


def _matches(spec: FormItemSpec, gold: Value, predicted: Value) -> bool:
    if spec.kind in ("integer", "decimal"):
        if not is_number(predicted):
            return False
        assert isinstance(gold, int | float)
        return abs(float(gold) - float(predicted)) <= (spec.tolerance or 0) + 1e-9
    if spec.kind == "choice" and spec.multiple:
        return isinstance(predicted, list) and isinstance(gold, list) and set(gold) == set(predicted)
    if spec.kind == "text":
        return isinstance(predicted, str) and " ".join(str(gold).casefold().split()) == " ".join(
            predicted.casefold().split()
        )
    return _same(gold, predicted)


def form_scores(
    items: Sequence[FormItemSpec],
    golds: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """Form metrics over documents (gold and predicted: filled item name -> value, evidence).

    - accuracy: the share of (document, item) pairs answered right, `unknown` included as a
      value; per_item_accuracy: the same for each item.
    - slots (CL4Health-style, as we read it): a filled prediction with the gold value is a
      true positive; a filled prediction that is wrong or where gold is unknown is a false
      positive; a gold value not predicted, or predicted wrong, a false negative. So a wrong
      guess costs a false positive and a false negative, more than `unknown` (one false
      negative). Numbers match within the item's tolerance; a multiple choice needs the
      same options; a text item the same words (case and spacing aside).
    - evidence_overlap: the share of true positives whose evidence overlaps gold evidence.
    - unknown_accuracy: how often an item gold leaves unknown is predicted unknown.
    - calibration: each filled prediction's confidence against whether it is right.
    """
    tp = fp = fn = 0
    right: Counter[str] = Counter()
    unknown_seen = unknown_right = 0
    overlapping = 0
    pairs: list[tuple[float, bool]] = []
    for gold, predicted in zip(golds, predictions, strict=True):
        for spec in items:
            g, p = gold.get(spec.name), predicted.get(spec.name)
            match = g is not None and p is not None and _matches(spec, g["value"], p["value"])
            if g is None and p is None:
                right[spec.name] += 1
            elif match:
                right[spec.name] += 1
                tp += 1
                gold_spans = [(e["start"], e["end"]) for e in g["evidence"]]  # type: ignore[index]
                if any(overlaps((e["start"], e["end"]), s) for e in p["evidence"] for s in gold_spans):  # type: ignore[index]
                    overlapping += 1
            else:
                fp += p is not None
                fn += g is not None
            if g is None:
                unknown_seen += 1
                unknown_right += p is None
            if p is not None and p.get("confidence") is not None:
                pairs.append((p["confidence"], match))
    n = len(golds)
    per_item = {spec.name: round(right[spec.name] / n, 4) if n else 0.0 for spec in items}
    return {
        "n": n,
        "accuracy": round(mean(list(per_item.values())), 4),
        "slots": PRF.from_counts(tp, fp, fn).to_dict(),
        "evidence_overlap": round(overlapping / tp, 4) if tp else None,
        "unknown_accuracy": round(unknown_right / unknown_seen, 4) if unknown_seen else None,
        "per_item_accuracy": per_item,
        "calibration": calibration(pairs),
    }
