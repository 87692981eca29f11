"""FHIR R4 output: a task's answer for one request as one Bundle of resources.

Asked for with `Accept: application/fhir+json` or `"format": "fhir"` (batch lines and clients
that cannot set headers). The bundle is a `collection`: for each document a placeholder
`Patient` (the service never knows who the note is about: the integrator points
`subject` at the real one), a `DocumentReference` that names the caller's document id (and
carries the text only when asked), then the resources the task's manifest maps its answers to
(`fhir:` in adapters/*.yaml):

- entities: `Condition` (diagnoses, problems), `MedicationStatement` (drugs, with the dose,
  frequency, route and duration their relations point to), `Observation` (tests);
- assertions as FHIR states them: negated -> `verificationStatus` refuted (a Condition),
  `not-taken` (a MedicationStatement), and left out where FHIR has no negation (an Observation,
  a family member's condition); uncertain -> `provisional`; historical -> `clinicalStatus`
  inactive on the problem list (a drug: `completed`); family -> `FamilyMemberHistory`;
- form items: one `Observation` each (numbers as Quantities with the item's UCUM unit,
  booleans, dates, options, verbatim text), coded by the item (`urn:medlora:form:<task>`) and
  by a published code where the manifest gives one.

Every resource points back to its evidence with the `derivation-reference` extension (the
DocumentReference, an offset and a length in Unicode code points, as the JSON answer's
offsets) and carries the model's confidence. Observations are `preliminary`: machine-read
and not yet reviewed. Entity codes (`codes` from a task's terminologies) become codings.
"""

from __future__ import annotations

import base64
import datetime
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import RootModel

from app.tasks.dosage import UCUM, dose_quantity, duration, frequency
from app.tasks.spec import FhirSpec, TaskManifest

FHIR_MEDIA_TYPE = "application/fhir+json"
# R4 resources say their version in the media type, not in the body.
FHIR_CONTENT_TYPE = f"{FHIR_MEDIA_TYPE}; fhirVersion=4.0"
DERIVATION_URL = "http://hl7.org/fhir/StructureDefinition/derivation-reference"
# Our own extensions: no published one says "a model's probability" or "its evidence states
# another value". URNs, so that nothing pretends to resolve.
CONFIDENCE_URL = "urn:medlora:fhir:confidence"
EVIDENCE_MISMATCH_URL = "urn:medlora:fhir:evidence-mismatch"
FORM_SYSTEM = "urn:medlora:form:"
_CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
_ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"


class Bundle(RootModel[dict[str, Any]]):
    """A FHIR R4 Bundle, as JSON."""


@dataclass(frozen=True)
class FhirOptions:
    attach_text: bool = False  # the note's text in its DocumentReference (off: only its id)


@dataclass(frozen=True)
class FhirNote:
    """One document of a request, as the resources drawn from it refer to it."""

    id: str
    text: str
    lang: str
    document: str  # fullUrl of its DocumentReference
    patient: str  # fullUrl of its placeholder Patient

    def evidence(self, start: int, end: int) -> dict[str, Any]:
        return {
            "url": DERIVATION_URL,
            "extension": [
                {"url": "reference", "valueReference": {"reference": self.document}},
                {"url": "offset", "valueInteger": start},
                {"url": "length", "valueInteger": end - start},
            ],
        }

    def subject(self) -> dict[str, str]:
        return {"reference": self.patient}


def check_mapping(manifest: TaskManifest) -> str | None:
    """Why a manifest's `fhir:` names what the task does not have, or None."""
    mapping = manifest.fhir
    if mapping is None:
        return None
    known = {
        "labels": {label.name for label in manifest.labels},
        "attributes": {attr.name for attr in manifest.attributes},
        "relations": {rel.name for rel in manifest.relation_types},
        "items": {item.name for item in manifest.items},
    }
    for section, names in known.items():
        for name in getattr(mapping, section):
            if name not in names:
                return f"fhir.{section}.{name}: the task has no {section[:-1]} {name!r}"
    drugs = {label for label, kind in mapping.labels.items() if kind == "MedicationStatement"}
    for relation in manifest.relation_types:
        if relation.name in mapping.relations and not set(relation.head) <= drugs:
            return f"fhir.relations.{relation.name}: its heads must all map to MedicationStatement"
    for item in manifest.items:
        coded = mapping.items.get(item.name)
        if coded is not None and coded.ucum and item.kind not in ("integer", "decimal"):
            return f"fhir.items.{item.name}.ucum: only number items have units"
    return None


def extensions(
    note: FhirNote, spans: Iterable[Mapping[str, Any]], confidence: float | None, mismatch: bool = False
) -> list[dict[str, Any]]:
    found = [note.evidence(int(s["start"]), int(s["end"])) for s in spans]
    if confidence is not None:
        found.append({"url": CONFIDENCE_URL, "valueDecimal": round(float(confidence), 4)})
    if mismatch:
        found.append({"url": EVIDENCE_MISMATCH_URL, "valueBoolean": True})
    return found


