"""What a reviewer changed: the model's answer and the decision, both as the task's gold fields,
counted as accepted, edited, deleted and added, whatever the task type.

Each gold field is a list of annotations (entities, relations, form items, labels) or one
annotation or none (a QA answer). An annotation is anchored where it stands in the note or
the form: a form item by its name, a span by its offsets, a relation by its arguments, a label
by itself. Same anchor and same content: accepted; same anchor, other content: edited (a
relabelled entity, a corrected value). Left unmatched, a model span that overlaps a decided one
was edited too (widened or narrowed); the rest were deleted (model only) or added (reviewer only).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import asdict, dataclass
from typing import Any

_IGNORED = frozenset({"id"})  # relation arguments name entities by id; ids are not content


@dataclass
class Changes:
    accepted: int = 0
    edited: int = 0
    deleted: int = 0
    added: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _annotations(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _anchor(annotation: Any) -> Hashable:
    if not isinstance(annotation, dict):
        return ("value", repr(annotation))
    if "name" in annotation:
        return ("name", annotation["name"])
    if "start" in annotation and "end" in annotation:
        return ("span", annotation["start"], annotation["end"])
    if "head" in annotation and "tail" in annotation:
        return ("arguments", repr(annotation["head"]), repr(annotation["tail"]), annotation.get("type"))
    return ("value", repr(sorted(annotation.items())))


def _content(annotation: Any) -> Any:
    if isinstance(annotation, dict):
        return {k: v for k, v in annotation.items() if k not in _IGNORED}
    return annotation


def _overlaps(a: Any, b: Any) -> bool:
    spans = all(isinstance(x, dict) and "start" in x and "end" in x for x in (a, b))
    return spans and a["start"] < b["end"] and b["start"] < a["end"]


def count_changes(model: dict[str, Any], decision: dict[str, Any]) -> Changes:
    """Both in the task's gold shape (`TaskType.gold_fields`)."""
    changes = Changes()
    for field in sorted(set(model) | set(decision)):
        before = {_anchor(a): a for a in _annotations(model.get(field))}
        after = {_anchor(a): a for a in _annotations(decision.get(field))}
        for anchor in before.keys() & after.keys():
            if _content(before[anchor]) == _content(after[anchor]):
                changes.accepted += 1
            else:
                changes.edited += 1
        removed = [before[a] for a in before.keys() - after.keys()]
        added = [after[a] for a in after.keys() - before.keys()]
        for old in removed:
            match = next((new for new in added if _overlaps(old, new)), None)
            if match is None:
                changes.deleted += 1
            else:
                added.remove(match)
                changes.edited += 1
        changes.added += len(added)
    return changes
