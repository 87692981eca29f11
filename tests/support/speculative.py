"""Comparing task responses with and without speculative decoding: the answers must be the same,
the confidences may move by floating-point noise (a draft is verified in one forward pass over
several positions, whose matmuls round differently from one position at a time)."""

from __future__ import annotations

from typing import Any

# Keys whose values are model probabilities: `confidence` everywhere, a classification's `scores`.
CONFIDENCE_KEYS = frozenset({"confidence", "scores"})


def without_confidences(body: Any) -> Any:
    """The response with every probability taken out: what must be identical."""
    if isinstance(body, dict):
        return {k: without_confidences(v) for k, v in body.items() if k not in CONFIDENCE_KEYS}
    if isinstance(body, list):
        return [without_confidences(v) for v in body]
    return body


def confidences(body: Any) -> list[float]:
    """Every probability of the response, in document order."""
    if isinstance(body, dict):
        found: list[float] = []
        for key, value in body.items():
            if key == "confidence" and value is not None:
                found.append(float(value))
            elif key == "scores":
                found.extend(float(v) for _, v in sorted(value.items()))
            else:
                found.extend(confidences(value))
        return found
    if isinstance(body, list):
        return [c for v in body for c in confidences(v)]
    return []


def confidence_gap(a: Any, b: Any) -> float:
    """Largest difference between two responses' confidences (the answers already equal)."""
    ca, cb = confidences(a), confidences(b)
    assert len(ca) == len(cb), (len(ca), len(cb))
    return max((abs(x - y) for x, y in zip(ca, cb, strict=True)), default=0.0)


def answer_units(task_type: str, body: dict[str, Any]) -> dict[str, int]:
    """What the answers hold, counted as the benchmarks divide by: entities, relations, filled
    form items, answered questions, classified documents."""
    if task_type == "qa":
        return {"answers": sum(item["answer"] is not None for item in body["items"])}
    docs = body["documents"]
    if task_type == "ner":
        return {"entities": sum(len(d["entities"]) for d in docs)}
    if task_type == "relations":
        return {"relations": sum(len(d["relations"]) for d in docs), "entities": sum(len(d["entities"]) for d in docs)}
    if task_type == "form":
        return {"filled_items": sum(item["status"] == "filled" for d in docs for item in d["items"])}
    return {"documents": len(docs)}
