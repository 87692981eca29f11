"""Interactive latency against offered load, past the admission bound, with a batch job running.

Starts `medlora serve` (the random-weight tiny Qwen3 with the real Qwen3 tokenizer, a random
LoRA per task) with an admission bound of --admitted generations, measures interactive NER
requests alone (the unloaded p50/p95), then starts a batch job and, while it runs, offers
interactive traffic at 0.5x, 1x and 2x the bound: that many closed-loop clients, each sending
one-document requests back to back (a 429 is counted and the client goes on, no retry), for
--requests requests per level. Every 200 is checked (ids, offsets grounded); any 5xx is a
failure. Decoded tokens are read from the gateway's own counters.

    .venv/bin/python -m bench.overload --admitted 8 --wait 0.25 --requests 48 --plot docs/overload.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.latency import start_server
from bench.models import random_qwen3_env
from tests.fakes import sample

NOTE = (
    "Paziente di 72 anni, ricoverato per polmonite basale destra. Riferisce febbre (38,5 °C) e tosse "
    "produttiva; nega dolore toracico. Terapia: amoxicillina/acido clavulanico 1 g per os ogni 8 ore."
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(q * len(ordered)) - 1)]


def check(response: httpx.Response, doc_id: str, text: str) -> None:
    body = response.json()
    (doc,) = body["documents"]
    assert doc["id"] == doc_id
    for entity in doc["entities"]:
        assert text[entity["start"] : entity["end"]] == entity["text"], entity


async def level(client: httpx.AsyncClient, clients: int, requests: int, tag: str) -> dict[str, Any]:
    """`clients` closed-loop senders sharing `requests` one-document NER requests."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = list(range(requests))

    async def sender() -> None:
        while queue:
            i = queue.pop()
            text = f"{NOTE} [{tag} {i}]"
            started = time.perf_counter()
            r = await client.post(
                "/v1/ner", json={"task": "ner-it-clinical", "documents": [{"id": f"{tag}-{i}", "text": text}]}
            )
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 200:
                check(r, f"{tag}-{i}", text)
                latencies.append(time.perf_counter() - started)
            elif r.status_code == 429:
                assert r.headers.get("retry-after"), r.headers
            else:
                raise SystemExit(f"{r.status_code}: {r.text[:500]}")

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(clients)))
    seconds = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": requests,
        "ok": statuses.get(200, 0),
        "refused_429": statuses.get(429, 0),
        "server_errors": sum(n for s, n in statuses.items() if s >= 500),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p95_ms": round(1000 * percentile(latencies, 0.95), 1),
        "seconds": round(seconds, 1),
    }


async def start_batch(client: httpx.AsyncClient, lines: int) -> str:
    rows = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/ner",
            "body": {"task": "ner-it-clinical", "documents": [{"id": "d", "text": f"{NOTE} <{i}>"}]},
        }
        for i in range(lines)
    ]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    uploaded = (await client.post("/v1/files", files={"file": ("b.jsonl", data)}, data={"purpose": "batch"})).json()
    body = {"input_file_id": uploaded["id"], "endpoint": "/v1/ner", "completion_window": "24h"}
    return str((await client.post("/v1/batches", json=body)).json()["id"])


async def batch_done(client: httpx.AsyncClient, batch_id: str) -> int:
    return int((await client.get(f"/v1/batches/{batch_id}")).json()["request_counts"]["completed"])


async def tokens(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    return sum(
        sample(text, "medlora_completion_tokens_total", task=t, adapter=f"{t}@1") or 0.0 for t in ("ner-it-clinical",)
    )


async def run(url: str, admitted: int, requests: int, batch_lines: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await level(client, 1, 4, "warmup")
        unloaded = await level(client, 1, requests // 2, "alone")
        batch_id = await start_batch(client, batch_lines)
        levels = []
        for factor in (0.5, 1.0, 2.0):
            before_tokens, before_lines = await tokens(client), await batch_done(client, batch_id)
            result = await level(client, max(1, round(factor * admitted)), requests, f"x{factor}")
            result["offered_x_bound"] = factor
            result["decoded_tokens"] = int(await tokens(client) - before_tokens)
            result["batch_lines_done_meanwhile"] = await batch_done(client, batch_id) - before_lines
            result["p50_x_unloaded"] = round(result["p50_ms"] / unloaded["p50_ms"], 2)
            result["p95_x_unloaded"] = round(result["p95_ms"] / unloaded["p95_ms"], 2)
            levels.append(result)
        metrics = (await client.get("/metrics")).text
        batch = (await client.get(f"/v1/batches/{batch_id}")).json()
        await client.post(f"/v1/batches/{batch_id}/cancel")
    rejected = sample(metrics, "medlora_admission_rejected_total", pool="interactive", reason="overloaded") or 0
    return {
        "admitted_generations": admitted,
        "note": "closed-loop clients, one-document NER requests; a 429 is counted, not retried",
        "unloaded": unloaded,
        "levels": levels,
        "metrics_rejected_overloaded": rejected,
        "batch": {"lines": batch_lines, "status": batch["status"], "counts": batch["request_counts"]},
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = result["levels"]
    x = [lv["offered_x_bound"] for lv in levels]
    fig, left = plt.subplots(figsize=(6.4, 4))
    left.plot(x, [lv["p50_ms"] for lv in levels], "o-", label="p50 (admitted requests)")
    left.plot(x, [lv["p95_ms"] for lv in levels], "s--", label="p95 (admitted requests)")
    left.axhline(result["unloaded"]["p50_ms"], color="grey", linestyle=":", label="p50 unloaded, no batch")
    left.set_xlabel("offered interactive load (concurrent generations / admission bound)")
    left.set_ylabel("latency (ms)")
    left.set_xticks(x)
    right = left.twinx()
    right.bar(x, [lv["refused_429"] / lv["requests"] for lv in levels], width=0.12, alpha=0.3, color="red")
    right.set_ylabel("share refused with 429", color="red")
    right.set_ylim(0, 1)
    left.legend(loc="center", fontsize=8)  # the lines rise to the upper left, the 429 bar is right
    left.set_title(f"Interactive NER with a batch job running (bound {result['admitted_generations']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admitted", type=int, default=8)
    parser.add_argument("--requests", type=int, default=48, help="Requests per load level.")
    parser.add_argument("--batch-lines", type=int, default=400)
    parser.add_argument("--wait", type=float, default=0.25, help="MEDLORA_ADMISSION_WAIT_S.")
    parser.add_argument("--port", type=int, default=8795)
    parser.add_argument("--plot", type=Path, help="Write the latency-vs-load plot (PNG) here.")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "medlora-bench")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="overload-"))
    extra = {
        "MEDLORA_MAX_ADMITTED_GENERATIONS": str(args.admitted),
        "MEDLORA_ADMISSION_WAIT_S": str(args.wait),
        "MEDLORA_BATCH_DIR": str(work / "batches"),
        "MEDLORA_BATCH_CONCURRENCY": "4",
        "MEDLORA_BACKGROUND_MAX_ADMITTED_GENERATIONS": "4",
    }
    proc, _ = start_server({**random_qwen3_env(args.cache), **extra}, args.port, work / "server.log")
    try:
        result = asyncio.run(run(f"http://127.0.0.1:{args.port}", args.admitted, args.requests, args.batch_lines))
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    print(json.dumps(result, indent=1))
    if args.plot:
        plot(result, args.plot)


if __name__ == "__main__":
    main()
