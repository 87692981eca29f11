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

# Time to ready builds a wheel and starts six engines: run by hand, its figures are in
# docs/benchmarks.md. annotate vs LLM.generate and gateway vs bare vLLM run one quick size each.
QUICK = (
    "speculative",
    "mask_cost",
    "forced_tokens",
    "mixed_adapters",
    "value_grammar",
    "diy_baseline",
    "batch_throughput",
    "latency",
    "confidence_cost",
)


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
    assert {r["command"].split()[2] for r in results} == {f"bench.{name}" for name in QUICK}
    assert all(r["tables"].strip() for r in results)
    # The peer comparisons print their ratio as a table's bold figure: the chart plots it.
    assert all(r["ratios"] for r in results if r["command"].split()[2] in ("bench.batch_throughput", "bench.latency"))
    report = (out / "report.md").read_text()
    assert all(f"python -m bench.{name}" in report for name in QUICK)
    assert (out / "ratios.png").stat().st_size > 1000
