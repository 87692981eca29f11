"""Test doubles for gateway-logic tests. Every behaviour they stand in for is also covered
end to end against real vLLM in tests/e2e."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.engine.base import AdapterHandle, GenerationRequest, GenerationResult

FAKE_BASE = "fake-org/Fake-Base"


class FakeTokenizer:
    """Chat template and byte 'tokens': decoding a prompt back is exact."""

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> str:
        body = "".join(f"<|{m['role']}|>{m['content']}\n" for m in conversation)
        return body + "<|assistant|>"

    def encode(self, text: str, **kwargs: Any) -> list[int]:
        return list(text.encode("utf-8"))


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


class FakeEngine:
    def __init__(self, respond: Responder, *, delay_s: float = 0.0):
        self.respond = respond
        self.delay_s = delay_s
        self.started = False
        self.calls: list[GenerationRequest] = []
        self.cancelled: list[str] = []
        self.loaded: dict[str, AdapterHandle] = {}
        self.unloaded: list[str] = []
        self.fail_start: Exception | None = None

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
        self.calls.append(request)
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled.append(request.request_id)
            raise
        out = self.respond(request)
        if isinstance(out, GenerationResult):
            return out
        return GenerationResult(out, "stop", len(request.prompt_token_ids), len(out.encode()))

    async def load_adapter(self, adapter: AdapterHandle) -> None:
        self.loaded[adapter.key] = adapter

    async def unload_adapter(self, adapter: AdapterHandle) -> None:
        self.loaded.pop(adapter.key, None)
        self.unloaded.append(adapter.key)

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


def sample(metrics_text: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus sample in a /metrics body (None when there is no such series)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None
