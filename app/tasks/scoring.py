"""What every task type's metrics share (the metrics themselves live with their type), on the
data shapes the service API returns.

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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["PRF", "calibration", "check_parallel", "markdown_table", "mean", "rounded"]

_ROUND = 4


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, _ROUND)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(item) for item in value]
    return value


def check_parallel(gold: Sequence[object], pred: Sequence[object]) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"gold and pred must be parallel: {len(gold)} gold vs {len(pred)} pred")


def mean(values: Sequence[float]) -> float:
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
        result: dict[str, Any] = rounded(asdict(self))
        return result


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


def calibration(pairs: Iterable[tuple[float, bool]], bins: int = 10) -> dict[str, Any]:
    """How well confidences match how often they are right: expected calibration error and a
    reliability table over `bins` equal-width bins of [0, 1].

    ECE = sum over bins of (n_bin / n) * |mean confidence - accuracy| (0 is perfect). Only
    non-empty bins are listed; with no pairs at all ECE is None.
    """
    rows: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    n = 0
    for confidence, correct in pairs:
        rows[min(int(confidence * bins), bins - 1)].append((confidence, correct))
        n += 1
    table: list[dict[str, Any]] = []
    ece = 0.0
    for b, row in enumerate(rows):
        if not row:
            continue
        mean_confidence = mean([c for c, _ in row])
        accuracy = mean([float(ok) for _, ok in row])
        ece += len(row) / n * abs(mean_confidence - accuracy)
        table.append(
            {"range": [b / bins, (b + 1) / bins], "n": len(row), "confidence": mean_confidence, "accuracy": accuracy}
        )
    result: dict[str, Any] = rounded({"n": n, "ece": ece if n else None, "bins": table})
    return result
