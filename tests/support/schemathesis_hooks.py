"""Schemathesis hooks (loaded through SCHEMATHESIS_HOOKS) for the two request rules JSON Schema
cannot state, each said in the operation's description:

- item ids unique within a request (a 422 `duplicate-id`);
- a review decision fits the note stored under that review (its offsets, words and labels; a
  422 `invalid-review`): no schema of the request can know the note. A generated decision is
  random, so a positive case of that save is no valid request once schemathesis has found a real
  review and its version (its dependency analysis links them from earlier responses).

Positive cases that break them are not sent as valid requests; negative cases keep them. Nothing
else is filtered or changed. tests/test_review_api.py and the browser tests check valid saves."""

from __future__ import annotations

from typing import Any

import schemathesis

_ITEM_FIELDS = ("documents", "items")


def _repeats_an_id(body: Any) -> bool:
    if not isinstance(body, dict):
        return False
    for field in _ITEM_FIELDS:
        items = body.get(field)
        if isinstance(items, list):
            ids = [item.get("id") for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)]
            if len(ids) != len(set(ids)):
                return True
    return False


def _saves_a_review(case: Any) -> bool:
    return bool(case.operation.method.upper() == "PUT" and case.operation.path == "/v1/reviews/items/{review_id}")


@schemathesis.hook
def filter_case(context: schemathesis.HookContext, case: Any) -> bool:
    meta = case.meta
    # Stateful scenarios carry no generation mode: their steps are sent as valid requests.
    positive = meta is None or meta.generation.mode.is_positive
    return not (positive and (_repeats_an_id(case.body) or _saves_a_review(case)))
