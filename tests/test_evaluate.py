"""Evaluation through the serving path, against the fake engine: metrics checked by hand."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.engine.base import GenerationRequest
from app.main import app_for
from app.settings import REPO_ROOT
from app.tasks.manifests import load_tasks
from app.tasks.service import Service
from app.tasks.types.base import Task
from app.training import evaluate
from app.training.datasets import Record, load_records
from app.training.evaluate import (
    AdapterChoice,
    add_compare_arguments,
    add_eval_arguments,
    build_report,
    compare_main,
    eval_main,
    predict_in_process,
    predict_via_url,
    read_predictions,
    score,
    write_report,
)
from app.training.synthetic import write_jsonl
from tests.fakes import FakeEngine, confidences_at, last_input, part_ranges, prompt_of

ALL_FALSE = {"negated": False, "uncertain": False, "historical": False, "family": False}
MakeService = Callable[..., tuple[Service, FakeEngine]]


def ents(*items: tuple[str, str]) -> str:
    return json.dumps({"entities": [[t, lab] for t, lab in items]})


def responder(outputs: dict[str, str]) -> Callable[[GenerationRequest], str]:
    """Answer by the document (or QA context) in the prompt's last turn."""
    return lambda request: outputs[last_input(request)]


def load(task: Task, tmp_path: Path, rows: list[dict[str, Any]]) -> list[Record]:
    path = tmp_path / f"{task.name}.jsonl"
    write_jsonl(path, rows)
    return load_records(task, path)


def run_in_process(
    service: Service, task: Task, records: list[Record], adapter: AdapterChoice = None, batch_size: int = 2
) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        await service.start()
        try:
            return await predict_in_process(
                service, task, records, adapter=adapter, batch_size=batch_size, concurrency=2
            )
        finally:
            await service.stop()

    return asyncio.run(go())


# ------------------------------------------------------------------------------- NER

D1, D2, D3 = "Paziente con febbre e tosse.", "In terapia con amoxicillina 1 g.", "Nega dolore toracico."
NER_ROWS = [
    {
        "id": "d1",
        "text": D1,
        "entities": [{"start": 13, "end": 19, "label": "SYMPTOM"}, {"start": 22, "end": 27, "label": "SYMPTOM"}],
    },
    {
        "id": "d2",
        "text": D2,
        "entities": [{"start": 15, "end": 27, "label": "DRUG"}, {"start": 28, "end": 31, "label": "DOSAGE"}],
    },
    {
        "id": "d3",
        "text": D3,
        "entities": [{"start": 5, "end": 20, "label": "SYMPTOM", "attributes": {"negated": True}}],
    },
]
NER_OUT = {
    D1: ents(("febbre", "SYMPTOM"), ("tosse", "DISORDER")),  # one right, one with the wrong label
    D2: ents(("amoxicillina", "DRUG"), ("1", "DOSAGE")),  # one right, one cut short
    D3: ents(("dolore", "SYMPTOM")),  # cut short
}


# The confidence each answer's parts get from the fake engine, in the order the answer lists them.
NER_CONFIDENCE = {
    NER_OUT[D1]: [0.9, 0.6],  # febbre (right), tosse/DISORDER (wrong)
    NER_OUT[D2]: [0.8, 0.3],  # amoxicillina (right), "1" (wrong)
    NER_OUT[D3]: [0.65],  # dolore (wrong)
}


