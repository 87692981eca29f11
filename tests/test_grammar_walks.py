"""Random walks through every shipped task's grammar over the real Qwen3 vocabulary: at each
step any token the grammar allows, uniformly (the worst case a model can be). Every walk must
end within the request's max_tokens with an answer that parses and obeys the task's schema.
The e2e tests check the same on real vLLM; these catch a grammar hole in seconds."""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import pytest

from app.tasks.grammar import compile_grammar, json_escape
from app.tasks.schema import worst_case_bytes
from tests.conftest import SHIPPED_TASKS, shipped_task
from tests.support.qwen3 import qwen3_tokenizer

SOURCE = (
    "Accesso del 03/02/2025. Donna di 79 anni, dispnea da 5 giorni, SpO2 87%, TC 36,8 °C. "
    "Terapia: amoxicillina 1 g per os ogni 8 ore per 7 giorni; furosemide 40 mg ev. «ok» 🙂 caffè"
)
WALKS = 10


def walk(lltok: Any, grammar: str, rng: random.Random, eos: int, limit: int) -> tuple[list[int], bool]:
    import llguidance

    matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    out: list[int] = []
    while len(out) < limit:
        bits = np.unpackbits(np.frombuffer(bytes(matcher.compute_bitmask()), dtype=np.uint8), bitorder="little")
        token = int(rng.choice(np.nonzero(bits[: lltok.vocab_size])[0]))
        if token == eos:
            return out, True
        assert matcher.consume_token(token), matcher.get_error()
        out.append(token)
    return out, False


@pytest.mark.parametrize("name", SHIPPED_TASKS)
def test_any_walk_through_a_tasks_grammar_ends_in_time_with_a_valid_answer(lltok: Any, name: str) -> None:
    tokenizer = qwen3_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    task = shipped_task(name)
    payload = {"text": SOURCE, "context": SOURCE, "question": "?"}
    rng = random.Random(name)
    for ask in task.kind.asks(task, payload):
        grammar = compile_grammar(ask.schema, ask.source)
        max_tokens = worst_case_bytes(ask.schema, json_escape(ask.source)) + 1  # as the runner asks
        for _ in range(WALKS):
            tokens, ended = walk(lltok, grammar, rng, eos, max_tokens)
            text = tokenizer.decode(tokens)
            assert ended, f"no end within max_tokens={max_tokens}: {text[:200]!r}"
            output = json.loads(text)
            assert not list(ask.validator.iter_errors(output)), text
            for grounded in task.kind.grounded_strings(output):
                assert grounded in SOURCE, (grounded, text)
