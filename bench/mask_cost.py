"""CPU cost of one engine step's grammar bitmasks, with and without speculative tokens.

vLLM 0.32 (`vllm/v1/structured_output/__init__.py`, `StructuredOutputManager.grammar_bitmask`)
fills one bitmask per request per step, and with speculation one per draft position plus the
bonus position: for each request, serially, `fill_bitmask` then `accept_tokens(draft)` for each
draft token, `fill_bitmask` for the bonus token, then `rollback(K)`. Only without speculation
(`num_speculative_tokens == 0`) and above 128 structured requests does it fill in parallel
(chunks of 16 on min(cpus // 2, 8) threads). llguidance 1.7.6 can fill both cases in parallel
in Rust: `llguidance.torch.fill_next_token_bitmask_par` and
`fill_next_token_bitmask_par_with_draft_tokens` (an `LLExecutor`), which vLLM does not call.

Here each of B running requests is a shipped task's generation (tasks drawn in turn) at a
gold-answer position drawn uniformly over its tokens (a running request is more often in a
long answer), the matcher advanced to it as the model wrote it; drafts are the next K gold
tokens (all valid: the most work a step can ask). Each timed step fills every request's masks,
then advances every request past its drafts and bonus token (untimed), as if every draft was
accepted: no state is filled twice (a matcher refills a state it filled before from a cache,
several times faster). Per configuration: a warm-up step,
`--steps` timed steps, `--repeats` times with other draws; the figures are the median step's
wall time and CPU time (all threads: on a shared machine the CPU time is the steadier cost).
The parallel fill's masks are checked equal to the serial fill's on every configuration.

    PYTHONPATH=$PWD .venv/bin/python -m bench.mask_cost --out /tmp/mask-cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bench.grammar_cases import Case, emit, gold_cases, qwen3_tokenizers

# vLLM 0.32's thresholds (StructuredOutputManager.__init__): parallel above 128 requests, in
# chunks of 16, on at least 1 and at most min(cpus // 2, 8) threads; never with speculation.
VLLM_PARALLEL_ABOVE = 128
VLLM_PARALLEL_CHUNK = 16

# H200 HBM3e bandwidth and Qwen3-1.7B's per-step reads (issue 19): bf16 weights, KV per token.
H200_BYTES_PER_S = 4.8e12
QWEN3_1_7B_WEIGHT_BYTES = 3.44e9
QWEN3_1_7B_KV_BYTES_PER_TOKEN = 112 * 1024


def gpu_step_ms(batch: int, context_tokens: float) -> float:
    """The memory-bound floor of one Qwen3-1.7B decode step on an H200: weights once, plus
    every sequence's KV cache (a verification step with K drafts reads the same)."""
    read = QWEN3_1_7B_WEIGHT_BYTES + batch * context_tokens * QWEN3_1_7B_KV_BYTES_PER_TOKEN
    return 1000 * read / H200_BYTES_PER_S


def largest_batch(k: int, us_per_mask: float, threads: int, context_tokens: float, limit: int = 1024) -> int:
    """The largest batch whose bitmasks, (1 + k) per request at `us_per_mask` of CPU each over
    `threads` threads, fill within the GPU step floor (`limit` when any batch does)."""
    fill_ms_per_request = (1 + k) * us_per_mask / 1000 / threads
    kv_ms_per_request = gpu_step_ms(1, context_tokens) - gpu_step_ms(0, context_tokens)
    if fill_ms_per_request <= kv_ms_per_request:
        return limit
    return min(limit, int(gpu_step_ms(0, context_tokens) / (fill_ms_per_request - kv_ms_per_request)))


def drafts_at(tokens: Sequence[int], pos: int, k: int) -> list[int]:
    """The next k gold tokens after `pos` as drafts, never the end of sequence (the last token):
    vLLM rolls a stopped matcher back specially, and n-gram drafts rarely end an answer."""
    return list(tokens[pos : min(pos + k, len(tokens) - 1)])


@dataclass
class Slot:
    matcher: Any
    case: Case
    pos: int