def test_ner_metrics_match_hand_computation(make_fake_service: MakeService, tmp_path: Path) -> None:
    logprob = confidences_at(part_ranges("entities"), NER_CONFIDENCE, per_token=True)
    service, engine = make_fake_service(responder(NER_OUT), logprob=logprob)
    task = service.tasks["ner-it-clinical"]
    records = load(task, tmp_path, NER_ROWS)
    predictions = run_in_process(service, task, records)
    assert [[(e["text"], e["label"]) for e in p["entities"]] for p in predictions] == [
        [("febbre", "SYMPTOM"), ("tosse", "DISORDER")],
        [("amoxicillina", "DRUG"), ("1", "DOSAGE")],
        [("dolore", "SYMPTOM")],
    ]
    dosage = {"start": 28, "end": 29, "text": "1", "label": "DOSAGE", "attributes": ALL_FALSE, "confidence": 0.3}
    dosage["codes"] = []  # DOSAGE has no terminology
    assert predictions[1]["entities"][1] == dosage
    assert len(engine.calls) == 3 and all(c.adapter is not None for c in engine.calls)
    metrics = score(task, records, predictions)
    # Strict (exact start, end, label):
    #   d1: febbre ✓; tosse/DISORDER is an FP and gold tosse/SYMPTOM an FN   -> tp 1, fp 1, fn 1
    #   d2: amoxicillina ✓; "1" ≠ "1 g"                                       -> tp 1, fp 1, fn 1
    #   d3: "dolore" ≠ "dolore toracico"                                      -> tp 0, fp 1, fn 1
    #   tp 2, fp 3, fn 3: P = 2/5 = 0.4, R = 2/5 = 0.4, F1 = 0.4
    assert metrics["strict"] == {"precision": 0.4, "recall": 0.4, "f1": 0.4, "tp": 2, "fp": 3, "fn": 3}
    # Lenient (same label, overlapping): "1" overlaps "1 g", "dolore" overlaps "dolore toracico";
    #   tosse/DISORDER still has no DISORDER gold.  tp 4, fp 1, fn 1: P = R = F1 = 4/5 = 0.8
    assert metrics["lenient"] == {"precision": 0.8, "recall": 0.8, "f1": 0.8, "tp": 4, "fp": 1, "fn": 1}
    # Per label, strict F1:
    #   SYMPTOM: gold febbre, tosse, dolore toracico; pred febbre, dolore -> tp 1, fp 1, fn 2:
    #            P = 1/2, R = 1/3, F1 = 2·(1/2)(1/3)/(1/2 + 1/3) = (1/3)/(5/6) = 0.4
    #   DISORDER: tp 0, fp 1 -> 0.0;  DRUG: tp 1 -> 1.0;  DOSAGE: tp 0, fp 1, fn 1 -> 0.0
    assert metrics["per_label_strict_f1"] == {"DISORDER": 0.0, "DOSAGE": 0.0, "DRUG": 1.0, "SYMPTOM": 0.4}
    assert metrics["n"] == 3
    # Calibration, 10 bins: 0.9 right (bin 9); 0.8 right (bin 8); 0.6 and 0.65 wrong (bin 6, mean
    # 0.625); 0.3 wrong (bin 3). ECE = (0.1 + 0.2 + 2 * 0.625 + 0.3) / 5 = 1.85 / 5 = 0.37
    assert metrics["calibration"] == {
        "n": 5,
        "ece": 0.37,
        "bins": [
            {"range": [0.3, 0.4], "n": 1, "confidence": 0.3, "accuracy": 0.0},
            {"range": [0.6, 0.7], "n": 2, "confidence": 0.625, "accuracy": 0.0},
            {"range": [0.8, 0.9], "n": 1, "confidence": 0.8, "accuracy": 1.0},
            {"range": [0.9, 1.0], "n": 1, "confidence": 0.9, "accuracy": 1.0},
        ],
    }


# -------------------------------------------------------------------------------- QA

C1, C2 = "Dimesso con furosemide 25 mg.", "Terapia: ramipril 5 mg al mattino."
C3, C4 = "Nessuna allergia nota.", "Febbre e tosse da tre giorni."
QA_ROWS = [
    {"id": "q1", "context": C1, "question": "Quale diuretico?", "answer": {"start": 12, "end": 22}},
    {
        "id": "q2",
        "context": C2,
        "question": "Quale terapia?",
        "answer": {"start": 9, "end": 22, "text": "ramipril 5 mg"},
    },
    {"id": "q3", "context": C3, "question": "Quale antibiotico?", "answer": None},
    {"id": "q4", "context": C4, "question": "Quale farmaco?", "answer": None},
]
QA_OUT = {
    C1: json.dumps({"answer": "furosemide"}),  # exact
    C2: json.dumps({"answer": "ramipril"}),  # partial
    C3: json.dumps({"answer": None}),  # correctly unanswered
    C4: json.dumps({"answer": "Febbre"}),  # answers the unanswerable
}


QA_CONFIDENCE = {QA_OUT[C1]: [0.95], QA_OUT[C2]: [0.7], QA_OUT[C3]: [0.5], QA_OUT[C4]: [0.4]}


