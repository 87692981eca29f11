"""FHIR R4 bundles checked from outside, with two independent implementations of the spec:

- `fhir.resources` (pydantic, R4B 4.3.0): types, cardinalities and unknown elements;
- `fhirclient` (4.0.1 models, strict): the exact R4 release, where R4B and R4 differ.

Then what neither checks: every reference resolves inside the bundle, and every
derivation-reference's offset and length cut the note's text at the evidence.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fhir.resources.R4B.bundle import Bundle as R4BBundle
from fhirclient.models.bundle import Bundle as R4Bundle

from app.tasks.fhir import CONFIDENCE_URL, DERIVATION_URL


def validate_r4(bundle: dict[str, Any]) -> None:
    R4BBundle.model_validate(bundle)
    R4Bundle(bundle, strict=True)


def _references(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            found.append(node["reference"])
        for value in node.values():
            found.extend(_references(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_references(value))
    return found


def derivations(resource: Mapping[str, Any]) -> list[tuple[str, int, int]]:
    """(document reference, offset, length) of each derivation-reference of a resource."""
    found = []
    for ext in resource.get("extension", []):
        if ext["url"] == DERIVATION_URL:
            parts = {sub["url"]: sub for sub in ext["extension"]}
            found.append(
                (
                    parts["reference"]["valueReference"]["reference"],
                    parts["offset"]["valueInteger"],
                    parts["length"]["valueInteger"],
                )
            )
    return found


def confidence(resource: Mapping[str, Any]) -> float | None:
    values = [e["valueDecimal"] for e in resource.get("extension", []) if e["url"] == CONFIDENCE_URL]
    return values[0] if values else None


def check_bundle(bundle: dict[str, Any], texts: Mapping[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Validate a bundle against R4 and its notes (document id -> text as sent); returns the
    clinical resources of each document id, in bundle order."""
    validate_r4(bundle)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    entries = {entry["fullUrl"]: entry["resource"] for entry in bundle["entry"]}
    assert len(entries) == len(bundle["entry"]), "fullUrls are unique"
    for entry in bundle["entry"]:
        for reference in _references(entry["resource"]):
            assert reference in entries, f"{reference} does not resolve in the bundle"
    documents = {
        url: r["identifier"][0]["value"] for url, r in entries.items() if r["resourceType"] == "DocumentReference"
    }
    assert sorted(documents.values()) == sorted(texts), "one DocumentReference per document sent"
    by_document: dict[str, list[dict[str, Any]]] = {doc_id: [] for doc_id in texts}
    for resource in entries.values():
        if resource["resourceType"] in ("Patient", "DocumentReference"):
            continue
        found = derivations(resource)
        assert found, f"{resource['resourceType']} has no evidence"
        owners = {documents[ref] for ref, _, _ in found}
        assert len(owners) == 1
        (doc_id,) = owners
        for _, offset, length in found:
            assert 0 <= offset and length > 0 and offset + length <= len(texts[doc_id])
        value = confidence(resource)
        assert value is None or 0.0 <= value <= 1.0
        by_document[doc_id].append(resource)
    return by_document


def evidence_texts(resource: Mapping[str, Any], text: str) -> list[str]:
    return [text[offset : offset + length] for _, offset, length in derivations(resource)]
