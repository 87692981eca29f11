"""Every throughput and decode-step benchmark of issue 19 in one command, one report.

    .venv/bin/python -m bench.suite                        # here: CPU, the shipped demo
    .venv/bin/python -m bench.suite --engine gpu --demo DIR  # a CUDA machine, real weights
    .venv/bin/python -m bench.suite --quick                # small sizes: checks the suite runs

`--demo DIR` is a folder in the demo's layout: the base model in `DIR/tiny-qwen3-demo` (any
Qwen3 checkpoint, a symlink will do) and one adapter per shipped task in `DIR/adapters/<task>`.
Each benchmark runs in its own process (each owns its engine), one after the other; their
tables go into `OUT/report.md` (with the command that made each), their JSON lines into
`OUT/report.jsonl`, and a chart of the headline ratios into `OUT/ratios.png`. A benchmark that
fails is reported as failed and the rest still run; the exit status says whether all passed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from app.settings import DEMO_DIR


@dataclass(frozen=True)
class Bench:
    name: str
    module: str
    args: tuple[str, ...]  # full size
    quick: tuple[str, ...] | None  # smoke size; None: a sibling's quick run covers this one's code
    takes_demo: bool = True  # runs the model (takes --demo)
    on_gpu: tuple[str, ...] = ()  # added with --engine gpu


BENCHES = (
    Bench("speculative decoding: engine steps with and without", "bench.speculative", (), ("--notes", "2")),
    Bench(
        "grammar mask fill per step",
        "bench.mask_cost",
        (),
        ("--notes", "2", "--batches", "8", "--k", "0", "2", "--steps", "1", "--repeats", "1"),
        takes_demo=False,
    ),
    Bench("grammar-forced tokens", "bench.forced_tokens", (), ("--notes", "3"), takes_demo=False),
    Bench("mixed adapters vs one at a time", "bench.mixed_adapters", (), ("--notes", "1", "--max-loras", "8")),
    Bench("values in the grammar vs checked after", "bench.value_grammar", (), ("--n", "2")),
    Bench(
        "transformers + peft + outlines",
        "bench.diy_baseline",
        (),
        ("--notes", "1", "--repeats", "1"),
        on_gpu=("--device", "cuda"),
    ),
    *(
        Bench(
            f"annotate vs vLLM offline LLM.generate: {task}",
            "bench.batch_throughput",
            ("--task", task, "--notes", "200"),
            ("--task", task, "--notes", "4") if task == "re-it-medication" else None,
        )
        for task in ("ner-it-clinical", "re-it-medication", "crf-it-dyspnea")
    ),
    *(
        Bench(
            f"gateway vs bare vLLM at {n} concurrent, every task",
            "bench.latency",
            ("--requests", str(max(n, 8)), "--concurrency", str(n), "--sequential", "8"),
            ("--requests", "2", "--concurrency", "2", "--sequential", "1", "--tasks", "crf-it-dyspnea", "deid-clinical")
            if n == 8
            else None,
        )
        for n in (1, 8, 64)
    ),
    Bench(
        "what confidence costs: log-probabilities on and off",
        "bench.confidence_cost",
        (),
        ("--notes", "2", "--rounds", "1", "--tasks", "qa-it-clinical"),
    ),
    Bench("time to ready vs bare AsyncLLM", "bench.startup", ("--runs", "3"), ("--runs", "1"), takes_demo=False),
)


def run(bench: Bench, *, demo: Path, quick: bool, engine: str) -> dict[str, object]:
    size = bench.quick if quick else bench.args
    assert size is not None  # quick runs leave out the benchmarks without a quick size
    command = [sys.executable, "-m", bench.module, *size]
    if bench.takes_demo:
        command += ["--demo", str(demo)]
    if engine == "gpu":
        command += bench.on_gpu
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=None)
    # A benchmark's markdown tables; one that prints none (JSON, prose) is kept as it printed.
    tables = "\n".join(line for line in done.stdout.splitlines() if line.startswith("|")) or done.stdout[-4000:]
    ratios = [float(x) for x in re.findall(r"\*\*([0-9]+\.[0-9]+)×?\*\*", tables)]
    return {
        "bench": bench.name,
        "command": " ".join(["python", "-m", bench.module, *command[3:]]),
        "engine": engine,
        "ok": done.returncode == 0,
        "seconds": round(time.perf_counter() - started, 1),
        "tables": tables,
        "ratios": ratios,
        "error": "" if done.returncode == 0 else done.stderr[-2000:],
    }


def plot(results: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = [], []
    for result in results:
        for i, ratio in enumerate(result["ratios"]):  # type: ignore[attr-defined]
            labels.append(f"{result['bench']} #{i + 1}")
            values.append(ratio)
    fig, ax = plt.subplots(figsize=(8, 0.4 * max(len(values), 3) + 1))
    ax.barh(labels, values)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("ratio (bold figures of each benchmark's table)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--demo", type=Path, default=DEMO_DIR, help="base and adapters in the demo's layout")
    parser.add_argument("--quick", action="store_true", help="smoke sizes: checks that every benchmark runs")
    parser.add_argument("--only", nargs="*", help="benchmark modules to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path("bench-report"))
    args = parser.parse_args()
    if args.engine == "gpu":
        import torch

        if not torch.cuda.is_available():
            parser.error("--engine gpu: no CUDA device here (install with MEDLORA_ENGINE=gpu on a CUDA machine)")
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = [b for b in BENCHES if not args.only or b.module in args.only or b.module.split(".")[-1] in args.only]
    if args.quick:
        chosen = [b for b in chosen if b.quick is not None]
    results = []
    for bench in chosen:
        print(f"[suite] {bench.name} ...", flush=True)
        result = run(bench, demo=args.demo, quick=args.quick, engine=args.engine)
        print(f"[suite] {bench.name}: {'ok' if result['ok'] else 'FAILED'} in {result['seconds']} s", flush=True)
        results.append(result)
    with (args.out / "report.jsonl").open("w", encoding="utf-8") as out:
        for result in results:
            out.write(json.dumps(result) + "\n")
    lines = [f"# Benchmark suite ({args.engine}, {args.demo})", ""]
    lines += ["| benchmark | ok | seconds | command |", "| --- | --- | ---: | --- |"]
    for r in results:
        lines.append(f"| {r['bench']} | {'yes' if r['ok'] else '**no**'} | {r['seconds']} | `{r['command']}` |")
    for r in results:
        lines += ["", f"## {r['bench']}", "", f"`{r['command']}`", "", str(r["tables"] or r["error"])]
    (args.out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot(results, args.out / "ratios.png")
    print(f"[suite] report: {args.out / 'report.md'}")
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