def test_qa_metrics_match_hand_computation(make_fake_service: MakeService, tmp_path: Path) -> None:
    logprob = confidences_at(part_ranges("answer"), QA_CONFIDENCE, per_token=False)
    service, _ = make_fake_service(responder(QA_OUT), logprob=logprob)
    task = service.tasks["qa-it-clinical"]
    records = load(task, tmp_path, QA_ROWS)
    predictions = run_in_process(service, task, records, batch_size=3)
    assert predictions == [
        {"answer": {"start": 12, "end": 22, "text": "furosemide", "confidence": 0.95}},
        {"answer": {"start": 9, "end": 17, "text": "ramipril", "confidence": 0.7}},
        {"answer": None},
        {"answer": {"start": 0, "end": 6, "text": "Febbre", "confidence": 0.4}},
    ]
    # EM:       q1 1, q2 0, q3 1 (null = null), q4 0 (answer for null)           -> 2/4 = 0.5
    # token F1: q1 1; q2 gold [ramipril, 5, mg] vs pred [ramipril]: P 1, R 1/3,
    #           F1 = 2·(1/3)/(4/3) = 0.5; q3 1; q4 0                              -> 2.5/4 = 0.625
    # has-answer (q1, q2): EM 1/2 = 0.5, F1 (1 + 0.5)/2 = 0.75; no-answer (q3, q4): 1/2 = 0.5
    assert score(task, records, predictions) == {
        "n": 4,
        "exact_match": 0.5,
        "token_f1": 0.625,
        "n_has_answer": 2,
        "has_answer_em": 0.5,
        "has_answer_f1": 0.75,
        "n_no_answer": 2,
        "no_answer_accuracy": 0.5,
        # The answers given: 0.95 right, 0.7 wrong ("ramipril" is not "ramipril 5 mg"), 0.4 wrong.
        # ECE = (0.05 + 0.7 + 0.4) / 3 = 0.3833
        "calibration": {
            "n": 3,
            "ece": 0.3833,
            "bins": [
                {"range": [0.4, 0.5], "n": 1, "confidence": 0.4, "accuracy": 0.0},
                {"range": [0.7, 0.8], "n": 1, "confidence": 0.7, "accuracy": 0.0},
                {"range": [0.9, 1.0], "n": 1, "confidence": 0.95, "accuracy": 1.0},
            ],
        },
    }


# --------------------------------------------------------------------- classification

T1, T2, T3 = "Lettera di dimissione: paziente stabile.", "Accesso in PS per dolore.", "RX torace: negativo."
CLS_ROWS = [
    {"id": "c1", "text": T1, "labels": ["DISCHARGE_SUMMARY"]},
    {"id": "c2", "text": T2, "labels": ["EMERGENCY_NOTE"]},
    {"id": "c3", "text": T3, "labels": ["RADIOLOGY_REPORT"]},
]
CLS_OUT = {
    T1: json.dumps({"labels": ["DISCHARGE_SUMMARY"]}),
    T2: json.dumps({"labels": ["DISCHARGE_SUMMARY"]}, separators=(",", ":")),  # wrong (written compact: its own key)
    T3: json.dumps({"labels": ["RADIOLOGY_REPORT"]}),
}


CLS_CONFIDENCE = {CLS_OUT[T1]: [0.85], CLS_OUT[T2]: [0.55], CLS_OUT[T3]: [0.95]}


