"""Extractive question answering: the shortest span of the context that answers, or null.

What the model writes: `{"answer": "<verbatim span>"}` or `{"answer": null}`. Over a long
context the first chunk (in document order) that answers wins, unless its answer is cut off
at its chunk's edge and another chunk found it whole: the whole answer wins then.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, Field, field_validator

from app.tasks.chunking import Chunk, cut_off, shift
from app.tasks.gold import check_span, max_length, string_field
from app.tasks.grounding import Span, ground_answer, piece_boundaries
from app.tasks.normalization import NfcText
from app.tasks.protocol import ID_DESCRIPTION, ID_PATTERN, In, ModelInfo, SpansResponse, TaskRequest, no_surrogates
from app.tasks.schema import GROUNDED
from app.tasks.scoring import calibration, check_parallel, mean, rounded
from app.tasks.types.base import (
    Answer,
    BadRecord,
    NoteWorld,
    Tally,
    Task,
    TaskInput,
    TaskType,
    keep_confident,
    register,
)

QUESTION_MAX_CHARS = 2000
# An exact share of the synthetic questions has no answer in its note.
_UNANSWERABLE_SHARE = 0.2


class QaItemIn(In):
    id: str = Field(pattern=ID_PATTERN, description=ID_DESCRIPTION, examples=["q1"])
    context: str
    question: str = Field(min_length=1, max_length=QUESTION_MAX_CHARS)

    _check_text = field_validator("context", "question")(no_surrogates)


class QaRequest(TaskRequest):
    task: str = Field(examples=["qa-it-clinical"])
    items: list[QaItemIn] = Field(min_length=1)


class AnswerOut(BaseModel):
    text: str
    start: int
    end: int
    confidence: float | None = Field(None, ge=0.0, le=1.0, description="The model's probability for this answer.")


class QaItemOut(BaseModel):
    id: str
    answer: AnswerOut | None


class QaResponse(SpansResponse):
    items: list[QaItemOut]


@dataclass
class QaResult:
    answer: Span | None
    dropped: Counter[str] = field(default_factory=Counter)  # this chunk's ungroundable answers
    chunk: Chunk | None = None  # where a chunk's answer was found (its edges cut answers off)


@register
class QaType(TaskType[QaResult]):
    name = "qa"
    endpoint = "qa"
    summary = "Extractive answers: a verbatim span of the context with its offsets, or null."
    items_field = "items"
    input_fields = ("context", "question")
    request_model = QaRequest
    response_model = QaResponse
    headline = ("exact_match", "token_f1")

    def check(self, task: Task) -> str | None:
        alternatives = task.schema.get("properties", {}).get("answer", {}).get("anyOf", [])
        kinds = sorted(str(a.get("type")) for a in alternatives)
        if kinds != ["null", "string"] or not any(a.get(GROUNDED) for a in alternatives):
            return f"schema: answer must be anyOf null | string marked {GROUNDED}"
        return None

    def grounded_strings(self, output: dict[str, Any]) -> list[str]:
        answer = output.get("answer")
        return [] if answer is None else [str(answer)]

    def format_lines(self, task: Task, part: str = "") -> list[str]:
        return ["", "Answer with one JSON object only."]

    def user_prompt(self, payload: Mapping[str, str]) -> str:
        return f"Context:\n{payload['context']}\n\nQuestion: {payload['question']}"

    def blank(self, task: Task, item: TaskInput) -> QaResult | None:
        return QaResult(None) if not item.source.strip() else None

    def read(self, task: Task, item: TaskInput, chunk: Chunk, answers: list[Answer], tally: Tally) -> QaResult:
        answer = answers[0]
        text = answer.output.get("answer")
        # The joint probability: which span, and where it ends (ECE 0.17 on 50 held-out
        # questions; the per-token mean, 0.34, is overconfident for wrong spans).
        confidence = answer.confidence("answer") if text is not None else None
        span, grounded = ground_answer(chunk.text, text, confidence)
        return QaResult(None if span is None else shift(span, chunk.start), grounded.dropped, chunk)

    def merge(self, task: Task, item: TaskInput, parts: list[QaResult], tally: Tally) -> QaResult:
        # Chunks are in document order: the first that answers wins, and the chunks after it
        # are not looked at (nor are their ungroundable answers counted). An answer cut off
        # at its chunk's edge yields to the whole answer another chunk found.
        answers = [part.answer for part in parts if part.answer is not None]
        for part in parts:
            tally.dropped.update(part.dropped)
            if part.answer is not None and not _cut_copy(part.answer, part.chunk, answers):
                kept = keep_confident([part.answer], item.min_confidence, tally)
                tally.returned = len(kept)
                return QaResult(kept[0] if kept else None)
        return QaResult(None)

    def to_original(self, task: Task, result: QaResult, text: NfcText, tally: Tally) -> QaResult:
        answer = None if result.answer is None else text.remap(result.answer)
        if answer is not None and answer.start == answer.end:  # nothing of it maps exactly
            tally.dropped["normalization"] += 1
            tally.returned, answer = 0, None
        return QaResult(answer)

    def respond(self, task: Task, model: ModelInfo, items: list[TaskInput], results: list[QaResult]) -> QaResponse:
        return QaResponse(
            task=task.name,
            model=model,
            items=[
                QaItemOut(
                    id=item.id,
                    answer=None
                    if r.answer is None
                    else AnswerOut(
                        text=r.answer.text, start=r.answer.start, end=r.answer.end, confidence=r.answer.confidence
                    ),
                )
                for item, r in zip(items, results, strict=True)
            ],
        )

    def parse_gold(self, task: Task, obj: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
        context = string_field(obj, "context")
        question = string_field(obj, "question")
        if not question.strip():
            raise BadRecord("question: must not be empty")
        if len(question) > QUESTION_MAX_CHARS:
            raise BadRecord(f"question: longer than {QUESTION_MAX_CHARS} characters")
        if "answer" not in obj:
            raise BadRecord("answer: missing (use null for unanswerable)")
        answer = obj["answer"]
        payload = {"context": context, "question": question}
        if answer is None:
            return payload, {"answer": None}
        max_chars = max_length(task.schema["properties"]["answer"])
        start, end = check_span(
            context, piece_boundaries(context), answer, "answer", max_chars, {"start", "end", "text"}
        )
        return payload, {"answer": {"start": start, "end": end, "text": context[start:end]}}

    def targets(self, task: Task, gold: dict[str, Any], chunk: Chunk) -> list[dict[str, Any]]:
        """The answer text in every chunk that holds the whole answer span, null elsewhere."""
        answer = gold["answer"]
        holds = answer is not None and chunk.start <= answer["start"] and answer["end"] <= chunk.end
        return [{"answer": answer["text"] if holds else None}]

    def prediction(self, item: dict[str, Any]) -> dict[str, Any]:
        answer = item["answer"]
        keys = ("start", "end", "text", "confidence")
        return {"answer": None if answer is None else {k: answer.get(k) for k in keys}}

    def empty_prediction(self) -> dict[str, Any]:
        return {"answer": None}

    def gold_fields(self, item: dict[str, Any]) -> dict[str, Any]:
        answer = item["answer"]
        return {"answer": None if answer is None else {k: answer[k] for k in ("start", "end", "text")}}

    def score(self, task: Task, golds: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = qa_scores(
            [g["answer"] for g in golds], [p.get("answer") for p in predictions]
        ).to_dict()
        # Each answer given, with its confidence, against whether it is the gold answer (EM).
        pairs = [
            (p["answer"]["confidence"], g["answer"] is not None and _exact(g["answer"]["text"], p["answer"]["text"]))
            for g, p in zip(golds, predictions, strict=True)
            if p.get("answer") is not None and p["answer"].get("confidence") is not None
        ]
        return {**result, "calibration": calibration(pairs)}

    def synthesize(self, task: Task, world: NoteWorld, n: int, seed: int) -> list[dict[str, Any]]:
        """Questions about a fact the note states once (answer: its span) or, for an exact share,
        about something the note never mentions (answer: null)."""
        rng = random.Random(seed)
        unanswerable = set(rng.sample(range(n), round(n * _UNANSWERABLE_SHARE)))
        keys = world.question_keys()
        rows: list[dict[str, Any]] = []
        for i in range(n):
            while True:
                note = world.compose(rng, rng.choice(world.note_kinds))
                # Unanswerable: ask about something the note never mentions at all, so "null" is
                # the only right answer (not merely an ambiguous one).
                absent = [k for k in keys if k not in note.mentions]
                if i in unanswerable and absent:
                    key = rng.choice(absent)
                    answer: dict[str, Any] | None = None
                    break
                if i not in unanswerable and note.facts:
                    # The kind of question first (lab, dose, imaging, ...), then the key, so that
                    # common facts such as the imaging test do not crowd out the rest.
                    kinds = sorted({k.partition(":")[0] for k in note.facts})
                    kind = rng.choice(kinds)
                    key = rng.choice([k for k in note.facts if k.partition(":")[0] == kind])
                    fact = note.facts[key]
                    answer = {"start": fact.start, "end": fact.end, "text": fact.text}
                    break
            rows.append(
                {
                    "id": f"{world.language}-qa-{i:06d}",
                    "context": note.text,
                    "question": world.question(key, rng),
                    "answer": answer,
                }
            )
        return rows


def _cut_copy(answer: Span, chunk: Chunk | None, answers: list[Span]) -> bool:
    """Whether the answer is another chunk's longer answer cut off by its own chunk's edge."""
    return chunk is not None and any(cut_off(answer, chunk, other) for other in answers)


# -- metrics ---------------------------------------------------------------------------

# Elided Italian articles are stripped before punctuation removal, which would otherwise glue them
# to the noun ("l'asma" -> "lasma"). The \b keeps articulated prepositions ("dell'", "all'") intact.
_ELIDED_ARTICLES = re.compile(r"\b(?:l|un)['\u2019]")
_ARTICLES = re.compile(r"\b(?:a|an|the|il|lo|la|i|gli|le|un|uno|una)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation, extended for Italian: lowercase, drop articles and punctuation, collapse spaces.

    Punctuation is any Unicode category P* character, so « » ’ “ ” go too, not just ASCII. NFC first so
    that a precomposed and a decomposed "è" compare equal.
    """
    text = unicodedata.normalize("NFC", text).lower()
    text = _ELIDED_ARTICLES.sub(" ", text)
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _answer_text(answer: Mapping[str, object]) -> str:
    text = answer.get("text")
    if not isinstance(text, str):
        raise ValueError(f"answer text must be a string: {dict(answer)!r}")
    return text


