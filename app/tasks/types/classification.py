"""Document classification: one label (or, for a multi-label task, several) from the task's set.

What the model writes: `{"labels": [label, ...]}`. Over a long note a single-label task
takes the majority over its chunks (ties to the task's label order); a multi-label task
the union. A blank document is not sent to the model: it has no labels and no scores.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from app.tasks.chunking import Chunk
from app.tasks.gold import list_field, string_field
from app.tasks.protocol import DocumentsRequest, ModelInfo, TaskResponse
from app.tasks.schema import enum_values
from app.tasks.scoring import PRF, calibration, check_parallel, mean, rounded
from app.tasks.types.base import (
    Answer,
    BadRecord,
    NoteWorld,
    Tally,
    Task,
    TaskInput,
    TaskType,
    listing,
    register,
)


class ClassifyRequest(DocumentsRequest):
    task: str = Field(examples=["classify-it-note-type"])


class ClassifyDocumentOut(BaseModel):
    id: str
    labels: list[str] = Field(description="Labels from the task's label set; none for a blank document.")
    scores: dict[str, float] = Field(
        default_factory=dict, description="Each label's confidence (the model's probability for it), by label."
    )


class ClassifyResponse(TaskResponse):
    documents: list[ClassifyDocumentOut]


@dataclass
class ClassifyResult:
    labels: list[str]
    scores: dict[str, float] = field(default_factory=dict)


@register
class ClassificationType(TaskType[ClassifyResult]):
    name = "classification"
    endpoint = "classify"
    summary = "Document classes from the task's label set."
    request_model = ClassifyRequest
    response_model = ClassifyResponse
    headline = ("accuracy", "macro_f1")

    def check(self, task: Task) -> str | None:
        labels = task.schema.get("properties", {}).get("labels", {})
        items = labels.get("items")
        if not isinstance(items, dict) or enum_values(items) != task.label_names:
            return "labels: must equal the schema's labels.items enum"
        if not task.manifest.multi_label and labels.get("maxItems") != 1:
            return "multi_label: false needs the schema's labels.maxItems == 1"
        if labels.get("minItems", 0) < 1:
            return "schema: labels.minItems must be at least 1"
        if not task.label_names:
            return "labels: at least one label is required"
        return None

    def grounded_strings(self, output: dict[str, Any]) -> list[str]:
        return []

    def format_lines(self, task: Task, part: str = "") -> list[str]:
        return [*listing("Labels:", task.manifest.labels), "", "Answer with one JSON object only."]

    def blank(self, task: Task, item: TaskInput) -> ClassifyResult | None:
        # Nothing to classify: no label rather than one the model would pick from no evidence.
        return ClassifyResult([]) if not item.source.strip() else None

    def read(self, task: Task, item: TaskInput, chunk: Chunk, answers: list[Answer], tally: Tally) -> ClassifyResult:
        answer = answers[0]
        labels = list(answer.output["labels"])
        # Per token (ECE 0.03 on 50 held-out notes, 0.09 as the joint probability).
        scores = {label: answer.confidence("labels", i, per_token=True) for i, label in enumerate(labels)}
        return ClassifyResult(labels, {label: score for label, score in scores.items() if score is not None})

    def merge(self, task: Task, item: TaskInput, parts: list[ClassifyResult], tally: Tally) -> ClassifyResult:
        order = {name: i for i, name in enumerate(task.label_names)}
        votes: Counter[str] = Counter()
        for part in parts:
            votes.update(dict.fromkeys(part.labels, 1))
        if task.manifest.multi_label:
            labels = sorted(votes, key=order.__getitem__)
        else:
            # Long notes: majority over chunks, ties to the task's label order.
            labels = [min(votes, key=lambda name: (-votes[name], order[name]))]
        # A label's score over chunks: its mean confidence, counting 0 where a chunk did not choose it.
        scores = {
            label: round(sum(part.scores.get(label, 0.0) for part in parts) / len(parts), 4)
            for label in labels
            if any(label in part.scores for part in parts)
        }
        if item.min_confidence is not None:
            low = [label for label in labels if label in scores and scores[label] < item.min_confidence]
            tally.dropped["low_confidence"] += len(low)
            labels = [label for label in labels if label not in low]
            scores = {label: score for label, score in scores.items() if label in labels}
        return ClassifyResult(labels, scores)

    def respond(
        self, task: Task, model: ModelInfo, items: list[TaskInput], results: list[ClassifyResult]
    ) -> ClassifyResponse:
        return ClassifyResponse(
            task=task.name,
            model=model,
            documents=[
                ClassifyDocumentOut(id=item.id, labels=r.labels, scores=r.scores)
                for item, r in zip(items, results, strict=True)
            ],
        )

    def parse_gold(self, task: Task, obj: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
        text = string_field(obj, "text")
        labels = list_field(obj, "labels")
        if not labels:
            raise BadRecord("labels: at least one label is required")
        for i, label in enumerate(labels):
            if not isinstance(label, str) or label not in task.label_names:
                raise BadRecord(f"labels[{i}]: unknown label {label!r} (task labels: {task.label_names})")
        if len(set(labels)) != len(labels):
            raise BadRecord("labels: repeated label")
        if not task.manifest.multi_label and len(labels) > 1:
            raise BadRecord(f"labels: {len(labels)} labels, but task {task.name} is single-label")
        return {"text": text}, {"labels": [name for name in task.label_names if name in labels]}

    def targets(self, task: Task, gold: dict[str, Any], chunk: Chunk) -> list[dict[str, Any]]:
        """The gold labels (task order) in every chunk."""
        return [{"labels": list(gold["labels"])}]

    def prediction(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"labels": list(item["labels"]), "scores": dict(item.get("scores", {}))}

    def empty_prediction(self) -> dict[str, Any]:
        return {"labels": []}

    def gold_fields(self, item: dict[str, Any]) -> dict[str, Any]:
        # A blank note's answer has no label; a gold record needs one (the reviewer picks it).
        return {"labels": list(item["labels"])}

    def confidences(self, item: dict[str, Any]) -> list[float]:
        # The chosen labels' scores: how sure the model was of what it answered.
        scores = item.get("scores", {})
        return [float(scores[label]) for label in item["labels"] if label in scores]

    def score(self, task: Task, golds: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> dict[str, Any]:
        cls = classification_scores(
            [g["labels"] for g in golds], [p.get("labels", []) for p in predictions], labels=task.label_names
        )
        # Each label returned, with its score, against whether the gold has it.
        pairs = [
            (score, label in gold["labels"])
            for gold, prediction in zip(golds, predictions, strict=True)
            for label, score in prediction.get("scores", {}).items()
        ]
        return {
            "calibration": calibration(pairs),
            "n": cls.n,
            "accuracy": round(cls.accuracy, 4),
            "macro_f1": round(cls.macro_f1, 4),
            "micro_f1": round(cls.micro_f1, 4),
            # Labels absent from both gold and predictions are left out (their F1 would be a vacuous 1.0).
            "per_label_f1": {
                label: round(prf.f1, 4) for label, prf in cls.per_label.items() if prf.tp + prf.fp + prf.fn > 0
            },
        }

    def synthesize(self, task: Task, world: NoteWorld, n: int, seed: int) -> list[dict[str, Any]]:
        """Notes of each of the task's labels (its document types) in turn, shuffled: balanced."""
        unknown = [label for label in task.label_names if label not in world.note_kinds]
        if unknown:
            raise ValueError(f"the {world.language} note generator writes no {unknown} notes")
        rng = random.Random(seed)
        kinds = [task.label_names[i % len(task.label_names)] for i in range(n)]
        rng.shuffle(kinds)
        return [
            {"id": f"{world.language}-cls-{i:06d}", "text": world.compose(rng, kind).text, "labels": [kind]}
            for i, kind in enumerate(kinds)
        ]