def test_classification_metrics_match_hand_computation(make_fake_service: MakeService, tmp_path: Path) -> None:
    logprob = confidences_at(part_ranges("labels"), CLS_CONFIDENCE, per_token=True)
    service, _ = make_fake_service(responder(CLS_OUT), logprob=logprob)
    task = service.tasks["classify-it-note-type"]
    records = load(task, tmp_path, CLS_ROWS)
    predictions = run_in_process(service, task, records)
    assert predictions == [
        {"labels": ["DISCHARGE_SUMMARY"], "scores": {"DISCHARGE_SUMMARY": 0.85}},
        {"labels": ["DISCHARGE_SUMMARY"], "scores": {"DISCHARGE_SUMMARY": 0.55}},
        {"labels": ["RADIOLOGY_REPORT"], "scores": {"RADIOLOGY_REPORT": 0.95}},
    ]
    # accuracy: c1 ✓, c2 ✗, c3 ✓ -> 2/3 = 0.6667
    # DISCHARGE_SUMMARY: tp 1 (c1), fp 1 (c2) -> P 1/2, R 1, F1 2/3 = 0.6667
    # EMERGENCY_NOTE:    fn 1 (c2)            -> F1 0.0
    # RADIOLOGY_REPORT:  tp 1                 -> F1 1.0
    # the three other labels occur nowhere: left out of the macro mean and of per_label_f1
    # macro F1 = (2/3 + 0 + 1)/3 = 5/9 = 0.5556; micro: tp 2, fp 1, fn 1 -> P = R = F1 = 2/3 = 0.6667
    assert score(task, records, predictions) == {
        "n": 3,
        "accuracy": 0.6667,
        "macro_f1": 0.5556,
        "micro_f1": 0.6667,
        "per_label_f1": {"DISCHARGE_SUMMARY": 0.6667, "EMERGENCY_NOTE": 0.0, "RADIOLOGY_REPORT": 1.0},
        # 0.85 right, 0.55 wrong, 0.95 right: ECE = (0.15 + 0.55 + 0.05) / 3 = 0.25
        "calibration": {
            "n": 3,
            "ece": 0.25,
            "bins": [
                {"range": [0.5, 0.6], "n": 1, "confidence": 0.55, "accuracy": 0.0},
                {"range": [0.8, 0.9], "n": 1, "confidence": 0.85, "accuracy": 1.0},
                {"range": [0.9, 1.0], "n": 1, "confidence": 0.95, "accuracy": 1.0},
            ],
        },
    }


# --------------------------------------------------------------------- failures, modes


def test_failed_generation_is_counted_not_dropped(make_fake_service: MakeService, tmp_path: Path) -> None:
    outputs = dict(NER_OUT)
    outputs[D2] = '{"entities": [{"text": "amoxicillina"'  # truncated: not JSON -> 502 generation-failed
    service, engine = make_fake_service(responder(outputs))
    task = service.tasks["ner-it-clinical"]
    records = load(task, tmp_path, NER_ROWS)
    predictions = run_in_process(service, task, records, batch_size=3)
    # The batch of 3 fails as a whole (its first failure cancels what had not reached the engine
    # yet), then each item is retried alone: only d2 fails.
    assert 1 + 3 <= len(engine.calls) <= 3 + 3
    assert sorted(last_input(c) for c in engine.calls[-3:]) == sorted([D1, D2, D3])
    assert [p["entities"] != [] for p in predictions] == [True, False, True]
    assert predictions[1]["error"].startswith("502 generation-failed:")
    assert "error" not in predictions[0] and "error" not in predictions[2]
    report = build_report(
        task, records, predictions, run="r", data="d.jsonl", adapter="ner-it-clinical@1", few_shot=None, seconds=1.0
    )
    assert report["n"] == 3 and report["failed"] == 1
    assert report["first_error"] == predictions[1]["error"]
    # d2's gold counts as missed: strict tp 1 (febbre), fp 2 (tosse/DISORDER, dolore), fn 4 (tosse, amoxicillina,
    # 1 g, dolore toracico): P = 1/3, R = 1/5, F1 = 2·(1/15)/(8/15) = 0.25
    assert report["metrics"]["strict"] == {"precision": 0.3333, "recall": 0.2, "f1": 0.25, "tp": 1, "fp": 2, "fn": 4}


def test_errors_in_the_report_never_quote_the_note(make_fake_service: MakeService, tmp_path: Path) -> None:
    def crash(request: GenerationRequest) -> str:
        raise RuntimeError(f"cannot read {last_input(request)}")  # a bug whose message quotes the note

    service, _ = make_fake_service(crash)
    task = service.tasks["ner-it-clinical"]
    records = load(task, tmp_path, NER_ROWS)
    predictions = run_in_process(service, task, records, batch_size=3)
    report = build_report(
        task, records, predictions, run="r", data="d.jsonl", adapter="ner-it-clinical@1", few_shot=None, seconds=1.0
    )
    assert report["failed"] == 3 and report["first_error"] == "500 internal-error: RuntimeError"
    written = json.dumps([report, predictions])
    for text in (D1, D2, D3, "febbre", "amoxicillina"):
        assert text not in written


