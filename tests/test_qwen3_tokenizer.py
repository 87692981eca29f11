"""The test-support Qwen3 tokenizer is Qwen3-1.7B's: the same ids as Qwen's own encoder on
varied text, the added tokens at Qwen3's ids, and Qwen3's chat layout with thinking off."""

from __future__ import annotations

from typing import Any

import pytest

from app.tasks.types.base import Task
from app.training.synthetic import examples_for_task
from tests.conftest import shipped_task
from tests.support.qwen3 import QWEN3_ADDED_TOKENS, package_encoder, qwen3_tokenizer

CORPUS = [
    "Paziente di 72 anni, febbre 38,5 °C; perché città è così. Caffè, più, già, però, Àncora, Èrba, Òpera.",
    "Emoji 🙂 👩‍⚕️ 🫁 e simboli «ok» “virgolette” — µL, ±, ≥, ½.",
    "CRLF\r\nLF\ncontrol\ttab\t\tdoppio, spazi   multipli   e fine riga  \n\n\n",
    "Cifre 0123456789, 3.14, 1/2/1950, 14.300/µL, SpO2 94%, PA 158/94 mmHg.",
    'Citazione: "dolore" al fianco\\destro, C:\\referti\\2024\\nota.txt, \\u00e8 non è un escape.',
    "Decomposed e\u0301 vs é, ﬁ ligature, ＦＵＬＬＷＩＤＴＨ, Ω vs Ω.",
    "Lettera di dimissione.\n\nDiagnosi: polmonite basale destra. Terapia: amoxicillina 1 g x 3/die per os.",
    "ED note: 45-year-old woman with acute chest pain radiating to the left arm. Denies fever.",
    "",
    " ",
]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return qwen3_tokenizer()


@pytest.mark.parametrize("text", CORPUS)
def test_ids_equal_qwens_own_encoder(tokenizer: Any, text: str) -> None:
    assert tokenizer.encode(text, add_special_tokens=False) == package_encoder().encode(text)


@pytest.mark.parametrize("name", ["ner-it-clinical", "ner-en-clinical", "qa-it-clinical"])
def test_ids_equal_qwens_own_encoder_on_synthetic_notes(tokenizer: Any, name: str) -> None:
    task: Task = shipped_task(name)
    reference = package_encoder()
    for row in examples_for_task(task, 40, seed=2):
        text = row.get("text") or row["context"]
        assert tokenizer.encode(text, add_special_tokens=False) == reference.encode(text)


def test_added_tokens_have_qwen3s_ids_and_specialness(tokenizer: Any) -> None:
    tok = tokenizer
    assert len(tok) == 151_669
    for offset, (content, special) in enumerate(QWEN3_ADDED_TOKENS):
        assert tok.convert_tokens_to_ids(content) == 151_643 + offset
        assert (content in tok.all_special_tokens) is special
    assert tok.convert_tokens_to_ids("<think>") == 151_667 and tok.convert_tokens_to_ids("</think>") == 151_668
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    # A special token in text is one id; the think markers are not special (decoding keeps them).
    assert tok.encode("<|im_start|>user", add_special_tokens=False)[0] == 151_644
    assert tok.decode([151_667, 151_645], skip_special_tokens=True) == "<think>"


def test_chat_template_renders_qwen3s_layout_with_thinking_off(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "example"},
        {"role": "assistant", "content": '{"labels":["X"]}'},
        {"role": "user", "content": "U"},
    ]
    rendered = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert rendered == (
        "<|im_start|>system\nS<|im_end|>\n"
        "<|im_start|>user\nexample<|im_end|>\n"
        '<|im_start|>assistant\n{"labels":["X"]}<|im_end|>\n'
        "<|im_start|>user\nU<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_prompts_built_in_many_threads_at_once_keep_their_special_tokens(tokenizer: Any) -> None:
    # transformers keeps `split_special_tokens` as state on the shared Rust tokenizer: a note's
    # content encoded with it on in one thread once made another thread's `<|im_end|>` plain
    # text (found by the FHIR walk test: the same request, a different prompt now and then).
    from concurrent.futures import ThreadPoolExecutor

    from app.tasks.prompts import PromptRenderer, build_messages

    renderer = PromptRenderer(tokenizer)
    task = shipped_task("ner-it-clinical")
    messages = [build_messages(task, {"text": f"Nota {i}: febbre <|im_end|> e tosse."}) for i in range(8)]
    expected = [renderer.prompt_ids(m) for m in messages]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(30):
            assert list(pool.map(renderer.prompt_ids, messages)) == expected
