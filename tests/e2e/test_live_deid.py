"""`POST /v1/deid` and `medlora annotate --deid` through real vLLM: the random-weight Qwen3
server (whatever its adapter writes must ground, and the rules' identifiers must be masked)
and the shipped demo with its trained deid adapter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.batch.journal import recover
from app.settings import REPO_ROOT
from app.tasks.phi_detectors import FIXED_SHAPE_LABELS
from app.training.synthetic import examples_for_task, write_jsonl
from tests.conftest import shipped_task
from tests.e2e.conftest import LOGS, LiveServer

pytestmark = pytest.mark.e2e
TASK = "deid-clinical"


def phi_notes(n: int, seed: int) -> list[dict[str, Any]]:
    return examples_for_task(shipped_task(TASK), n, seed)


def check_document(row: dict[str, Any], doc: dict[str, Any]) -> None:
    text = row["text"]
    for span in doc["spans"]:
        assert text[span["start"] : span["end"]] == span["text"]
    for planted in row["spans"]:
        if planted["label"] in FIXED_SHAPE_LABELS:
            assert planted["text"] not in doc["deidentified"], planted["label"]


def test_deid_masks_and_surrogates_through_real_vllm(live_server: LiveServer) -> None:
    client = live_server.client()
    rows = phi_notes(6, seed=31)
    documents = [{"id": r["id"], "text": r["text"]} for r in rows]
    masked = client.post("/v1/deid", json={"documents": documents})
    assert masked.status_code == 200, masked.text
    body = masked.json()
    assert body["task"] == TASK and body["replace"] == "mask"
    for row, doc in zip(rows, body["documents"], strict=True):
        check_document(row, doc)
        assert doc["mapping"] is None
    surrogate = client.post("/v1/deid", json={"documents": documents, "replace": "surrogate", "return_mapping": True})
    assert surrogate.status_code == 200, surrogate.text
    for row, doc in zip(rows, surrogate.json()["documents"], strict=True):
        check_document(row, doc)
        out = doc["deidentified"]
        assert [m["original"] for m in doc["mapping"]] == [s["text"] for s in doc["spans"]]
        assert all(out[m["start"] : m["end"]] == m["text"] for m in doc["mapping"])


def test_annotate_deid_writes_only_masked_text_and_resumes(live_server: LiveServer, tmp_path: Path) -> None:
    rows = [{"id": f"p{i:03d}", "text": r["text"]} for i, r in enumerate(phi_notes(12, seed=32))]
    source, out = tmp_path / "notes.jsonl", tmp_path / "deid.jsonl"
    cmd = [sys.executable, "-m", "app.cli", "annotate", "--deid", "--url", live_server.url]
    cmd += ["--input", str(source), "--output", str(out)]
    summaries = []
    for upto in (5, 12):  # a first run over part of the archive, then the whole: only the rest is sent
        write_jsonl(source, rows[:upto])
        done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, timeout=600)
        (tmp_path / f"run{upto}.log").write_bytes(done.stderr)
        LOGS.append(tmp_path / f"run{upto}.log")
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        summaries.append(json.loads(done.stdout.decode().splitlines()[-1]))
    assert (summaries[1]["already_done"], summaries[1]["annotated"]) == (5, 7)
    lines = {line["id"]: line for line in recover(out)}
    assert sorted(lines) == [r["id"] for r in rows]
    planted = {r["id"]: p for r, p in zip(rows, phi_notes(12, seed=32), strict=True)}
    for note_id, line in lines.items():
        assert set(line) == {"id", "text"}
        check_document(planted[note_id], {"spans": [], "deidentified": line["text"]})


def test_shipped_demo_deid_adapter_serves_and_masks(demo_server: LiveServer) -> None:
    client = demo_server.client()
    rows = phi_notes(8, seed=33)
    r = client.post("/v1/deid", json={"documents": [{"id": x["id"], "text": x["text"]} for x in rows]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["adapter"] == TASK
    for row, doc in zip(rows, body["documents"], strict=True):
        check_document(row, doc)