class Batch:
    """B running requests, each a matcher at a position of its gold answer."""

    def __init__(self, cases: Sequence[Case], lltok: Any, size: int, rng: random.Random):
        self.by_task: dict[str, list[Case]] = {}
        for case in cases:
            self.by_task.setdefault(case.task, []).append(case)
        self.tasks = sorted(self.by_task)
        self.lltok = lltok
        self.rng = rng
        self.slots = [self._fresh(i) for i in range(size)]

    def _fresh(self, i: int, start: bool = False) -> Slot:
        """A request of the i-th slot's task: at a position drawn over its answer's tokens, or
        with `start` a new one. It got there as in the engine, a mask filled before each token:
        llguidance builds a grammar's lexer states lazily, so a matcher that only consumed its
        tokens would fill its first masks several times slower than a running request does."""
        import llguidance
        from llguidance.torch import allocate_token_bitmask, fill_next_token_bitmask

        pool = self.by_task[self.tasks[i % len(self.tasks)]]
        case = self.rng.choices(pool, weights=[len(c.tokens) for c in pool])[0]
        pos = 0 if start else self.rng.randrange(len(case.tokens) - 1)  # the end of sequence remains
        matcher = llguidance.LLMatcher(self.lltok, case.grammar, log_level=0)
        scratch = allocate_token_bitmask(1, self.lltok.vocab_size)
        for token in case.tokens[:pos]:
            fill_next_token_bitmask(matcher, scratch, 0)
            if not matcher.consume_token(token):
                raise RuntimeError(f"{case.task}: its grammar refuses its gold answer: {matcher.get_error()}")
        return Slot(matcher, case, pos)

    def advance(self, k: int) -> None:
        """Every request past its drafts (all accepted) and the bonus token, so that no state
        is filled twice; one that reached its end of sequence is replaced by a new request,
        at its start."""
        for i, slot in enumerate(self.slots):
            taken = slot.case.tokens[slot.pos : slot.pos + 1 + len(drafts_at(slot.case.tokens, slot.pos, k))]
            slot.matcher.consume_tokens(list(taken))
            slot.pos += len(taken)
            if slot.pos >= len(slot.case.tokens) - 1:
                self.slots[i] = self._fresh(i, start=True)


def fill_serial(slots: Sequence[Slot], k: int, bitmask: Any) -> int:
    """vLLM 0.32's speculative path (and its path at 128 requests or fewer): returns masks filled."""
    from llguidance.torch import fill_next_token_bitmask

    row = 0
    for slot in slots:
        drafts = drafts_at(slot.case.tokens, slot.pos, k)
        for token in drafts:
            fill_next_token_bitmask(slot.matcher, bitmask, row)
            slot.matcher.consume_token(token)
            row += 1
        fill_next_token_bitmask(slot.matcher, bitmask, row)
        row += 1
        if drafts:
            slot.matcher.rollback(len(drafts))
    return row


def fill_vllm_threads(slots: Sequence[Slot], pool: ThreadPoolExecutor, bitmask: Any) -> int:
    """vLLM 0.32's path above 128 requests without speculation: chunks of 16 on its pool."""
    from llguidance.torch import fill_next_token_bitmask

    def chunk(start: int) -> None:
        for row in range(start, min(start + VLLM_PARALLEL_CHUNK, len(slots))):
            fill_next_token_bitmask(slots[row].matcher, bitmask, row)

    for future in [pool.submit(chunk, s) for s in range(0, len(slots), VLLM_PARALLEL_CHUNK)]:
        future.result()
    return len(slots)


def fill_parallel(slots: Sequence[Slot], k: int, executor: Any, bitmask: Any) -> int:
    """llguidance's Rust-side parallel fill, drafts included (its matcher state is restored)."""
    from llguidance.torch import fill_next_token_bitmask_par, fill_next_token_bitmask_par_with_draft_tokens

    if k == 0:
        fill_next_token_bitmask_par(executor, [(s.matcher, i) for i, s in enumerate(slots)], bitmask)
        return len(slots)
    work, row = [], 0
    for slot in slots:
        drafts = drafts_at(slot.case.tokens, slot.pos, k)
        work.append((slot.matcher, row, drafts))
        row += 1 + len(drafts)
    fill_next_token_bitmask_par_with_draft_tokens(executor, work, bitmask)
    return row


Filler = Callable[[Sequence[Slot], Any], int]


def measure(
    cases: Sequence[Case], lltok: Any, batch: int, k: int, steps: int, seed: int, fill: Filler
) -> list[tuple[float, float, int]]:
    """(wall seconds, CPU seconds of all threads, masks filled) of each timed step, after one
    warm-up step. Each filler gets its own requests:
    a matcher fills a state it filled before from a cache, several times faster."""
    from llguidance.torch import allocate_token_bitmask

    requests = Batch(cases, lltok, batch, random.Random(seed))
    bitmask = allocate_token_bitmask(batch * (1 + k), lltok.vocab_size)
    times: list[tuple[float, float, int]] = []
    for step in range(steps + 1):
        started, cpu = time.perf_counter(), time.process_time()
        filled = fill(requests.slots, bitmask)
        if step:
            times.append((time.perf_counter() - started, time.process_time() - cpu, filled))
        requests.advance(k)
    return times


