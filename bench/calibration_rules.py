"""Which way of turning a part's tokens into one confidence is calibrated, per task.

A part of an answer (an entity, a relation, a form item, a label, a QA answer) is written by
several tokens; its confidence is either their joint probability (exp of the sum of their
log-probabilities) or their geometric mean (exp of the mean). This runs the shipped demo on
held-out synthetic notes through the serving path twice per task, once with each rule forced
for every part, and prints the expected calibration error of each (`calibration` in the
eval report; relation tasks also report their entities' calibration). The rule the service
ships per type is the one with the lower error (README, Confidence).

    .venv/bin/python -m bench.calibration_rules [--n 50] [--tasks NAME ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from app.settings import DEMO_DIR, Settings
from app.tasks.manifests import load_tasks
from app.tasks.types import base
from app.training.demo import measure

RULES = {"joint": False, "geometric_mean": True}


def _forcing(per_token: bool) -> Any:
    original = base.Answer.confidence

    def confidence(self: base.Answer, *path: str | int, **kwargs: Any) -> float | None:
        kwargs["per_token"] = per_token
        return original(self, *path, **kwargs)

    return original, confidence


def run(n: int, only: list[str] | None) -> dict[str, Any]:
    settings = Settings()
    tasks = {k: v for k, v in load_tasks(settings.tasks_dir, settings.schemas_dir).items() if not only or k in only}
    report: dict[str, Any] = {}
    for rule, per_token in RULES.items():
        original, forced = _forcing(per_token)
        base.Answer.confidence = forced  # type: ignore[method-assign]
        try:
            figures = asyncio.run(measure(DEMO_DIR, tasks, n))
        finally:
            base.Answer.confidence = original  # type: ignore[method-assign]
        for name, result in figures["tasks"].items():
            adapter = result["adapter"]
            row = report.setdefault(name, {})
            row[rule] = {"n": adapter["calibration"]["n"], "ece": adapter["calibration"]["ece"]}
            if "entity_calibration" in adapter:
                row[f"entities_{rule}"] = {
                    "n": adapter["entity_calibration"]["n"],
                    "ece": adapter["entity_calibration"]["ece"],
                }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50, help="held-out records per task")
    parser.add_argument("--tasks", nargs="*", help="only these tasks (default: every shipped task)")
    args = parser.parse_args()
    print(json.dumps(run(args.n, args.tasks), indent=2))


if __name__ == "__main__":
    main()