def concept(text: str, codes: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """A CodeableConcept: the note's words, and the codes a terminology linked them to."""
    found: dict[str, Any] = {"text": text}
    codings = [
        {"system": c["system"], "code": c["code"], **({"display": c["display"]} if c.get("display") else {})}
        for c in codes
    ]
    if codings:
        found["coding"] = codings
    return found


def _coded(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}]}


# -- entities ----------------------------------------------------------------------------


def _assertions(mapping: FhirSpec, entity: Mapping[str, Any]) -> set[str]:
    attributes = entity.get("attributes") or {}
    return {meaning for name, meaning in mapping.attributes.items() if attributes.get(name) is True}


def _condition(entity: Mapping[str, Any], said: set[str], note: FhirNote) -> dict[str, Any]:
    verification = "refuted" if "negated" in said else "provisional" if "uncertain" in said else "confirmed"
    resource: dict[str, Any] = {"resourceType": "Condition"}
    if "negated" not in said:
        # A refuted condition has no clinical status: there is no condition to be active.
        clinical = "inactive" if "historical" in said else "active"
        resource["clinicalStatus"] = _coded(_CONDITION_CLINICAL, clinical, clinical.capitalize())
    resource["verificationStatus"] = _coded(_CONDITION_VERIFICATION, verification, verification.capitalize())
    category = "problem-list-item" if "historical" in said else "encounter-diagnosis"
    resource["category"] = [_coded(_CONDITION_CATEGORY, category, category.replace("-", " ").capitalize())]
    resource["code"] = concept(entity["text"], entity.get("codes") or ())
    resource["subject"] = note.subject()
    return resource


def _family_history(entity: Mapping[str, Any], note: FhirNote) -> dict[str, Any]:
    return {
        "resourceType": "FamilyMemberHistory",
        "status": "partial",  # the note names a relative's condition, not a full history
        "patient": note.subject(),
        "relationship": _coded(_ROLE_CODE, "FAMMEMB", "family member"),
        "condition": [{"code": concept(entity["text"], entity.get("codes") or ())}],
    }


def _medication(
    entity: Mapping[str, Any], said: set[str], tails: list[tuple[str, Mapping[str, Any]]], note: FhirNote, asserts: bool
) -> dict[str, Any]:
    if "negated" in said:
        status = "not-taken"
    elif "historical" in said:
        status = "completed"
    else:
        # Without assertion attributes the task never said whether the drug is taken.
        status = "active" if asserts and "uncertain" not in said else "unknown"
    resource: dict[str, Any] = {
        "resourceType": "MedicationStatement",
        "status": status,
        "medicationCodeableConcept": concept(entity["text"], entity.get("codes") or ()),
        "subject": note.subject(),
    }
    dosage = _dosage(tails, note.lang)
    if dosage:
        resource["dosage"] = [dosage]
    return resource


def _dosage(tails: list[tuple[str, Mapping[str, Any]]], lang: str) -> dict[str, Any]:
    """One Dosage from a drug's related spans (in note order); `text` always has them all."""
    if not tails:
        return {}
    ordered = sorted(tails, key=lambda pair: int(pair[1]["start"]))
    dosage: dict[str, Any] = {"text": " ".join(str(span["text"]) for _, span in ordered)}
    repeat: dict[str, Any] = {}
    for part, span in ordered:
        text = str(span["text"])
        if part == "dose":
            quantity = dose_quantity(text, lang)
            if quantity is not None and "doseAndRate" not in dosage:
                dosage["doseAndRate"] = [{"doseQuantity": quantity}]
        elif part == "route":
            dosage.setdefault("route", {"text": text})
        else:
            fields = frequency(text, lang) if part == "frequency" else duration(text, lang)
            repeat |= fields.pop("timing", {}).get("repeat", {})
            dosage |= fields
    if repeat:
        dosage["timing"] = {"repeat": repeat}
    return dosage


