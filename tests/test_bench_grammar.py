"""The grammar benchmarks' own logic (bench/mask_cost.py, bench/forced_tokens.py): step counts,
runs, drafts, and the parallel fill against the serial one on real grammars and vocabulary."""

from __future__ import annotations

import random
from typing import Any

import pytest

from bench.forced_tokens import runs, steps, walk
from bench.grammar_cases import Case, gold_cases
from bench.mask_cost import Batch, drafts_at, fill_parallel, fill_serial, gpu_step_ms, largest_batch, same_masks


def test_runs_are_the_maximal_stretches_of_forced_tokens() -> None:
    assert runs([True, True, False, True, False, False, True, True, True]) == [2, 1, 3]
    assert runs([]) == []
    assert runs([False]) == []


def test_plain_decoding_takes_a_step_per_token() -> None:
    assert steps([True, False, True, True], 0) == 4


def test_forced_drafts_ride_along_up_to_k_per_step() -> None:
    # N F F F N F, k=2: step 1 samples N; step 2 verifies F F and samples the third F; step 3
    # samples N; step 4 verifies the last F. With k=4, step 2 verifies F F F and samples N.
    forced = [False, True, True, True, False, True]
    assert steps(forced, 2) == 4
    assert steps(forced, 4) == 3


def test_fast_forward_appends_a_forced_tail_without_a_step() -> None:
    assert steps([False, True, True], None) == 1
    assert steps([True, True, False, True], None) == 1


def test_drafts_never_include_the_end_of_sequence() -> None:
    tokens = [10, 11, 12, 99]  # 99: the end of sequence
    assert drafts_at(tokens, 0, 2) == [10, 11]
    assert drafts_at(tokens, 1, 4) == [11, 12]
    assert drafts_at(tokens, 3, 4) == []


def test_gpu_floor_is_the_weights_read_once_plus_each_sequence_kv() -> None:
    assert gpu_step_ms(1, 0) == pytest.approx(0.717, abs=0.001)
    assert gpu_step_ms(2, 1000) - gpu_step_ms(1, 1000) == pytest.approx(112 * 1024 * 1000 / 4.8e9)


def test_largest_batch_keeps_the_fill_within_the_gpu_step() -> None:
    batch = largest_batch(4, 75.0, 1, 1000)
    assert 5 * 75e-3 * batch <= gpu_step_ms(batch, 1000) < 5 * 75e-3 * (batch + 1)
    # A fill cheaper per request than the request's KV read never catches the GPU up.
    assert largest_batch(0, 10.0, 8, 1000, limit=512) == 512
    assert largest_batch(2, 75.0, 8, 1000) > largest_batch(2, 75.0, 1, 1000)


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    from tests.support.qwen3 import qwen3_tokenizer

    return gold_cases(qwen3_tokenizer(), 2, seed=3, tasks=["ner-it-clinical", "classify-it-note-type"])


@pytest.mark.parametrize("k", [0, 3])
def test_parallel_fill_writes_the_serial_masks_and_leaves_matchers_in_place(
    cases: list[Case], lltok: Any, k: int
) -> None:
    import llguidance

    executor = llguidance.LLExecutor(2)
    fillers = {
        "serial": lambda s, m: fill_serial(s, k, m),
        "parallel": lambda s, m: fill_parallel(s, k, executor, m),
    }
    assert same_masks(cases, lltok, 6, k, 0, fillers)


def test_serial_fill_writes_one_mask_per_draft_and_the_bonus(cases: list[Case], lltok: Any) -> None:
    from llguidance.torch import allocate_token_bitmask

    requests = Batch(cases, lltok, 4, random.Random(1))
    bitmask = allocate_token_bitmask(4 * 3, lltok.vocab_size)
    expected = sum(1 + len(drafts_at(s.case.tokens, s.pos, 2)) for s in requests.slots)
    assert fill_serial(requests.slots, 2, bitmask) == expected


def test_a_complete_answer_leaves_only_the_end_of_sequence(cases: list[Case], lltok: Any) -> None:
    for case in cases:
        walked = walk(case, lltok)
        assert walked.only[-1], case.task
        assert len(walked.only) == len(case.tokens)