def test_explicit_adapter_and_base_model(make_fake_service: MakeService, tmp_path: Path) -> None:
    service, engine = make_fake_service(responder(CLS_OUT))
    task = service.tasks["classify-it-note-type"]
    records = load(task, tmp_path, CLS_ROWS)
    run_in_process(service, task, records, adapter="none")
    assert engine.calls and all(c.adapter is None for c in engine.calls)
    engine.calls.clear()
    run_in_process(service, task, records, adapter=("classify-it-note-type", "1"))
    assert engine.calls and all(c.adapter and c.adapter.key == "classify-it-note-type@1" for c in engine.calls)
    with pytest.raises(evaluate.EvalError, match="unknown-adapter"):
        run_in_process(service, task, records, adapter=("nope", "9"))


def test_predict_via_url_goes_through_the_api(make_fake_service: MakeService, tmp_path: Path) -> None:
    outputs = dict(QA_OUT)
    outputs[C2] = ""  # empty output: 502
    service, engine = make_fake_service(responder(outputs))
    task = service.tasks["qa-it-clinical"]
    records = load(task, tmp_path, QA_ROWS)
    transport = httpx.ASGITransport(app=app_for(service))  # no lifespan: the service is started below

    async def go(adapter: AdapterChoice) -> list[dict[str, Any]]:
        await service.start()
        try:
            return await predict_via_url(
                "http://medlora.test", task, records, adapter=adapter, batch_size=2, concurrency=2, transport=transport
            )
        finally:
            await service.stop()

    predictions = asyncio.run(go("none"))
    assert all(c.adapter is None for c in engine.calls)
    assert predictions[0] == {"answer": {"start": 12, "end": 22, "text": "furosemide", "confidence": None}}
    assert predictions[1]["answer"] is None and predictions[1]["error"].startswith("502 generation-failed:")
    assert predictions[2:] == [
        {"answer": None},
        {"answer": {"start": 0, "end": 6, "text": "Febbre", "confidence": None}},
    ]
    with pytest.raises(evaluate.EvalError, match="404 unknown-adapter"):
        asyncio.run(go(("nope", "9")))


# --------------------------------------------------------------------------- CLI level


def eval_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    return parser.parse_args(list(argv))


