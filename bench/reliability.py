"""Crash safety and failover, counted: what is lost, duplicated or torn when things are killed.

    .venv/bin/python -m bench.reliability annotate --notes 2000 --kills 20
    .venv/bin/python -m bench.reliability batch --lines 300 --kills 5
    .venv/bin/python -m bench.reliability remote --kills 5 --seconds 40

- `annotate`: `medlora annotate --url` over an archive of synthetic notes, SIGKILLed at --kills
  random points (a point is a number of finished output lines) and run again each time, then to
  the end. Every line written before a kill must stay as it was; at the end every note must be
  in the output or the errors file exactly once, and no line may be torn.
- `batch`: a batch job through the API; the whole service (gateway and engine processes) is
  SIGKILLed at --kills random points and started again on the same batch store each time. At the
  end every input line must be in the output or error file exactly once.
- `remote`: two vLLM OpenAI servers behind a gateway, under a steady stream of concurrent NER
  requests; one replica (alternately) is SIGKILLed and restarted, --kills times. Every answer must
  be 200 with grounded entities, or a retryable problem (503 with Retry-After); never a 5xx of
  another kind, a wrong id or an ungrounded span.

All on the random-weight tiny Qwen3 with the real Qwen3 tokenizer (bench/models.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from app.batch.journal import recover
from app.engine.remote.server_args import vllm_server_args
from app.engine.vllm_logs import LOGGING_CONFIG
from app.settings import REPO_ROOT, Settings
from app.tasks.manifests import load_tasks
from app.training.synthetic import examples_for_task, write_jsonl
from bench.latency import wait_up
from bench.models import random_qwen3, random_qwen3_env

TASK = "classify-it-note-type"


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        # Its own process group: a SIGKILL takes the engine-core child too, as a crash would.
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=out, start_new_session=True)


def kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def serve(cache: Path, work: Path, port: int, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **random_qwen3_env(cache),
        "MEDLORA_PORT": str(port),
        "MEDLORA_BATCH_DIR": str(work / "batches"),
        "VLLM_CPU_KVCACHE_SPACE": "1",
        **extra,
    }
    proc = spawn([sys.executable, "-m", "app.cli", "serve"], env, log)
    wait_up(proc, f"http://127.0.0.1:{port}/readyz", log)
    return proc


def lines_of(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def torn(path: Path) -> bool:
    data = path.read_bytes() if path.exists() else b""
    return bool(data) and not data.endswith(b"\n")


# -- medlora annotate -------------------------------------------------------------------------


def annotate_kills(args: argparse.Namespace, cache: Path, work: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    task = load_tasks(Settings().tasks_dir, Settings().schemas_dir)[TASK]
    rows = [{"id": f"note-{i:05d}", "text": r["text"]} for i, r in enumerate(examples_for_task(task, args.notes, 1))]
    write_jsonl(work / "notes.jsonl", rows)
    out, errors = work / "out.jsonl", work / "out.errors.jsonl"
    port = args.port
    server = serve(cache, work, port, work / "server.log")
    cmd = [sys.executable, "-m", "app.cli", "annotate", "--task", TASK, "--input", str(work / "notes.jsonl")]
    cmd += ["--output", str(out), "--url", f"http://127.0.0.1:{port}", "--concurrency", "32"]
    points = sorted(rng.sample(range(1, args.notes), args.kills))
    torn_tails, changed, started = 0, 0, time.monotonic()
    written: list[str] = []  # the output's lines as the previous run left them

    def changed_since_last_kill() -> int:
        now = [json.dumps(r, sort_keys=True) for r in recover(out)]  # cuts a torn tail, as a rerun does
        return sum(a != b for a, b in zip(written, now, strict=False)) + max(0, len(written) - len(now))

    try:
        for point in points:
            proc = spawn(cmd, dict(os.environ), work / "annotate.log")
            while lines_of(out) < point and proc.poll() is None:
                time.sleep(0.02)
            kill(proc)
            torn_tails += torn(out)
            changed += changed_since_last_kill()
            written = [json.dumps(r, sort_keys=True) for r in recover(out)]
        final = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, timeout=3600)
        assert final.returncode == 0, final.stderr.decode()[-3000:]
        changed += changed_since_last_kill()
    finally:
        kill(server)
    ids = [r["id"] for r in recover(out)] + [r["id"] for r in recover(errors)]
    expected = {r["id"] for r in rows}
    return {
        "notes": args.notes,
        "kills": len(points),
        "kill_points": points,
        "lines_lost": len(expected - set(ids)),
        "lines_duplicated": len(ids) - len(set(ids)),
        "lines_changed_after_a_kill": changed,
        "torn_tails_found_and_cut": torn_tails,
        "torn_lines_left": int(torn(out) or torn(errors)),
        "errors_file_lines": len(recover(errors)),
        "seconds": round(time.monotonic() - started, 1),
    }


# -- a batch job through the API --------------------------------------------------------------


def batch_kills(args: argparse.Namespace, cache: Path, work: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    task = load_tasks(Settings().tasks_dir, Settings().schemas_dir)[TASK]
    notes = examples_for_task(task, args.lines, 2)
    rows = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/classify",
            "body": {"task": TASK, "documents": [{"id": "d", "text": note["text"]}]},
        }
        for i, note in enumerate(notes)
    ]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    port, url = args.port, f"http://127.0.0.1:{args.port}"
    server = serve(cache, work, port, work / "server.log")
    started = time.monotonic()
    uploaded = httpx.post(f"{url}/v1/files", files={"file": ("b.jsonl", data)}, data={"purpose": "batch"}).json()
    body = {"input_file_id": uploaded["id"], "endpoint": "/v1/classify", "completion_window": "24h"}
    batch_id = httpx.post(f"{url}/v1/batches", json=body).json()["id"]
    journal = work / "batches" / "batches" / batch_id / "output.jsonl"
    points = sorted(rng.sample(range(1, args.lines), args.kills))
    torn_tails = 0
    try:
        for point in points:
            while lines_of(journal) < point:
                time.sleep(0.05)
            kill(server)
            torn_tails += torn(journal)
            server = serve(cache, work, port, work / "server.log")
        deadline = time.monotonic() + 3600
        while (state := httpx.get(f"{url}/v1/batches/{batch_id}").json())["status"] != "completed":
            assert time.monotonic() < deadline and state["status"] not in ("failed", "cancelled"), state
            time.sleep(1)
        output = httpx.get(f"{url}/v1/files/{state['output_file_id']}/content").text.splitlines()
        failed = (
            httpx.get(f"{url}/v1/files/{state['error_file_id']}/content").text.splitlines()
            if state["error_file_id"]
            else []
        )
    finally:
        kill(server)
    ids = [json.loads(line)["custom_id"] for line in output + failed]
    return {
        "lines": args.lines,
        "service_kills": len(points),
        "kill_points": points,
        "lines_lost": len({r["custom_id"] for r in rows} - set(ids)),
        "lines_duplicated": len(ids) - len(set(ids)),
        "torn_tails_found_and_cut": torn_tails,
        "error_lines": len(failed),
        "request_counts": state["request_counts"],
        "seconds": round(time.monotonic() - started, 1),
    }


# -- the split topology -----------------------------------------------------------------------


def replica(base: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_LOGGING_CONFIG_PATH": str(LOGGING_CONFIG),  # as the chart's engine pods: no note text in logs
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",  # see tests/e2e/test_remote_engine_live.py
    }
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(base)]
    cmd += [*vllm_server_args(Settings()), "--host", "127.0.0.1", "--port", str(port), "--seed", "0"]
    return spawn(cmd, env, log)


def remote_kills(args: argparse.Namespace, cache: Path, work: Path) -> dict[str, Any]:
    base, adapters = random_qwen3(cache)
    ports = [args.port + 1, args.port + 2]
    replicas = [replica(base, p, work / f"vllm-{i}.log") for i, p in enumerate(ports)]
    for i, (p, proc) in enumerate(zip(ports, replicas, strict=True)):
        wait_up(proc, f"http://127.0.0.1:{p}/health", work / f"vllm-{i}.log")
    gateway = serve(
        cache,
        work,
        args.port,
        work / "gateway.log",
        MEDLORA_ENGINE="remote",
        MEDLORA_ENGINE_URLS=",".join(f"http://127.0.0.1:{p}" for p in ports),
        MEDLORA_ENGINE_HEALTH_INTERVAL_S="1",
        MEDLORA_ADAPTERS_DIR=str(adapters),
    )
    url = f"http://127.0.0.1:{args.port}"
    outcomes: dict[str, int] = {}
    wrong: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def load(worker: int) -> None:
        n = 0
        with httpx.Client(base_url=url, timeout=600) as client:
            while not stop.is_set():
                n += 1
                text = f"Paziente con febbre e tosse; terapia con amoxicillina 1 g ogni 8 ore. [{worker}-{n}]"
                body = {"task": "ner-it-clinical", "documents": [{"id": f"w{worker}-{n}", "text": text}]}
                try:
                    r = client.post("/v1/ner", json=body)
                except httpx.TransportError as exc:
                    key = f"transport:{type(exc).__name__}"
                else:
                    key = f"{r.status_code}:{r.json().get('type', 'ok').rsplit(':', 1)[-1]}"
                    if r.status_code == 200:
                        (doc,) = r.json()["documents"]
                        bad = doc["id"] != f"w{worker}-{n}" or any(
                            text[e["start"] : e["end"]] != e["text"] for e in doc["entities"]
                        )
                        if bad:
                            wrong.append(json.dumps(doc)[:300])
                    elif r.status_code == 503 and not r.headers.get("retry-after"):
                        key += ":no-retry-after"
                with lock:
                    outcomes[key] = outcomes.get(key, 0) + 1

    workers = [threading.Thread(target=load, args=(w,)) for w in range(args.workers)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    try:
        for k in range(args.kills):
            time.sleep(args.seconds / 2)
            victim = k % 2
            kill(replicas[victim])
            time.sleep(args.seconds / 2)
            replicas[victim] = replica(base, ports[victim], work / f"vllm-{victim}.log")
            wait_up(replicas[victim], f"http://127.0.0.1:{ports[victim]}/health", work / f"vllm-{victim}.log")
    finally:
        stop.set()
        for worker in workers:
            worker.join()
        kill(gateway)
        for proc in replicas:
            kill(proc)
    return {
        "replica_kills": args.kills,
        "workers": args.workers,
        "outcomes": dict(sorted(outcomes.items())),
        "wrong_or_partial_answers": len(wrong),
        "examples_wrong": wrong[:3],
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["annotate", "batch", "remote"])
    parser.add_argument("--notes", type=int, default=2000)
    parser.add_argument("--lines", type=int, default=300)
    parser.add_argument("--kills", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=40, help="remote: seconds between kills")
    parser.add_argument("--workers", type=int, default=6, help="remote: concurrent clients")
    parser.add_argument("--seed", type=int, default=20261204)
    parser.add_argument("--port", type=int, default=8830)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "medlora-bench")
    args = parser.parse_args()
    args.kills = args.kills if args.kills is not None else {"annotate": 20, "batch": 5, "remote": 5}[args.what]
    args.cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"reliability-{args.what}-"))
    run = {"annotate": annotate_kills, "batch": batch_kills, "remote": remote_kills}[args.what]
    print(json.dumps(run(args, args.cache, work), indent=1))


if __name__ == "__main__":
    main()
