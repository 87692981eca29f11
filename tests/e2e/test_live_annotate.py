"""`medlora annotate` and the batch API against real vLLM (random-weight adapters).

The archive run is killed with SIGKILL (engine process included) part-way and run again:
every note must end up in the output exactly once, and no line written before the kill
may change.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from app.batch.journal import recover
from app.settings import REPO_ROOT
from app.training.synthetic import examples_for_task, write_jsonl
from tests.conftest import shipped_task
from tests.e2e.conftest import LOGS, LiveServer

pytestmark = pytest.mark.e2e
TASK = "classify-it-note-type"
LABELS = {"DISCHARGE_SUMMARY", "EMERGENCY_NOTE", "RADIOLOGY_REPORT", "LAB_REPORT", "OUTPATIENT_VISIT", "OPERATIVE_NOTE"}


def archive(path: Path, n: int, seed: int) -> list[str]:
    rows = [
        {"id": f"note-{i:05d}", "text": r["text"]} for i, r in enumerate(examples_for_task(shipped_task(TASK), n, seed))
    ]
    write_jsonl(path, rows)
    return [r["id"] for r in rows]


def annotate_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", "annotate", "--task", TASK, *args]


def env_for(live: LiveServer) -> dict[str, str]:
    # The live server's model and adapters; the in-process engine is a second one.
    return {
        **os.environ,
        "MEDLORA_MODEL": str(live.base_dir),
        "MEDLORA_ADAPTERS_DIR": str(live.adapters_dir),
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }


def test_annotate_in_process_survives_kill_9_and_resumes_exactly_once(live_server: LiveServer, tmp_path: Path) -> None:
    ids = archive(tmp_path / "notes.jsonl", 300, seed=5)
    out = tmp_path / "out.jsonl"
    cmd = annotate_cmd("--input", str(tmp_path / "notes.jsonl"), "--output", str(out), "--concurrency", "16")
    LOGS.append(tmp_path / "run1.log")
    log = (tmp_path / "run1.log").open("wb")
    # Own process group, so that SIGKILL also takes vLLM's engine-core child, as a crash would.
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env_for(live_server), stdout=log, stderr=log, start_new_session=True
    )
    deadline = time.monotonic() + 600
    while not (out.exists() and len(out.read_bytes().splitlines()) >= 40):
        assert proc.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = recover(out)  # also cuts a torn last line, as the next run would
    assert 40 <= len(before) < len(ids), "the kill must land mid-run"

    second = subprocess.run(cmd, cwd=REPO_ROOT, env=env_for(live_server), capture_output=True, timeout=900)
    (tmp_path / "run2.log").write_bytes(second.stderr)
    LOGS.append(tmp_path / "run2.log")
    assert second.returncode == 0, second.stderr.decode()[-3000:]
    summary = json.loads(second.stdout.decode().splitlines()[-1])
    lines = recover(out)
    assert lines[: len(before)] == before  # nothing written before the kill changed
    assert sorted(r["id"] for r in lines) == ids  # every note exactly once
    assert all(len(r["labels"]) == 1 and r["labels"][0] in LABELS for r in lines)
    assert (summary["already_done"], summary["annotated"], summary["failed"]) == (len(before), 300 - len(before), 0)
    assert not (tmp_path / "out.errors.jsonl").read_bytes()


def test_annotate_via_url_with_shards_and_merge(live_server: LiveServer, tmp_path: Path) -> None:
    ids = archive(tmp_path / "notes.jsonl", 40, seed=6)
    with open(tmp_path / "notes.jsonl", "a") as handle:
        handle.write(json.dumps({"id": "note-00003", "text": "duplicate"}) + "\n")
        handle.write(json.dumps({"id": "blank", "text": " "}) + "\n")
    outputs = []
    for i in range(2):
        out = tmp_path / f"shard-{i}.jsonl"
        args = ["--url", live_server.url, "--input", str(tmp_path / "notes.jsonl"), "--output", str(out)]
        done = subprocess.run(annotate_cmd(*args, "--shard", f"{i}/2"), cwd=REPO_ROOT, capture_output=True, timeout=600)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        outputs.append(str(out))
    merged = tmp_path / "all.jsonl"
    merge_cmd = [sys.executable, "-m", "app.cli", "merge", "--task", TASK, "--input", str(tmp_path / "notes.jsonl")]
    merge = subprocess.run(
        [*merge_cmd, "--output", str(merged), *outputs],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=120,
    )
    assert merge.returncode == 0, merge.stderr.decode()
    report = json.loads(merge.stdout)
    assert (report["records"], report["annotated"], report["failed"], report["complete"]) == (42, 40, 2, True)
    assert sorted(r["id"] for r in recover(merged)) == ids
    errors = {r["id"]: r["error"]["type"].rsplit(":", 1)[1] for r in recover(tmp_path / "all.errors.jsonl")}
    assert errors == {"note-00003": "duplicate-id", "blank": "empty-text"}


def test_openai_client_batch_job_against_the_real_service(live_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="unused", timeout=120)
    rows = examples_for_task(shipped_task(TASK), 8, seed=8)
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/classify",
            "body": {"task": TASK, "documents": [{"id": f"d{i}", "text": row["text"]}]},
        }
        for i, row in enumerate(rows)
    ]
    lines.append(
        {
            "custom_id": "bad",
            "method": "POST",
            "url": "/v1/classify",
            "body": {"task": "no-such-task", "documents": [{"id": "x", "text": "nota"}]},
        }
    )
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    uploaded = client.files.create(file=("batch.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/classify", completion_window="24h")  # type: ignore[arg-type]
    deadline = time.monotonic() + 600
    while (batch := client.batches.retrieve(batch.id)).status not in {"completed", "failed", "cancelled"}:
        assert time.monotonic() < deadline, batch
        time.sleep(0.5)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (9, 8, 1)
    assert batch.output_file_id and batch.error_file_id
    outputs: list[dict[str, Any]] = [
        json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()
    ]
    assert sorted(o["custom_id"] for o in outputs) == [f"r{i}" for i in range(8)]
    for o in outputs:
        body = o["response"]["body"]
        assert o["response"]["status_code"] == 200 and o["error"] is None
        assert body["documents"][0]["id"] == f"d{o['custom_id'][1:]}" and body["documents"][0]["labels"][0] in LABELS
    (error,) = [json.loads(x) for x in client.files.content(batch.error_file_id).text.splitlines()]
    assert error["custom_id"] == "bad" and error["response"]["status_code"] == 404
    assert error["error"]["code"] == "unknown-task"