def _exact(gold: str, pred: str) -> bool:
    return normalize_answer(gold) == normalize_answer(pred)


def _token_f1(gold: str, pred: str) -> float:
    gold_tokens, pred_tokens = normalize_answer(gold).split(), normalize_answer(pred).split()
    # As in the SQuAD script: an answer that normalises to nothing (e.g. only "the") matches only
    # another such answer, instead of dividing by zero.
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)
    common = sum((Counter(gold_tokens) & Counter(pred_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class QaScores:
    n: int
    exact_match: float
    token_f1: float
    n_has_answer: int
    has_answer_em: float | None
    has_answer_f1: float | None
    n_no_answer: int
    no_answer_accuracy: float | None

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = rounded(asdict(self))
        return result


def qa_scores(
    gold: Sequence[Mapping[str, object] | None],
    pred: Sequence[Mapping[str, object] | None],
) -> QaScores:
    """SQuAD 2.0 exact match and token F1, averaged over items.

    ``None`` is "no answer": it scores EM = F1 = 1.0 against ``None`` and 0.0 against any answer.
    Only ``None`` means no answer; ``{"text": ""}`` is an (empty) answer. The has-answer and
    no-answer breakdowns are split on the gold side and are ``None`` when that split is empty.
    """
    check_parallel(gold, pred)
    em: list[float] = []
    f1: list[float] = []
    has_em: list[float] = []
    has_f1: list[float] = []
    no_answer: list[float] = []
    for g, p in zip(gold, pred, strict=True):
        if g is None or p is None:
            item_em = item_f1 = float(g is None and p is None)
        else:
            gold_text, pred_text = _answer_text(g), _answer_text(p)
            item_em = float(normalize_answer(gold_text) == normalize_answer(pred_text))
            item_f1 = _token_f1(gold_text, pred_text)
        em.append(item_em)
        f1.append(item_f1)
        if g is None:
            no_answer.append(item_em)
        else:
            has_em.append(item_em)
            has_f1.append(item_f1)
    return QaScores(
        n=len(em),
        exact_match=mean(em),
        token_f1=mean(f1),
        n_has_answer=len(has_em),
        has_answer_em=mean(has_em) if has_em else None,
        has_answer_f1=mean(has_f1) if has_f1 else None,
        n_no_answer=len(no_answer),
        no_answer_accuracy=mean(no_answer) if no_answer else None,
    )