def test_eval_main_writes_reports_and_few_shot_uses_the_shots(
    make_fake_service: MakeService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data, shots = tmp_path / "test.jsonl", tmp_path / "shots.jsonl"
    write_jsonl(data, CLS_ROWS)
    write_jsonl(shots, [{"id": "s1", "text": "Esami ematici: Hb 12 g/dl.", "labels": ["LAB_REPORT"]}, CLS_ROWS[0]])
    engines: list[FakeEngine] = []

    def fake_service(settings: Any) -> Service:
        service, engine = make_fake_service(responder(CLS_OUT))
        engines.append(engine)
        return service

    monkeypatch.setattr(evaluate, "build_service", fake_service)
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    assert eval_main(eval_args("--task", "classify-it-note-type", "--data", str(data), "--out", str(out_a))) == 0
    few_shot = ["--few-shot", "1", "--shots", str(shots), "--batch-size", "1"]
    argv = ["--task", "classify-it-note-type", "--data", str(data), "--out", str(out_b), *few_shot]
    assert eval_main(eval_args(*argv)) == 0
    a = json.loads((out_a / "report.json").read_text())
    b = json.loads((out_b / "report.json").read_text())
    assert (a["run"], a["adapter"], a["few_shot"], a["n"], a["failed"]) == (
        "classify-it-note-type@1",
        "classify-it-note-type@1",
        None,
        3,
        0,
    )
    assert (b["run"], b["adapter"], b["few_shot"]) == ("base-1-shot", "none", 1)
    assert set(a) >= {"task", "run", "data", "n", "failed", "adapter", "few_shot", "metrics", "seconds"}
    assert a["metrics"]["accuracy"] == 0.6667
    # The few-shot run: base model, and the shot (not the manifest's example) in every prompt.
    assert engines[1].calls and all(c.adapter is None for c in engines[1].calls)
    for call in engines[1].calls:
        prompt = prompt_of(call)
        assert "Esami ematici: Hb 12 g/dl." in prompt and '{"labels":["LAB_REPORT"]}' in prompt
        assert "RX torace: non addensamenti" not in prompt
    assert all("Esami ematici" not in prompt_of(c) for c in engines[0].calls)
    # Saved predictions rescore to the report's metrics.
    task = load_tasks(REPO_ROOT / "adapters", REPO_ROOT / "schemas")["classify-it-note-type"]
    records = load_records(task, data)
    assert score(task, records, read_predictions(out_a / "predictions.jsonl", records)) == a["metrics"]
    assert "| accuracy |" in (out_a / "report.md").read_text()

    capsys.readouterr()
    compare = argparse.ArgumentParser()
    add_compare_arguments(compare)
    table_path = tmp_path / "compare.md"
    assert compare_main(compare.parse_args([str(out_a / "report.json"), str(out_b), "--out", str(table_path)])) == 0
    table = capsys.readouterr().out
    assert table == table_path.read_text()
    lines = table.splitlines()
    assert lines[0] == "| metric | classify-it-note-type@1 | base-1-shot |"
    assert "| accuracy | 0.667 |" in table and "| failed | 0.000 | 0.000 |" in table


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--url", "http://x", "--few-shot", "2", "--shots", "s.jsonl"], "--few-shot runs in process only"),
        (["--few-shot", "2"], "--few-shot K needs --shots"),
        (["--few-shot", "1", "--shots", "s", "--adapter", "a@1"], "cannot be combined with --adapter"),
        (["--shots", "s.jsonl"], "--shots only applies with --few-shot"),
        (["--adapter", "no-version"], "NAME@VERSION"),
        (["--url", "http://x", "--model", "m"], "do not apply with --url"),
        (["--batch-size", "0"], "at least 1"),
    ],
)
def test_eval_main_refuses_bad_arguments(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert eval_main(eval_args("--task", "ner-it-clinical", "--data", "d.jsonl", *argv)) == 2
    assert message in capsys.readouterr().err


def test_eval_main_reports_bad_data_before_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"id": "a", "text": "x", "labels": []}\n', encoding="utf-8")

    def no_service(settings: Any) -> Service:
        raise AssertionError("the service must not be built for bad data")

    monkeypatch.setattr(evaluate, "build_service", no_service)
    assert eval_main(eval_args("--task", "classify-it-note-type", "--data", str(data))) == 2
    assert "line 1: labels: at least one label is required" in capsys.readouterr().err


def test_write_and_read_back(tmp_path: Path, make_fake_service: MakeService) -> None:
    service, _ = make_fake_service(responder(NER_OUT))
    task = service.tasks["ner-it-clinical"]
    records = load(task, tmp_path, NER_ROWS)
    predictions = run_in_process(service, task, records)
    report = build_report(task, records, predictions, run="x", data="d", adapter=None, few_shot=None, seconds=0.5)
    write_report(tmp_path / "out", report, records, predictions, task)
    assert read_predictions(tmp_path / "out" / "predictions.jsonl", records) == predictions
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["d1", "d2", "d3"]
    assert score(task, records, read_predictions(tmp_path / "out" / "predictions.jsonl", records)) == report["metrics"]


def test_eval_main_over_url_uses_the_served_task(
    make_fake_service: MakeService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, engine = make_fake_service(responder(NER_OUT))
    data = tmp_path / "ner.jsonl"
    write_jsonl(data, NER_ROWS)
    transport = httpx.ASGITransport(app=app_for(service))
    real_client = httpx.AsyncClient

    def client(**kwargs: Any) -> httpx.AsyncClient:
        return real_client(**{**kwargs, "transport": transport})

    monkeypatch.setattr(evaluate.httpx, "AsyncClient", client)
    asyncio.run(service.start())  # the ASGI transport runs no lifespan
    argv = ["--task", "ner-it-clinical", "--data", str(data), "--url", "http://medlora.test", "--out", str(tmp_path)]
    assert eval_main(eval_args(*argv, "--adapter", "ner-it-clinical@1")) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["run"], report["adapter"], report["n"], report["failed"]) == (
        "ner-it-clinical@1",
        "ner-it-clinical@1",
        3,
        0,
    )
    assert report["metrics"]["strict"]["f1"] == 0.4  # as computed by hand above
    assert len(engine.calls) == 3
    assert eval_main(eval_args(*argv[:-2], "--task", "no-such-task")) == 2