# -- metrics ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassScores:
    n: int
    accuracy: float
    macro_f1: float
    micro_f1: float
    per_label: dict[str, PRF]

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = rounded(asdict(self))
        return result


def classification_scores(
    gold: Sequence[Sequence[str]],
    pred: Sequence[Sequence[str]],
    labels: Sequence[str] | None = None,
) -> ClassScores:
    """Multi-label document classification: subset accuracy, macro and micro F1.

    Each label is a binary decision per document (label lists are treated as sets). ``labels``
    fixes the label set (and the order of ``per_label``); by default it is the sorted union of all
    labels seen. Labels outside a given set are ignored by the F1 scores but still count for
    ``accuracy``, which compares each document's full gold and predicted sets. A given label that
    never occurs on either side is listed in ``per_label`` but left out of the macro mean, so
    labels absent from a test set neither inflate nor deflate it.
    """
    check_parallel(gold, pred)
    gold_sets = [set(doc) for doc in gold]
    pred_sets = [set(doc) for doc in pred]
    if labels is None:
        label_set = sorted(set[str]().union(*gold_sets, *pred_sets))
    else:
        if not labels:
            raise ValueError("labels, when given, must not be empty")
        label_set = list(dict.fromkeys(labels))

    per_label: dict[str, PRF] = {}
    for label in label_set:
        tp = sum(label in g and label in p for g, p in zip(gold_sets, pred_sets, strict=True))
        fp = sum(label not in g and label in p for g, p in zip(gold_sets, pred_sets, strict=True))
        fn = sum(label in g and label not in p for g, p in zip(gold_sets, pred_sets, strict=True))
        per_label[label] = PRF.from_counts(tp, fp, fn)
    micro = PRF.from_counts(
        sum(s.tp for s in per_label.values()),
        sum(s.fp for s in per_label.values()),
        sum(s.fn for s in per_label.values()),
    )
    # No labels at all means every document is empty on both sides: nothing to find.
    seen = [s for s in per_label.values() if s.tp + s.fp + s.fn > 0]
    macro_f1 = mean([s.f1 for s in seen]) if seen else 1.0
    accuracy = mean([float(g == p) for g, p in zip(gold_sets, pred_sets, strict=True)])
    return ClassScores(len(gold_sets), accuracy, macro_f1, micro.f1, per_label)
