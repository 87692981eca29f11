"""`report.html`: an evaluation's charts in one file that opens offline, without note text."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from app.settings import PACKAGE_DIR
from app.training.datasets import Record
from app.training.evaluate import build_report, publish_report, write_report
from app.training.html_report import MISSED, SPURIOUS, confusion, per_label_prf
from tests.conftest import shipped_task
from tests.fakes import confidences_at, part_ranges
from tests.test_evaluate import NER_CONFIDENCE, NER_OUT, NER_ROWS, MakeService, load, responder, run_in_process


def test_ner_report_has_per_label_scores_confusion_and_reliability_without_note_text(
    make_fake_service: MakeService, tmp_path: Path
) -> None:
    logprob = confidences_at(part_ranges("entities"), NER_CONFIDENCE, per_token=True)
    service, _ = make_fake_service(responder(NER_OUT), logprob=logprob)
    task = service.tasks["ner-it-clinical"]
    records = load(task, tmp_path, NER_ROWS)
    predictions = run_in_process(service, task, records)

    # By hand (tests/test_evaluate.py's rows): "tosse" labelled DISORDER, "1" and "dolore" cut short.
    assert confusion(task, records, predictions) == {
        ("SYMPTOM", "SYMPTOM"): 1,
        ("SYMPTOM", "DISORDER"): 1,
        ("DRUG", "DRUG"): 1,
        ("DOSAGE", MISSED): 1,
        (SPURIOUS, "DOSAGE"): 1,
        ("SYMPTOM", MISSED): 1,
        (SPURIOUS, "SYMPTOM"): 1,
    }
    symptom = per_label_prf(task, records, predictions)["SYMPTOM"]
    assert (symptom.tp, symptom.fp, symptom.fn) == (1, 1, 2)

    report = build_report(task, records, predictions, run="r", data="d", adapter="a@1", few_shot=None, seconds=1.0)
    out = write_report(tmp_path / "out", report, records, predictions, task)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("<svg") == 3  # per label, confusion, reliability
    assert "<td>SYMPTOM</td><td>0.500</td><td>0.333</td>" in page  # P 1/2, R 1/3
    assert "<td>(spurious)</td>" in page and "(missed)" in page
    # Self-contained: no script, no link, nothing fetched from anywhere.
    assert "<script" not in page and "<link" not in page
    # The same report twice is the same file (no date or random ids in the charts).
    assert (
        write_report(tmp_path / "again", report, records, predictions, task)
        .joinpath("report.html")
        .read_text(encoding="utf-8")
        == page
    )
    # Only SVG's own #references and inline data: images (the confusion heat map).
    assert not re.findall(r'(?:src|href)="(?!#|data:)', page)
    for row in NER_ROWS:  # counts and labels only
        assert str(row["text"]) not in page and "febbre" not in page


def test_single_label_classification_confusion_is_by_document() -> None:
    task = shipped_task("classify-it-note-type")
    a, b = task.label_names[:2]
    records = [Record(i + 1, f"d{i}", {"text": "x"}, {"labels": [gold]}) for i, gold in enumerate([a, a, b])]
    predictions = [{"labels": [a]}, {"labels": [b]}, {"labels": []}]
    assert confusion(task, records, predictions) == {(a, a): 1, (a, b): 1, (b, MISSED): 1}
    prf = per_label_prf(task, records, predictions)
    assert (prf[a].tp, prf[a].fp, prf[a].fn) == (1, 0, 1) and (prf[b].tp, prf[b].fp, prf[b].fn) == (0, 1, 1)


def test_an_adapters_latest_report_is_served_and_linked_from_its_task(client_for: Any, tmp_path: Path) -> None:
    client, _ = client_for(lambda r: '{"entities": []}')
    task = next(t for t in client.get("/v1/tasks").json()["tasks"] if t["name"] == "ner-it-clinical")
    assert task["adapter_report"] is None
    url = f"/v1/adapters/{task['adapter']['name']}/{task['adapter']['version']}/report"
    missing = client.get(url)
    assert (missing.status_code, missing.json()["type"]) == (404, "urn:medlora:problem:not-found")
    adapter = next(a for a in client.get("/v1/adapters").json()["adapters"] if a["name"] == task["adapter"]["name"])
    out = tmp_path / "eval"
    out.mkdir()
    (out / "report.html").write_text("<!doctype html><title>report</title><h1>ner</h1>")
    assert publish_report(out, Path(adapter["path"])) == Path(adapter["path"]) / "eval-report.html"
    task = next(t for t in client.get("/v1/tasks").json()["tasks"] if t["name"] == "ner-it-clinical")
    assert task["adapter_report"] == url
    served = client.get(url)
    assert served.status_code == 200 and served.text.endswith("<h1>ner</h1>")
    assert served.headers["content-type"].startswith("text/html")
    policy = served.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "sandbox" in policy and "script" not in policy


def test_a_report_is_never_written_into_the_installed_package(tmp_path: Path) -> None:
    (tmp_path / "report.html").write_text("<html></html>")
    shipped = PACKAGE_DIR / "data" / "demo" / "adapters" / "ner-it-clinical"
    assert shipped.is_dir()
    assert publish_report(tmp_path, shipped) is None
    assert not (shipped / "eval-report.html").exists()
