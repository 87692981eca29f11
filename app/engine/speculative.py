"""n-gram (prompt-lookup) speculative decoding: vLLM's config for it, per engine kind.

Answers copy the note (entity texts, evidence, answers); the next tokens of a copy are found by
looking the answer's last n-gram up in the prompt, and the model verifies them in one step. Off
by default on every engine kind: with drafts configured, vLLM 0.32 fills grammar masks serially
((1 + K) per request per step, about 70 µs each), which outlasts a GPU step above a batch of 2-3
(docs/benchmarks.md, bench.mask_cost); the CUDA proposer is chosen when it is turned on.
"""

from __future__ import annotations

from typing import Any

from app.settings import Settings


def has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover - torch ships with vllm
        return False


def speculative_config(settings: Settings, *, cuda: bool) -> dict[str, Any] | None:
    """vLLM's `speculative_config` (None: off)."""
    tokens = settings.speculative_tokens
    if tokens == 0:
        return None
    config: dict[str, Any] = {
        # ngram_gpu proposes on the device and keeps vLLM's async scheduling on; plain ngram
        # (the CPU proposer) turns it off.
        "method": "ngram_gpu" if cuda else "ngram",
        "num_speculative_tokens": tokens,
        "prompt_lookup_min": settings.speculative_lookup_min,
        "prompt_lookup_max": settings.speculative_lookup_max,
    }
    if settings.speculative_tokens_by_batch_size:
        config["num_speculative_tokens_per_batch_size"] = [list(r) for r in settings.speculative_tokens_by_batch_size]
    return config
