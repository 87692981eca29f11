"""`python -m bench.suite --quick` runs here on CPU with the shipped demo, so the one command a
GPU machine will run cannot rot: every benchmark of the suite that runs the demo model (and the
grammar ones) finishes, and the report, its JSON lines and the ratio chart are written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import REPO_ROOT

pytestmark = pytest.mark.e2e

# The rest of the suite (annotate vs LLM.generate, gateway vs bare vLLM, time to ready) each build
# their own random-weight model or wheel: run by hand, their figures are in docs/benchmarks.md.
QUICK = ("speculative", "mask_cost", "forced_tokens", "mixed_adapters", "value_grammar", "diy_baseline")


def test_the_quick_suite_runs_every_demo_benchmark_and_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "bench.suite", "--quick", "--only", *QUICK, "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    results = [json.loads(line) for line in (out / "report.jsonl").read_text().splitlines()]
    failed = {r["bench"]: r["error"][-800:] for r in results if not r["ok"]}
    assert done.returncode == 0 and not failed, failed or done.stderr[-2000:]
    assert len(results) == len(QUICK) and all(r["tables"].strip() for r in results)
    report = (out / "report.md").read_text()
    assert all(f"python -m bench.{name}" in report for name in QUICK)
    assert (out / "ratios.png").stat().st_size > 1000
