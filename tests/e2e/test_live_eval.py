"""`medlora eval` over HTTP against the real service (vLLM, random-weight adapters).

Random weights make the scores meaningless, but not their bookkeeping: every record gets a
prediction, nothing fails, and the report's metrics are exactly those of its saved predictions.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from app.settings import REPO_ROOT
from app.tasks.manifests import load_tasks
from app.training.datasets import load_records
from app.training.evaluate import build_report, predict_via_url, read_predictions, score, write_report
from app.training.synthetic import examples_for_task, write_jsonl
from tests.e2e.conftest import LiveServer

pytestmark = pytest.mark.e2e


def test_eval_report_matches_its_saved_predictions(live_server: LiveServer, tmp_path: Path) -> None:
    task = load_tasks(REPO_ROOT / "adapters", REPO_ROOT / "schemas")["ner-it-clinical"]
    # The 6 shortest of 30 synthetic notes: a real but quick run on CPU.
    rows = sorted(examples_for_task(task, 30, seed=21), key=lambda row: len(row["text"]))[:6]
    data = tmp_path / "ner.jsonl"
    write_jsonl(data, rows)
    records = load_records(task, data)

    started = time.perf_counter()
    predictions = asyncio.run(predict_via_url(live_server.url, task, records, batch_size=3, concurrency=2))
    report = build_report(
        task,
        records,
        predictions,
        run="live",
        data=str(data),
        adapter="ner-it-clinical@1",
        few_shot=None,
        seconds=time.perf_counter() - started,
    )
    out = write_report(tmp_path / "eval", report, records, predictions, task)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("<svg") >= 2 and "http://" not in page.replace("http://www.w3.org/", "")
    assert not [r.id for r in records if r.payload["text"][:40] in page]  # labels and numbers, never notes

    saved = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert saved["n"] == 6
    assert saved["failed"] == 0, saved["first_error"]
    reread = read_predictions(out / "predictions.jsonl", records)
    assert score(task, records, reread) == saved["metrics"] == report["metrics"]
    assert saved["metrics"]["n"] == 6
    for record, prediction in zip(records, reread, strict=True):
        for entity in prediction["entities"]:
            assert record.payload["text"][entity["start"] : entity["end"]] == entity["text"]
            assert entity["label"] in task.label_names