def same_masks(cases: Sequence[Case], lltok: Any, batch: int, k: int, seed: int, fillers: dict[str, Filler]) -> bool:
    """Whether every filler writes the serial fill's masks on the same requests, and leaves each
    matcher where it was (the rest of its answer still accepted)."""
    import torch
    from llguidance.torch import allocate_token_bitmask

    requests = Batch(cases, lltok, batch, random.Random(seed))
    masks = []
    for fill in fillers.values():
        bitmask = allocate_token_bitmask(batch * (1 + k), lltok.vocab_size)
        masks.append(bitmask[: fill(requests.slots, bitmask)])
    equal = all(m.shape == masks[0].shape and torch.equal(m, masks[0]) for m in masks)
    rest = [list(s.case.tokens[s.pos :]) for s in requests.slots]
    return equal and all(s.matcher.validate_tokens(r) == len(r) for s, r in zip(requests.slots, rest, strict=True))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import llguidance

    tokenizer, lltok = qwen3_tokenizers()
    cases = gold_cases(tokenizer, args.notes, args.seed)
    executor = llguidance.LLExecutor(args.threads)
    vllm_workers = max(1, min((os.cpu_count() or 1) // 2, 8))
    vllm_pool = ThreadPoolExecutor(max_workers=vllm_workers)
    rows = []
    for batch in args.batches:
        for k in args.k:
            fillers: dict[str, Filler] = {
                "serial": lambda s, m, k=k: fill_serial(s, k, m),
                "llg_parallel": lambda s, m, k=k: fill_parallel(s, k, executor, m),
            }
            if k == 0:
                fillers["vllm_threads"] = lambda s, m: fill_vllm_threads(s, vllm_pool, m)
            step_ms: dict[str, list[float]] = {name: [] for name in fillers}
            cpu_ms: dict[str, list[float]] = {name: [] for name in fillers}
            masks: list[int] = []
            for repeat in range(args.repeats):
                order = list(fillers)
                for j, name in enumerate(order[repeat % len(order) :] + order[: repeat % len(order)]):
                    seed = args.seed + 7919 * repeat + 104729 * j + 31 * batch + k
                    for seconds, cpu, filled in measure(cases, lltok, batch, k, args.steps, seed, fillers[name]):
                        step_ms[name].append(1000 * seconds)
                        cpu_ms[name].append(1000 * cpu)
                        masks.append(filled)
            # 1 + K per request, fewer where an answer has fewer tokens left.
            masks_per_step = round(statistics.fmean(masks))
            row: dict[str, Any] = {
                "batch": batch,
                "k": k,
                "masks_per_step": masks_per_step,
                "masks_identical": same_masks(cases, lltok, min(batch, 32), k, args.seed + k, fillers),
            }
            for name, values in step_ms.items():
                ms = statistics.median(values)
                row[f"{name}_ms"] = round(ms, 2)
                row[f"{name}_us_per_mask"] = round(1000 * ms / masks_per_step, 1)
                row[f"{name}_cpu_ms"] = round(statistics.median(cpu_ms[name]), 2)
            row["vllm_path"] = "vllm_threads" if k == 0 and batch > VLLM_PARALLEL_ABOVE else "serial"
            row["gpu_step_ms"] = round(gpu_step_ms(batch, args.context_tokens), 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    vllm_pool.shutdown()
    # CPU per mask, the median over configurations: what a GPU host's core pays, whatever its load.
    us = statistics.median(1000 * r["serial_cpu_ms"] / r["masks_per_step"] for r in rows)
    bounds = {
        f"k{k}": {f"{threads}_threads": largest_batch(k, us, threads, args.context_tokens) for threads in (1, 8, 14)}
        for k in args.k
    }
    return {
        "cpu_us_per_mask": round(us, 1),
        "largest_batch_within_gpu_step": bounds,
        "cpus": os.cpu_count(),
        "llguidance_threads": args.threads,
        "vllm_fill_workers": vllm_workers,
        "notes_per_task": args.notes,
        "cases": len(cases),
        "context_tokens": args.context_tokens,
        "rows": rows,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", type=int, default=40, help="synthetic notes per task")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128, 256])
    parser.add_argument("--k", type=int, nargs="+", default=[0, 2, 4], help="speculative tokens")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llguidance executor threads")
    parser.add_argument("--context-tokens", type=float, default=1000.0, help="per sequence, for the GPU floor")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    emit(run(args), args.out)


if __name__ == "__main__":
    main()
