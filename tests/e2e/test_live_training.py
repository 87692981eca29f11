"""Train an adapter for a few steps with `medlora train` on the served base (the real Qwen3
vocabulary), register it in the running service, and see the task's outputs change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.settings import REPO_ROOT
from tests.e2e.conftest import LiveServer

pytestmark = pytest.mark.e2e


def test_trained_adapter_registers_at_runtime_and_changes_outputs(live_server: LiveServer, tmp_path: Path) -> None:
    env = dict(os.environ)
    medlora = [sys.executable, "-m", "app.cli"]
    data = tmp_path / "train.jsonl"
    subprocess.run(
        [*medlora, "synth", "--task", "ner-it-clinical", "--n", "8", "--out", str(data)], check=True, env=env
    )
    out = tmp_path / "adapter"
    trained = subprocess.run(
        [
            *medlora,
            "train",
            "--task",
            "ner-it-clinical",
            "--data",
            str(data),
            "--out",
            str(out),
            "--model",
            str(live_server.base_dir),
            "--max-steps",
            "3",
            "--batch-size",
            "4",
            "--lr",
            "5e-3",
            "--version",
            "trained-1",
        ],
        check=True,
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    summary = json.loads(trained.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["examples"] == 8
    registration = json.loads((out / "registration.json").read_text())

    with live_server.client() as client:
        r = client.post("/v1/adapters", json=registration)
        assert r.status_code == 201, r.text
        notes = [row["text"] for row in map(json.loads, data.read_text().splitlines())][:3]
        docs = [{"id": str(i), "text": t} for i, t in enumerate(notes)]

        def entities(adapter: object) -> list[object]:
            body = {"task": "ner-it-clinical", "documents": docs}
            if adapter is not None:
                body["adapter"] = adapter
            resp = client.post("/v1/ner", json=body)
            assert resp.status_code == 200, resp.text
            return [d["entities"] for d in resp.json()["documents"]]

        before = entities(None)
        after = entities({"name": registration["name"], "version": "trained-1"})
        assert after != before
        # Registering did not rebind the task.
        assert entities(None) == before
        assert client.delete(f"/v1/adapters/{registration['name']}/trained-1").status_code == 204
        assert httpx.get(f"{live_server.url}/readyz").status_code == 200
