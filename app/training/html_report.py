"""`report.html` beside an evaluation's report.json: one self-contained file that opens offline.

Charts are drawn by matplotlib and embedded as inline SVG (text as paths: no font, script or
stylesheet is fetched); each chart has a table of the same numbers under it, for screen
readers and for copying. What is shown: the run's facts and metrics, per-label precision,
recall and F1, the label confusion (span-matched for entities, document-level for single-label
classification), the reliability diagram of the confidences, and per-item accuracy for forms.

No note text is written: labels, counts and metrics only (a report is shared more widely than
the data it was computed on).
"""

from __future__ import annotations

import html
import io
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from app.tasks.entities import ner_scores
from app.tasks.scoring import PRF
from app.tasks.types.base import Task
from app.tasks.types.classification import classification_scores
from app.training.datasets import Record

MISSED = "(missed)"
SPURIOUS = "(spurious)"
_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 1rem auto; padding: 0 1rem; color: #1b1f24; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #d0d7de; padding: 0.2rem 0.5rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { margin: 1rem 0; } figcaption { color: #57606a; font-size: 0.9rem; }
svg { max-width: 100%; height: auto; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(header: Sequence[str], rows: Iterable[Sequence[object]], caption: str = "") -> str:
    head = "".join(f'<th scope="col">{_esc(h)}</th>' for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(_fmt(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    cap = f"<caption>{_esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: object) -> object:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "–" if value is None else value


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    # No metadata block (a date, namespace URIs): the same report twice is the same file.
    metadata = {"Creator": None, "Date": None, "Format": None, "Type": None}
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata=metadata)
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # inline: no XML declaration or doctype


def _figure(svg: str, caption: str) -> str:
    return f'<figure role="group" aria-label="{_esc(caption)}">{svg}<figcaption>{_esc(caption)}</figcaption></figure>'


# -- what is drawn ------------------------------------------------------------------------------
def per_label_prf(task: Task, records: Sequence[Record], predictions: Sequence[dict[str, Any]]) -> dict[str, PRF]:
    """Strict (exact offsets and label) P/R/F1 per entity label, or per class for classification."""
    if task.type in ("ner", "relations"):
        gold = [r.gold["entities"] for r in records]
        predicted = [p.get("entities", []) for p in predictions]
        return dict(ner_scores(gold, predicted).per_label_strict)
    if task.type == "classification":
        scores = classification_scores(
            [r.gold["labels"] for r in records], [p.get("labels", []) for p in predictions], labels=task.label_names
        )
        return {label: prf for label, prf in scores.per_label.items() if prf.tp + prf.fp + prf.fn}
    return {}


def confusion(
    task: Task, records: Sequence[Record], predictions: Sequence[dict[str, Any]]
) -> Counter[tuple[str, str]] | None:
    """(gold label, predicted label) counts: entities matched by exact offsets (a gold entity no
    prediction covers is MISSED, a prediction no gold entity has is SPURIOUS); single-label
    classification by document. None where a confusion does not apply."""
    pairs: Counter[tuple[str, str]] = Counter()
    if task.type in ("ner", "relations"):
        for record, prediction in zip(records, predictions, strict=True):
            predicted: dict[tuple[int, int], list[str]] = {}
            for e in prediction.get("entities", []):
                predicted.setdefault((e["start"], e["end"]), []).append(e["label"])
            gold_at: set[tuple[int, int]] = set()
            for e in record.gold["entities"]:
                where = (e["start"], e["end"])
                gold_at.add(where)
                labels = predicted.get(where, [])
                pairs[(e["label"], e["label"] if e["label"] in labels else (labels[0] if labels else MISSED))] += 1
            for where, labels in predicted.items():
                if where not in gold_at:
                    for label in labels:
                        pairs[(SPURIOUS, label)] += 1
        return pairs
    if task.type == "classification" and not task.manifest.multi_label:
        for record, prediction in zip(records, predictions, strict=True):
            got = prediction.get("labels", [])
            pairs[(record.gold["labels"][0], got[0] if got else MISSED)] += 1
        return pairs
    return None


def _prf_chart(prf: dict[str, PRF]) -> str:
    import matplotlib.pyplot as plt
    import numpy as np

    labels = list(prf)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(labels) + 2), 3.4))
    for k, (name, values) in enumerate(
        [
            ("precision", [p.precision for p in prf.values()]),
            ("recall", [p.recall for p in prf.values()]),
            ("F1", [p.f1 for p in prf.values()]),
        ]
    ):
        ax.bar(
            x + (k - 1) * 0.27, values, 0.27, label=name, hatch=["", "//", ".."][k], edgecolor="black", linewidth=0.4
        )
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.legend(fontsize=8, ncols=3, loc="upper center", bbox_to_anchor=(0.5, 1.18))
    return _svg(fig)


