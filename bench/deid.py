"""De-identification on synthetic Italian and English notes with invented PHI planted at known
offsets (app/training/synthetic/phi.py): recall per PHI type, precision, overall recall of
the identifiers with a checksum or a fixed shape, and whether any planted identifier is still
in the masked text.

    python -m bench.deid --notes 200                        # the deterministic detectors alone
    python -m bench.deid --notes 200 --url http://127.0.0.1:8000   # detectors + model (POST /v1/deid)

A planted identifier counts as found when the spans returned cover every one of its
characters (whatever label they carry: a masked identifier is masked), and as leaked when
its text is still in `deidentified`. A returned span is right (precision) when it overlaps a
planted one. Notes are held out from the demo adapter's training data (another seed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

import httpx

from app.settings import Settings
from app.tasks.manifests import load_tasks
from app.tasks.phi_detectors import FIXED_SHAPE_LABELS, detect_phi
from app.tasks.surrogates import deidentify
from app.tasks.types.base import Tally
from app.tasks.types.deid import DEFAULT_TASK, join_spans
from app.training.synthetic import examples_for_task

SEED = 4242  # neither the demo's training (1) nor its held-out (99) notes


def detectors_only(text: str) -> dict[str, Any]:
    spans = join_spans(text, detect_phi(text), [], Tally())
    masked, _ = deidentify(text, spans, "mask")
    return {"spans": [{"start": s.start, "end": s.end, "label": s.label} for s in spans], "deidentified": masked}


def through_service(url: str, rows: list[dict[str, Any]], batch: int = 8) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, timeout=600) as client:
        for i in range(0, len(rows), batch):
            docs = [{"id": r["id"], "text": r["text"]} for r in rows[i : i + batch]]
            response = client.post("/v1/deid", json={"task": DEFAULT_TASK, "documents": docs, "replace": "mask"})
            response.raise_for_status()
            out += response.json()["documents"]
    return out


def score(rows: list[dict[str, Any]], answers: list[dict[str, Any]]) -> dict[str, Any]:
    found, planted, leaked = Counter[str](), Counter[str](), Counter[str]()
    right = returned = 0
    for row, answer in zip(rows, answers, strict=True):
        covered = set()
        for span in answer["spans"]:
            covered.update(range(span["start"], span["end"]))
            returned += 1
            right += any(span["start"] < g["end"] and g["start"] < span["end"] for g in row["spans"])
        for gold in row["spans"]:
            planted[gold["label"]] += 1
            found[gold["label"]] += all(k in covered for k in range(gold["start"], gold["end"]))
            # An age is a two-digit number that other numbers of the note can repeat: not a leak test.
            leaked[gold["label"]] += gold["label"] != "AGE" and gold["text"] in answer["deidentified"]
    fixed = [label for label in planted if label in FIXED_SHAPE_LABELS]
    return {
        "notes": len(rows),
        "per_label": {
            label: {
                "planted": planted[label],
                "recall": round(found[label] / planted[label], 4),
                "leaked": leaked[label],
            }
            for label in sorted(planted)
        },
        "fixed_shape_recall": round(sum(found[x] for x in fixed) / max(1, sum(planted[x] for x in fixed)), 4),
        "recall": round(sum(found.values()) / max(1, sum(planted.values())), 4),
        "precision": round(right / returned, 4) if returned else 1.0,
        "fixed_shape_leaked": sum(leaked[x] for x in fixed),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", type=int, default=200, help="Notes in all, shared between Italian and English.")
    parser.add_argument("--url", help="A running medlora service: detectors + model through POST /v1/deid.")
    args = parser.parse_args(argv)
    settings = Settings()
    task = load_tasks(settings.tasks_dir, settings.schemas_dir)[DEFAULT_TASK]
    rows = examples_for_task(task, args.notes, SEED)
    answers = through_service(args.url, rows) if args.url else [detectors_only(r["text"]) for r in rows]
    result = {"mode": "detectors+model" if args.url else "detectors", **score(rows, answers)}
    by_language = {
        lang: score(
            [r for r in rows if r["id"].startswith(lang)],
            [a for r, a in zip(rows, answers, strict=True) if r["id"].startswith(lang)],
        )
        for lang in task.manifest.languages
    }
    result["by_language"] = {lang: {k: v for k, v in s.items() if k != "per_label"} for lang, s in by_language.items()}
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
