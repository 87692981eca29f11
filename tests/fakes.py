"""Test doubles for gateway-logic tests. Every behaviour they stand in for is also covered
end to end against real vLLM in tests/e2e."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from app.engine.base import AdapterHandle, GenerationRequest, GenerationResult

FAKE_BASE = "fake-org/Fake-Base"


class FakeTokenizer:
    """Chat template and byte 'tokens' (id = byte value, written as byte-level BPE writes
    bytes): decoding a prompt back is exact."""

    all_special_ids: tuple[int, ...] = ()

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> str:
        body = "".join(f"<|{m['role']}|>{m['content']}\n" for m in conversation)
        return body + "<|assistant|>"

    def encode(self, text: str, **kwargs: Any) -> list[int]:
        return list(text.encode("utf-8"))

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        from app.tasks.confidence import _byte_decoder

        encoder = {b: ch for ch, b in _byte_decoder().items()}
        return [encoder[i] for i in ids]

    def decode(self, ids: list[int], **kwargs: Any) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def prompt_of(request: GenerationRequest) -> str:
    return bytes(request.prompt_token_ids).decode("utf-8")


def last_input(request: GenerationRequest) -> str:
    """The text of the final user turn (the document or context being processed)."""
    prompt = prompt_of(request)
    turn = prompt.rsplit("<|user|>", 1)[1].rsplit("\n<|assistant|>", 1)[0]
    if turn.startswith("Text:\n"):
        return turn[len("Text:\n") :]
    return turn[len("Context:\n") :].rsplit("\n\nQuestion: ", 1)[0]


Responder = Callable[[GenerationRequest], "str | GenerationResult"]


# The log-probability a fake engine gives each byte token of an answer: (answer, byte offset) -> logprob.
ByteLogprob = Callable[[str, int], float]


def abstain(request: GenerationRequest) -> str:
    return '{"code":"none"}'


def is_link(request: GenerationRequest) -> bool:
    """An entity-linking generation (app/tasks/linking.py), told apart by its system prompt."""
    from app.tasks.linking import LINK_INSTRUCTIONS

    return prompt_of(request).startswith(f"<|system|>{LINK_INSTRUCTIONS}")


class FakeEngine:
    """Task generations are answered by `respond` and recorded in `calls`; entity-linking
    generations by `link` (abstaining unless a test sets it) and recorded in `link_calls`,
    so a test of a coded task's entities needs no linking answers of its own."""

    def __init__(self, respond: Responder, *, delay_s: float = 0.0, logprob: ByteLogprob | None = None):
        self.respond = respond
        self.link: Responder = abstain
        self.link_calls: list[GenerationRequest] = []
        self.link_logprob: ByteLogprob = lambda answer, offset: 0.0
        self.delay_s = delay_s
        self.logprob = logprob
        self.started = False
        self.calls: list[GenerationRequest] = []
        self.cancelled: list[str] = []
        self.loaded: dict[str, AdapterHandle] = {}
        self.unloaded: list[str] = []
        self.fail_start: Exception | None = None
        self.failure: str | None = None  # set by a test: the engine died
        self.active = 0  # generations running now, and the most at once
        self.events: list[str] = []  # "done:<request id>", "unload:<adapter>", in order
        self.max_active = 0

    @property
    def ready(self) -> bool:
        return self.started

    async def start(self) -> None:
        if self.fail_start:
            raise self.fail_start
        self.started = True

    async def shutdown(self) -> None:
        self.started = False

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        linking = is_link(request)
        (self.link_calls if linking else self.calls).append(request)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled.append(request.request_id)
            raise
        finally:
            self.active -= 1
            self.events.append(f"done:{request.request_id}")
        out = (self.link if linking else self.respond)(request)
        if isinstance(out, GenerationResult):
            return out
        tokens = tuple(out.encode())  # one token a byte, as FakeTokenizer has it
        logprobs = None
        if request.logprobs and linking:
            logprobs = tuple(self.link_logprob(out, i) for i in range(len(tokens)))
        elif request.logprobs and self.logprob is not None:
            logprobs = tuple(self.logprob(out, i) for i in range(len(tokens)))
        return GenerationResult(out, "stop", len(request.prompt_token_ids), len(tokens), tokens, logprobs)

    async def load_adapter(self, adapter: AdapterHandle) -> None:
        self.loaded[adapter.key] = adapter

    async def unload_adapter(self, adapter: AdapterHandle) -> None:
        self.loaded.pop(adapter.key, None)
        self.unloaded.append(adapter.key)
        self.events.append(f"unload:{adapter.key}")

    def tokenizer(self) -> Any | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"engine": "fake"}


def write_fake_adapter(path: Path, *, rank: int = 8, base: str = FAKE_BASE, targets: list[str] | None = None) -> Path:
    """A PEFT-shaped folder that passes the gateway's file checks (the fake engine loads nothing)."""
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": targets or ["q_proj", "v_proj"],
        "base_model_name_or_path": base,
    }
    (path / "adapter_config.json").write_text(json.dumps(config))
    (path / "adapter_model.safetensors").write_bytes(b"")
    return path


ALL_FALSE = {"negated": False, "uncertain": False, "historical": False, "family": False}


def ner_output(*entities: tuple[str, ...]) -> str:
    """A valid NER model answer (the token-lean format) with the given (text, label, *attributes) entities."""
    return json.dumps({"entities": [list(entity) for entity in entities]})


def _samples(metrics_text: str, name: str, labels: dict[str, str]) -> Iterator[float]:
    """The values of the Prometheus samples in a /metrics body named `name` whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                yield float(s.value)


def sample(metrics_text: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus sample in a /metrics body (None when there is no such series)."""
    return next(_samples(metrics_text, name, labels), None)


def total(metrics_text: str, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels` (e.g. over adapters)."""
    return sum(_samples(metrics_text, name, labels))


def confidences_at(
    parts: Callable[[str], list[tuple[int, int]]], confidences: dict[str, list[float]], *, per_token: bool
) -> ByteLogprob:
    """A fake engine's log-probabilities that give the k-th part of an answer (the character
    range `parts` finds) the confidence `confidences[answer][k]`, every other byte certain:
    with `per_token`, as each of the part's tokens' probability (their geometric mean); else
    all of it on the part's first token (their joint probability). One token a byte here."""

    def logprob(answer: str, offset: int) -> float:
        for k, (start, end) in enumerate(parts(answer)):
            if offset == start or (per_token and start <= offset < end):
                return math.log(confidences[answer][k])
        return 0.0

    return logprob


def part_ranges(*path: str) -> Callable[[str], list[tuple[int, int]]]:
    """The character ranges of the array (or the one value) at `path` of an answer."""

    def ranges(answer: str) -> list[tuple[int, int]]:
        from app.tasks.confidence import locate

        node = locate(answer)
        for key in path:
            node = node.members[key]
        return [(n.start, n.end) for n in node.items] if node.items else [(node.start, node.end)]

    return ranges
