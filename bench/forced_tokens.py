"""How many of an answer's tokens the grammar forces, per task type, over the real Qwen3 vocabulary.

Gold answers of synthetic notes (`bench.grammar_cases`: every shipped task, serialized as the
model writes them, tokenized canonically as the demo adapters are trained, end of sequence
last) are walked through their llguidance matcher. At each token, before consuming it:

- `only`: the mask admits exactly one token (the model has no choice at all);
- `ff`: the grammar forces the next bytes and llguidance's fast-forward tokens
  (`LLMatcher.compute_ff_tokens()`, the canonical tokenization of the forced bytes, minus a
  last token that could merge with what follows) begin with this token. A key such as
  `"label":` is forced bytes, but the mask still admits every prefix tokenization of it;
  fast-forward (or a draft) would write the canonical one.

A token is forced if either holds. Per task type: the share of forced tokens, the share that
lie in runs of 2 or more (what a draft could carry beyond the token a step samples), and the
engine steps an answer takes one token per step, with the forced tokens as drafts of at most
K (each step then verifies the forced run ahead of it and samples one more token), and with
unbounded fast-forward (forced tokens appended without a step). No model runs: the figures
are what the grammar alone allows. Beside them, the CPU time of each mask of the walk (one
thread, a fresh matcher per answer as in the engine): mean, median, 99th percentile, and the
mean of an answer's first mask (the grammar's lexer is built lazily, the first mask pays most).

    PYTHONPATH=$PWD .venv/bin/python -m bench.forced_tokens --out /tmp/forced-tokens.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.grammar_cases import Case, emit, gold_cases, qwen3_tokenizers


@dataclass
class Walked:
    """One answer's tokens, flagged."""

    only: list[bool]
    ff: list[bool]
    mask_us: list[float] = field(default_factory=list)  # CPU time of each mask, from a fresh matcher

    @property
    def forced(self) -> list[bool]:
        return [a or b for a, b in zip(self.only, self.ff, strict=True)]


def runs(flags: Sequence[bool]) -> list[int]:
    """Lengths of the maximal runs of True."""
    found, current = [], 0
    for flag in flags:
        if flag:
            current += 1
        elif current:
            found.append(current)
            current = 0
    if current:
        found.append(current)
    return found


def steps(forced: Sequence[bool], k: int | None) -> int:
    """Engine steps to decode the answer when each step verifies up to `k` drafts (None: all)
    made of the forced tokens ahead of it, then samples one token; k = 0 is plain decoding."""
    pos, taken = 0, 0
    while pos < len(forced):
        run = 0
        while pos + run < len(forced) and forced[pos + run] and (k is None or run < k):
            run += 1
        if k is None and pos + run == len(forced):
            break  # a forced tail (the end of sequence among it) is appended without a step
        pos += run + 1
        taken += 1
    return taken


def walk(case: Case, lltok: Any) -> Walked:
    import llguidance
    import numpy as np
    from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

    matcher = llguidance.LLMatcher(lltok, case.grammar, log_level=0)
    mask = allocate_token_bitmask(1, lltok.vocab_size)
    out = Walked([], [])
    for token in case.tokens:
        started = time.thread_time()
        fill_next_token_bitmask(matcher, mask, 0)
        out.mask_us.append(1e6 * (time.thread_time() - started))
        out.only.append(int(np.bitwise_count(mask.view(np.uint32)).sum()) == 1)
        ahead = matcher.compute_ff_tokens()
        out.ff.append(bool(ahead) and ahead[0] == token)
        if not matcher.consume_token(token):
            raise RuntimeError(f"{case.task}: its grammar refuses its gold answer: {matcher.get_error()}")
    return out


@dataclass
class Tally:
    answers: int = 0
    tokens: int = 0
    only: int = 0
    ff: int = 0
    forced: int = 0
    in_runs: int = 0  # forced tokens in runs of 2 or more
    steps: dict[str, int] = field(default_factory=dict)
    mask_us: list[float] = field(default_factory=list)
    first_masks: list[float] = field(default_factory=list)

    def add(self, walked: Walked, ks: Sequence[int]) -> None:
        forced = walked.forced
        self.answers += 1
        self.tokens += len(forced)
        self.only += sum(walked.only)
        self.ff += sum(walked.ff)
        self.forced += sum(forced)
        self.in_runs += sum(r for r in runs(forced) if r >= 2)
        self.mask_us += walked.mask_us
        self.first_masks.append(walked.mask_us[0])
        for k in [0, *ks, None]:
            key = "steps_ff" if k is None else f"steps_k{k}"
            self.steps[key] = self.steps.get(key, 0) + steps(forced, k)

    def row(self) -> dict[str, Any]:
        def share(n: int) -> float:
            return round(n / self.tokens, 3) if self.tokens else 0.0

        plain = self.steps.get("steps_k0", 0)
        row: dict[str, Any] = {
            "answers": self.answers,
            "tokens_per_answer": round(self.tokens / max(1, self.answers), 1),
            "forced_share": share(self.forced),
            "only_token_share": share(self.only),
            "ff_share": share(self.ff),
            "in_runs_2plus_share": share(self.in_runs),
        }
        if self.mask_us:
            ordered = sorted(self.mask_us)
            row["mask_us_mean"] = round(statistics.fmean(ordered), 1)
            row["mask_us_p50"] = round(ordered[len(ordered) // 2], 1)
            row["mask_us_p99"] = round(ordered[int(0.99 * (len(ordered) - 1))], 1)
            row["first_mask_us_mean"] = round(statistics.fmean(self.first_masks), 1)
        for key, value in self.steps.items():
            if key != "steps_k0":
                row[f"{key}_saved"] = round(1 - value / plain, 3) if plain else 0.0
        return row


def run(notes: int, seed: int, ks: Sequence[int]) -> dict[str, Any]:
    tokenizer, lltok = qwen3_tokenizers()
    by_type: dict[str, Tally] = {}
    by_task: dict[str, Tally] = {}
    for case in gold_cases(tokenizer, notes, seed):
        walked = walk(case, lltok)
        by_type.setdefault(case.type, Tally()).add(walked, ks)
        by_task.setdefault(case.task, Tally()).add(walked, ks)
    return {
        "notes_per_task": notes,
        "by_type": {name: t.row() for name, t in sorted(by_type.items())},
        "by_task": {name: t.row() for name, t in sorted(by_task.items())},
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", type=int, default=100, help="synthetic notes per task")
    parser.add_argument("--k", type=int, nargs="+", default=[2, 4], help="draft sizes for the step estimate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    emit(run(args.notes, args.seed, args.k), args.out)


if __name__ == "__main__":
    main()
