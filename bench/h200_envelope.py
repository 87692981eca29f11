"""On paper: notes per second on one H200 for Qwen3-1.7B, from the decode steps measured here.

No GPU was lent to this project, so this is arithmetic, not a measurement; every input is either
a published hardware figure or a number another benchmark in bench/ measured (named below).
A note is 1,500 characters. Per engine step at batch B:

- GPU: the weights once (3.44 GB) plus each sequence's KV cache (112 KiB per token of context),
  read at 4.8 TB/s; with drafts, the verified tokens' compute at 50% of 989 TFLOP/s if larger;
- grammar: one mask per request per position at 71 µs (bench.mask_cost, this CPU), serial
  (vLLM 0.32: always with drafts, and without them up to 128 requests), else spread over 8 threads;
- the step lasts the longer of the two (vLLM fills masks while the forward pass runs).

A note costs its decode steps' share of the batch's steps plus its prefill (the note's own
tokens: the instruction head is served from the prefix cache) at 50% of peak compute, summed
(conservative: chunked prefill overlaps some of it with decode).

    .venv/bin/python -m bench.h200_envelope
"""

from __future__ import annotations

from dataclasses import dataclass

WEIGHTS_GB = 3.44
HBM_TB_S = 4.8
KV_KIB_PER_TOKEN = 112
PEAK_TFLOPS = 989.0
MFU = 0.5
PARAMS = 1.7e9
MASK_US = 71.0  # bench.mask_cost, median per mask in a running batch
PARALLEL_THREADS = 8  # vLLM 0.32's pool: min(cpus // 2, 8)
CHARS = 1500
CHARS_PER_TOKEN = 3.0  # the real Qwen3 tokenizer on the synthetic notes (2.7-3.1)


@dataclass(frozen=True)
class Task:
    name: str
    decoded_tokens: float  # per 1,500-character note
    head_tokens: float  # instruction head and examples (prefix-cached), per generation
    generations: int  # per note (a form's item groups each see the whole note)
    tokens_per_step_with_drafts: float  # bench.speculative, 4 drafts, lookup 2-5


# Decoded tokens: bench.forced_tokens' gold answers (NER 77.6 tokens on notes of 370 characters,
# relations 166.8 on 442, scaled to 1,500; the form's 136.5 does not grow with the note: its
# items are fixed). Heads: the shipped prompts with the Qwen3 tokenizer. Tokens per step with
# drafts: bench.speculative's steps per entity / relation / item, off over on.
TASKS = (
    Task("ner-it-clinical", 77.6 * CHARS / 370, 344, 1, 16.93 / 11.24),
    Task("re-it-medication", 166.8 * CHARS / 442, 459, 1, 18.5 / 10.0),
    Task("crf-it-dyspnea", 136.5, 645, 2, 11.85 / 7.98),
)


def step_ms(task: Task, batch: int, drafts: int) -> tuple[float, float]:
    """(GPU ms, grammar ms) of one engine step at this batch."""
    note_tokens = CHARS / CHARS_PER_TOKEN
    context = task.head_tokens + note_tokens + task.decoded_tokens / task.generations / 2
    memory_ms = (WEIGHTS_GB * 1e9 + batch * context * KV_KIB_PER_TOKEN * 1024) / (HBM_TB_S * 1e12) * 1e3
    compute_ms = 2 * PARAMS * batch * (1 + drafts) / (PEAK_TFLOPS * 1e12 * MFU) * 1e3
    masks = batch * (1 + drafts)
    serial = drafts > 0 or batch <= 128
    grammar_ms = masks * MASK_US / 1e3 / (1 if serial else PARALLEL_THREADS)
    return max(memory_ms, compute_ms), grammar_ms


def notes_per_s(task: Task, batch: int, drafts: int) -> tuple[float, str]:
    gpu, grammar = step_ms(task, batch, drafts)
    step = max(gpu, grammar)
    per_step = task.tokens_per_step_with_drafts if drafts else 1.0
    decode_ms = task.decoded_tokens / per_step * step / batch
    prefill_ms = 2 * PARAMS * (CHARS / CHARS_PER_TOKEN) * task.generations / (PEAK_TFLOPS * 1e12 * MFU) * 1e3
    return 1e3 / (decode_ms + prefill_ms), "grammar" if grammar > gpu else "GPU"


def main() -> None:
    print("| task | decoded tokens / note | batch | notes/s without drafts (bound) | with 4 drafts (bound) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for task in TASKS:
        for batch in (1, 2, 32, 256):
            off, off_bound = notes_per_s(task, batch, 0)
            on, on_bound = notes_per_s(task, batch, 4)
            cells = f"{off:.1f} ({off_bound}) | {on:.1f} ({on_bound})"
            print(f"| {task.name} | {task.decoded_tokens:.0f} | {batch} | {cells} |")


if __name__ == "__main__":
    main()
