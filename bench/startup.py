"""Time to ready of `medlora serve` on a fresh machine: the README's first command after the install.

The wheel is built and installed (no dependencies: they are this venv's) into an empty folder,
and `medlora serve` (the embedded default: the shipped demo) starts from another directory
with an empty HOME, so no cache of any kind helps. /livez and /readyz are polled every 0.25 s
from the moment the process is spawned.

    .venv/bin/python -m bench.startup [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.settings import REPO_ROOT


def install_wheel(work: Path) -> Path:
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(REPO_ROOT)], check=True
    )
    (wheel,) = (work / "dist").glob("medlora-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(work / "site"), str(wheel)], check=True)
    return work / "site"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fresh_process(site: Path, work: Path) -> tuple[dict[str, str], Path]:
    """(environment, working directory) of a process as on a fresh machine, the same for the
    server and its peer: the installed wheel, an empty HOME, another directory. Empty caches on
    both sides: vLLM caches what it learns of the model's class under ~/.cache/vllm (an
    inspection in a subprocess on a miss, about 8 s here), so a peer with a warm cache would be
    measured against a server without one."""
    home, elsewhere = Path(tempfile.mkdtemp(dir=work)), Path(tempfile.mkdtemp(dir=work))
    env = {**os.environ, "PYTHONPATH": str(site), "HOME": str(home)}
    env.pop("VLLM_CACHE_ROOT", None)
    return env, elsewhere


def one_start(site: Path, work: Path) -> dict[str, Any]:
    env, elsewhere = fresh_process(site, work)
    port = _port()
    env["MEDLORA_PORT"] = str(port)
    env["MEDLORA_BATCH_DIR"] = str(Path(env["HOME"]) / "batches")
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    log = (work / f"server-{port}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve"], cwd=elsewhere, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    first_livez: float | None = None
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}; see {log.name}")
            try:
                if first_livez is None and httpx.get(f"{url}/livez", timeout=2).status_code == 200:
                    first_livez = time.monotonic() - started
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    ready = time.monotonic() - started
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        body = {"task": "ner-it-clinical", "documents": [{"id": "d", "text": "Paziente con febbre e tosse."}]}
        answered = httpx.post(f"{url}/v1/ner", json=body, timeout=120).status_code
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"livez_s": round(first_livez or ready, 1), "ready_s": round(ready, 1), "first_request_status": answered}


_ENGINE_ALONE = """
import time

started = time.monotonic()  # vLLM's import included, as in a server's start
from app.engine.local import VllmEngine
from app.engine.models import resolve_model
from app.settings import Settings
from vllm.v1.engine.async_llm import AsyncLLM

if __name__ == "__main__":
    settings = Settings()
    llm = AsyncLLM.from_engine_args(VllmEngine(settings, resolve_model(settings).path).engine_args())
    print("ENGINE_S", round(time.monotonic() - started, 1), flush=True)
    llm.shutdown()
"""


def engine_alone(site: Path, work: Path) -> float:
    """The peer: vLLM's AsyncLLM built with the same engine arguments in a fresh Python process,
    from its first import to the engine's return; no HTTP server, tokenizer or adapters."""
    env, elsewhere = fresh_process(site, work)
    env["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    done = subprocess.run(
        [sys.executable, "-c", _ENGINE_ALONE],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(next(line for line in done.stdout.splitlines() if line.startswith("ENGINE_S")).split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        site = install_wheel(work)
        runs = [one_start(site, work) for _ in range(args.runs)]
        engine_s = [engine_alone(site, work) for _ in range(args.runs)]
    ready = statistics.median(r["ready_s"] for r in runs)
    report = {
        "runs": runs,
        "ready_s_median": ready,
        "livez_s_median": statistics.median(r["livez_s"] for r in runs),
        "vllm_engine_alone_s": engine_s,
        "ready_over_engine_alone": round(ready / statistics.median(engine_s), 2),
    }
    print(json.dumps(report, indent=2))
    print("| | median of runs | runs |\n| --- | ---: | --- |")
    print(f"| `/readyz` 200 | {ready} s | {', '.join(str(r['ready_s']) for r in runs)} |")
    print(f"| vLLM `AsyncLLM` alone | {statistics.median(engine_s)} s | {', '.join(map(str, engine_s))} |")
    print(f"| ready over AsyncLLM alone | **{report['ready_over_engine_alone']:.2f}** | |")


if __name__ == "__main__":
    main()