def _confusion_chart(pairs: Counter[tuple[str, str]]) -> tuple[str, list[str], list[str]]:
    import matplotlib.pyplot as plt
    import numpy as np

    rows = sorted({g for g, _ in pairs} - {SPURIOUS}) + ([SPURIOUS] if any(g == SPURIOUS for g, _ in pairs) else [])
    cols = sorted({p for _, p in pairs} - {MISSED}) + ([MISSED] if any(p == MISSED for _, p in pairs) else [])
    grid = np.array([[pairs.get((r, c), 0) for c in cols] for r in rows])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(cols) + 2), max(3.0, 0.5 * len(rows) + 1.5)))
    ax.imshow(grid, cmap="Blues")
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(
                j,
                i,
                str(grid[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if grid[i, j] > grid.max() / 2 else "black",
            )
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    return _svg(fig), rows, cols


def _reliability_chart(calibration: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    bins = calibration["bins"]
    fig, ax = plt.subplots(figsize=(4.4, 4.0))
    ax.plot([0, 1], [0, 1], linestyle=":", color="gray", label="perfectly calibrated")
    ax.bar(
        [(b["range"][0] + b["range"][1]) / 2 for b in bins],
        [b["accuracy"] for b in bins],
        width=0.09,
        edgecolor="black",
        linewidth=0.4,
        label="share right",
    )
    ax.plot(
        [b["confidence"] for b in bins],
        [b["accuracy"] for b in bins],
        marker="o",
        color="black",
        label="mean confidence",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("share right")
    ax.legend(fontsize=7, loc="upper left")
    return _svg(fig)


def _items_chart(accuracy: dict[str, float | None]) -> str:
    import matplotlib.pyplot as plt

    names = list(accuracy)
    fig, ax = plt.subplots(figsize=(6.0, max(2.5, 0.28 * len(names) + 1)))
    ax.barh(names, [v or 0.0 for v in accuracy.values()], edgecolor="black", linewidth=0.4)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    ax.tick_params(axis="y", labelsize=7)
    return _svg(fig)


def render_html(
    task: Task,
    report: dict[str, Any],
    rows: dict[str, float | None],
    records: Sequence[Record],
    predictions: Sequence[dict[str, Any]],
) -> str:
    """The page for `report` (evaluate.build_report), `rows` its metrics as table rows."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "medlora"  # the same report twice is the same file

    title = f"Evaluation of {report['task']}: {report['run']}"
    facts = [
        ("data", f"{report['data']} ({report['n']} records)"),
        (
            "adapter",
            (report["adapter"] or "none (base model)")
            + (f", {report['few_shot']}-shot" if report["few_shot"] is not None else ""),
        ),
        ("failed requests", report["failed"]),
        ("prediction time", f"{report['seconds']:.1f} s"),
    ]
    parts = [
        f"<h1>{_esc(title)}</h1>",
        "<dl>" + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in facts) + "</dl>",
        "<h2>Metrics</h2>",
        _table(["metric", "value"], rows.items()),
    ]
    scored = [(r, p) for r, p in zip(records, predictions, strict=True) if "error" not in p]
    ok_records, ok_predictions = [r for r, _ in scored], [p for _, p in scored]
    prf = per_label_prf(task, ok_records, ok_predictions)
    if prf:
        parts += [
            "<h2>Per label</h2>",
            _figure(_prf_chart(prf), "Precision, recall and F1 per label (strict: exact offsets and label)."),
            _table(
                ["label", "precision", "recall", "F1", "tp", "fp", "fn"],
                [(k, v.precision, v.recall, v.f1, v.tp, v.fp, v.fn) for k, v in prf.items()],
            ),
        ]
    pairs = confusion(task, ok_records, ok_predictions)
    if pairs:
        svg, golds, cols = _confusion_chart(pairs)
        parts += [
            "<h2>Label confusion</h2>",
            _figure(svg, "Gold label (rows) against predicted label (columns)."),
            _table(["gold \\ predicted", *cols], [[g, *(pairs.get((g, c), 0) for c in cols)] for g in golds]),
        ]
    calibration = report["metrics"].get("calibration")
    if calibration and calibration.get("bins"):
        parts += [
            "<h2>Reliability of the confidences</h2>",
            _figure(_reliability_chart(calibration), f"{calibration['n']} scored, ECE {calibration['ece']:.3f}."),
            _table(
                ["confidence", "n", "mean confidence", "share right"],
                [
                    (f"{b['range'][0]:.1f}-{b['range'][1]:.1f}", b["n"], b["confidence"], b["accuracy"])
                    for b in calibration["bins"]
                ],
            ),
        ]
    items = report["metrics"].get("per_item_accuracy")
    if task.type == "form" and items:
        parts += [
            "<h2>Per form item</h2>",
            _figure(_items_chart(items), "Accuracy of each item's value over the records."),
            _table(["item", "accuracy"], items.items()),
        ]
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{_STYLE}</style></head><body>" + "".join(parts) + "</body></html>\n"
    )
