"""Evaluation metrics for the three tasks, on the same data shapes the service API returns.

Conventions (shared by every function here):

* Documents/items come as parallel sequences in the same order; differing lengths raise ValueError.
* Precision/recall/F1 from counts: P = tp/(tp+fp), R = tp/(tp+fn), F1 = 2PR/(P+R), each 0.0 when its
  denominator is 0 -- except when there is nothing in gold *and* nothing predicted (tp = fp = fn = 0),
  which scores P = R = F1 = 1.0: nothing to find and nothing wrongly found is a perfect result, and
  scoring it 0.0 would punish a model for correctly staying silent.
* A mean over zero items (QA with no items, classification with no documents) is reported as 0.0;
  the accompanying ``n`` tells the caller the number is vacuous.
* ``to_dict()`` rounds floats to 4 decimals so JSON reports diff cleanly between runs.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "PRF",
    "ClassScores",
    "NerScores",
    "QaScores",
    "classification_scores",
    "markdown_table",
    "ner_scores",
    "normalize_answer",
    "qa_scores",
]

_ROUND = 4


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, _ROUND)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(item) for item in value]
    return value


def _check_parallel(gold: Sequence[object], pred: Sequence[object]) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"gold and pred must be parallel: {len(gold)} gold vs {len(pred)} pred")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


@dataclass(frozen=True)
class PRF:
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int

    @classmethod
    def from_counts(cls, tp: int, fp: int, fn: int) -> PRF:
        if tp == fp == fn == 0:
            return cls(1.0, 1.0, 1.0, 0, 0, 0)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return cls(precision, recall, f1, tp, fp, fn)

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = _rounded(asdict(self))
        return result


# --------------------------------------------------------------------------------------------- NER


@dataclass(frozen=True, order=True)
class _Span:
    start: int
    end: int
    label: str


@dataclass(frozen=True)
class NerScores:
    strict: PRF
    lenient: PRF
    per_label_strict: dict[str, PRF]
    per_label_lenient: dict[str, PRF]

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = _rounded(asdict(self))
        return result


def _entity_span(entity: Mapping[str, object]) -> _Span:
    start, end, label = entity.get("start"), entity.get("end"), entity.get("label")
    # bool is an int subclass; a True offset is a data bug, not offset 1.
    if not isinstance(start, int) or isinstance(start, bool) or not isinstance(end, int) or isinstance(end, bool):
        raise ValueError(f"entity offsets must be ints: {dict(entity)!r}")
    if not isinstance(label, str):
        raise ValueError(f"entity label must be a string: {dict(entity)!r}")
    if start < 0 or end < start:
        raise ValueError(f"entity offsets must satisfy 0 <= start <= end: {dict(entity)!r}")
    return _Span(start, end, label)


def _by_label(entities: Iterable[Mapping[str, object]]) -> dict[str, set[_Span]]:
    # A set per label: the same (start, end, label) emitted twice is one mention, so it can be
    # neither a second TP nor an FP; gold is deduped the same way so both sides count alike.
    grouped: dict[str, set[_Span]] = defaultdict(set)
    for entity in entities:
        span = _entity_span(entity)
        grouped[span.label].add(span)
    return grouped


def _overlap_matches(gold: set[_Span], pred: set[_Span]) -> int:
    # One-to-one matching, so two preds over one gold give 1 TP + 1 FP. Greedy: preds in order of
    # end offset, each taking the unmatched overlapping gold that ends first. For intervals this
    # greedy is a maximum matching (exchange argument: any later pred that could use the gold we
    # took can use whichever later-ending gold the optimum gave us instead), so the count does not
    # depend on the order entities were listed in.
    free = sorted(gold, key=lambda s: (s.end, s.start))
    matched = 0
    for p in sorted(pred, key=lambda s: (s.end, s.start)):
        for i, g in enumerate(free):
            if p.start < g.end and g.start < p.end:
                del free[i]
                matched += 1
                break
    return matched


def ner_scores(
    gold: Sequence[Sequence[Mapping[str, object]]],
    pred: Sequence[Sequence[Mapping[str, object]]],
) -> NerScores:
    """Micro-averaged strict (exact start, end, label) and lenient (same label, ranges overlap) scores.

    Exact duplicates (same start, end, label in one document) are collapsed on both sides first.
    Lenient matching is one-to-one (see ``_overlap_matches``). Per-label dicts hold every label seen
    in gold or pred; the micro scores are the per-label counts summed.
    """
    _check_parallel(gold, pred)
    strict: dict[str, Counter[str]] = defaultdict(Counter)
    lenient: dict[str, Counter[str]] = defaultdict(Counter)
    for gold_doc, pred_doc in zip(gold, pred, strict=True):
        gold_by_label, pred_by_label = _by_label(gold_doc), _by_label(pred_doc)
        for label in gold_by_label.keys() | pred_by_label.keys():
            g, p = gold_by_label.get(label, set()), pred_by_label.get(label, set())
            exact = len(g & p)
            strict[label].update(tp=exact, fp=len(p) - exact, fn=len(g) - exact)
            overlapping = _overlap_matches(g, p)
            lenient[label].update(tp=overlapping, fp=len(p) - overlapping, fn=len(g) - overlapping)

    def totals(counts: dict[str, Counter[str]]) -> tuple[PRF, dict[str, PRF]]:
        per_label = {label: PRF.from_counts(c["tp"], c["fp"], c["fn"]) for label, c in sorted(counts.items())}
        micro = PRF.from_counts(*(sum(c[key] for c in counts.values()) for key in ("tp", "fp", "fn")))
        return micro, per_label

    strict_micro, strict_per_label = totals(strict)
    lenient_micro, lenient_per_label = totals(lenient)
    return NerScores(strict_micro, lenient_micro, strict_per_label, lenient_per_label)


# ---------------------------------------------------------------------------------------------- QA

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
        result: dict[str, Any] = _rounded(asdict(self))
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
    _check_parallel(gold, pred)
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
        exact_match=_mean(em),
        token_f1=_mean(f1),
        n_has_answer=len(has_em),
        has_answer_em=_mean(has_em) if has_em else None,
        has_answer_f1=_mean(has_f1) if has_f1 else None,
        n_no_answer=len(no_answer),
        no_answer_accuracy=_mean(no_answer) if no_answer else None,
    )


# ---------------------------------------------------------------------------------- classification


@dataclass(frozen=True)
class ClassScores:
    n: int
    accuracy: float
    macro_f1: float
    micro_f1: float
    per_label: dict[str, PRF]

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = _rounded(asdict(self))
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
    _check_parallel(gold, pred)
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
    macro_f1 = _mean([s.f1 for s in seen]) if seen else 1.0
    accuracy = _mean([float(g == p) for g, p in zip(gold_sets, pred_sets, strict=True)])
    return ClassScores(len(gold_sets), accuracy, macro_f1, micro.f1, per_label)


# ------------------------------------------------------------------------------------------ report


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(runs: Mapping[str, Mapping[str, float | None]]) -> str:
    """Side-by-side comparison: one row per metric, one column per run, values to 3 decimals.

    Metrics appear in first-seen order across runs; a metric a run lacks (or has as ``None``, as
    in ``QaScores.to_dict()``) shows "–".
    """
    metrics = list(dict.fromkeys(metric for values in runs.values() for metric in values))
    header = "| " + " | ".join(["metric", *(_cell(name) for name in runs)]) + " |"
    rule = "|---|" + "---:|" * len(runs)
    lines = [header, rule]
    for metric in metrics:
        cells = []
        for values in runs.values():
            value = values.get(metric)
            cells.append("–" if value is None else f"{value:.3f}")
        lines.append("| " + " | ".join([_cell(metric), *cells]) + " |")
    return "\n".join(lines) + "\n"