def entity_resources(
    manifest: TaskManifest,
    entities: Sequence[Mapping[str, Any]],
    note: FhirNote,
    relations: Sequence[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """The resources a document's entities (and their relations) map to, in note order."""
    mapping = manifest.fhir or FhirSpec()
    asserts = bool(mapping.attributes)
    by_id = {str(e["id"]): e for e in entities if "id" in e}
    tails: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for relation in relations:
        part = mapping.relations.get(str(relation["type"]))
        tail = by_id.get(str(relation["tail"]))
        if part is not None and tail is not None:
            tails.setdefault(str(relation["head"]), []).append((part, tail))
    resources: list[dict[str, Any]] = []
    for entity in entities:
        kind = mapping.labels.get(str(entity["label"]))
        if kind is None:
            continue
        said = _assertions(mapping, entity)
        related = tails.get(str(entity.get("id")), [])
        if "family" in said:
            # A relative's condition is family history; a relative's drug or test is not the patient's.
            if kind != "Condition" or "negated" in said:
                continue
            resource = _family_history(entity, note)
        elif kind == "Condition":
            resource = _condition(entity, said, note)
        elif kind == "MedicationStatement":
            resource = _medication(entity, said, related, note, asserts)
        else:
            if "negated" in said:  # FHIR Observation states no negation: a test not done is left out
                continue
            resource = {
                "resourceType": "Observation",
                "status": "preliminary",
                "code": concept(entity["text"], entity.get("codes") or ()),
                "subject": note.subject(),
            }
        spans = [entity, *(span for _, span in related)]
        resource = {"resourceType": resource.pop("resourceType"), "extension": [], **resource}
        resource["extension"] = extensions(note, spans, entity.get("confidence"))
        resources.append(resource)
    return resources


# -- form items --------------------------------------------------------------------------


def form_observations(
    manifest: TaskManifest, items: Sequence[Mapping[str, Any]], note: FhirNote
) -> list[dict[str, Any]]:
    """One Observation per filled form item (one per option of a multiple choice)."""
    mapping = manifest.fhir or FhirSpec()
    specs = {item.name: item for item in manifest.items}
    found: list[dict[str, Any]] = []
    for item in items:
        spec = specs.get(str(item["name"]))
        if spec is None or item.get("status") != "filled" or item.get("value") is None:
            continue
        coded = mapping.items.get(spec.name)
        codings = [{"system": FORM_SYSTEM + manifest.name, "code": spec.name}]
        if coded is not None and coded.code is not None:
            published = coded.code
            codings.append(
                {"system": published.system, "code": published.code}
                | ({"display": published.display} if published.display else {})
            )
        code = {"coding": codings, "text": spec.description or spec.name}
        value = item["value"]
        values: list[dict[str, Any]]
        if spec.kind in ("integer", "decimal"):
            quantity: dict[str, Any] = {"value": value}
            if spec.unit:
                quantity["unit"] = spec.unit
            if coded is not None and coded.ucum:
                quantity |= {"system": UCUM, "code": coded.ucum}
            values = [{"valueQuantity": quantity}]
        elif spec.kind == "boolean":
            values = [{"valueBoolean": bool(value)}]
        elif spec.kind == "date":
            values = [{"valueDateTime": str(value)}]
        elif spec.kind == "choice":
            options = value if isinstance(value, list) else [value]
            values = [{"valueCodeableConcept": {"text": str(option)}} for option in options]
        else:
            values = [{"valueString": str(value)}]
        for stated in values:
            found.append(
                {
                    "resourceType": "Observation",
                    "extension": extensions(
                        note, item.get("evidence") or (), item.get("confidence"), bool(item.get("evidence_mismatch"))
                    ),
                    "status": "preliminary",
                    "code": code,
                    "subject": note.subject(),
                    **stated,
                }
            )
    return found


# -- the bundle ---------------------------------------------------------------------------


class BundleBuilder:
    """Entries with `urn:uuid` full URLs, unique per request and stable within it."""

    def __init__(self, request_id: str):
        self._namespace = uuid.uuid5(uuid.NAMESPACE_URL, f"urn:medlora:request:{request_id}:{uuid.uuid4()}")
        self._entries: list[dict[str, Any]] = []

    def url(self) -> str:
        return f"urn:uuid:{uuid.uuid5(self._namespace, str(len(self._entries)))}"

    def add(self, resource: dict[str, Any], url: str | None = None) -> str:
        url = url or self.url()
        self._entries.append({"fullUrl": url, "resource": resource})
        return url

    def note(self, doc_id: str, text: str, lang: str, options: FhirOptions) -> FhirNote:
        """The placeholder Patient and the DocumentReference of one document."""
        patient = self.add({"resourceType": "Patient"})
        attachment: dict[str, Any] = {"contentType": "text/plain; charset=utf-8"}
        if options.attach_text:
            data = text.encode("utf-8")
            attachment |= {"data": base64.b64encode(data).decode("ascii"), "size": len(data)}
        document = self.url()
        self.add(
            {
                "resourceType": "DocumentReference",
                "identifier": [{"value": doc_id}],
                "status": "current",
                "subject": {"reference": patient},
                "content": [{"attachment": attachment}],
            },
            document,
        )
        return FhirNote(doc_id, text, lang, document, patient)

    def bundle(self) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "type": "collection",
            "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "entry": self._entries,
        }
