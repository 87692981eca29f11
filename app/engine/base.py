"""The engine interface the task layer talks to.

Small on purpose: in-process vLLM (`local.py`) and remote vLLM OpenAI servers over httpx
(`remote/`) implement it; nothing above the engine layer knows which one runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class AdapterHandle:
    """One loaded LoRA adapter as the engine knows it."""

    key: str  # "name@version": unique, also the adapter's engine-side name
    lora_id: int
    path: str


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: list[int]
    grammar: str  # llguidance Lark grammar; every request is constrained
    max_tokens: int
    temperature: float = 0.0
    adapter: AdapterHandle | None = None
    # Lower runs first (vLLM's priority scheduling): interactive 0, batch work after it.
    priority: int = 0
    # Return each generated token's log-probability (under the grammar: vLLM masks the logits
    # before the sampler computes them), from which answers get their confidence.
    logprobs: bool = False


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: str  # "stop" | "length" | "abort" | ...
    prompt_tokens: int
    completion_tokens: int
    token_ids: tuple[int, ...] = ()  # the generated tokens, end of sequence included
    token_logprobs: tuple[float, ...] | None = None  # one per token id, when asked for
    # Speculative decoding: tokens the n-gram proposer drafted for this request, and how many of
    # them the model accepted (each step decodes one token plus the drafts it accepts).
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0


class EngineError(RuntimeError):
    """The engine failed a request for a reason that is not the caller's fault."""


class EngineUnavailable(EngineError):
    """No engine replica could take the request; nothing ran, so the caller may retry it."""


class EngineDead(EngineUnavailable):
    """The engine died under the request (its process crashed, ran out of memory): it will not
    come back in this process. The caller may retry elsewhere or after a restart."""


class Engine(Protocol):
    @property
    def ready(self) -> bool: ...

    @property
    def failure(self) -> str | None:
        """Why the engine can never serve again in this process (None while it can)."""
        ...

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Run one constrained generation; cancelling the caller aborts it in the engine."""
        ...

    async def load_adapter(self, adapter: AdapterHandle) -> None: ...

    async def unload_adapter(self, adapter: AdapterHandle) -> None: ...

    def describe(self) -> dict[str, Any]:
        """What /readyz shows about the engine (e.g. remote replicas and why they are out)."""
        ...

    def tokenizer(self) -> Any | None:
        """The served model's tokenizer as the started engine holds it (in-process vLLM: the
        gateway builds prompts with it instead of loading a second copy), or None."""
        ...
