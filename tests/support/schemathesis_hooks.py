"""Schemathesis hooks (loaded through SCHEMATHESIS_HOOKS) for the one request rule JSON Schema
cannot state: item ids unique within a request (a 422 `duplicate-id`, said in the field's
description). Positive cases that break it are not valid requests, so they are not sent as such;
negative cases keep them. Nothing else is filtered or changed."""

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


@schemathesis.hook
def filter_case(context: schemathesis.HookContext, case: Any) -> bool:
    meta = case.meta
    positive = meta is not None and meta.generation.mode.is_positive
    return not (positive and _repeats_an_id(case.body))
