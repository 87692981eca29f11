"""`medlora demo build`, shortened to a few steps on a few notes: the pipeline that made the
shipped demo still produces one that loads and serves every task (its measuring step runs
each task through the serving path on in-process vLLM)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import REPO_ROOT
from app.tasks.adapters import inspect_adapter
from app.tasks.manifests import load_tasks
from app.training.demo import BASE_NAME, RECIPE_VERSION
from tests.conftest import SCHEMAS_DIR, TASKS_DIR
from tests.e2e.conftest import skip_unless_e2e

pytestmark = pytest.mark.e2e


def test_a_shortened_build_makes_a_demo_that_serves_every_task(tmp_path: Path) -> None:
    skip_unless_e2e()
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "demo", "build", "--quick", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "recipe.json").read_text())
    assert record["recipe_version"] == RECIPE_VERSION
    tasks = load_tasks(TASKS_DIR, SCHEMAS_DIR)
    assert set(record["figures"]["tasks"]) == set(tasks)
    for name, task in tasks.items():
        figures = record["figures"]["tasks"][name]
        # Three held-out notes each, with the adapter and with the base alone: no request failed.
        assert figures["n"] == 3 and figures["adapter"]["failed"] == 0 and figures["base"]["failed"] == 0
        inspect_adapter(out / "adapters" / task.manifest.adapter.path, max_rank=16, base_model=str(out / BASE_NAME))
