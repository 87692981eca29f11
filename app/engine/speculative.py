"""n-gram (prompt-lookup) speculative decoding: the engine-kind default and vLLM's config for it.

Answers copy the note (entity texts, evidence, answers); the next tokens of a copy are found by
looking the answer's last n-gram up in the prompt, and the model verifies them in one step.
"""

from __future__ import annotations

from typing import Any

from app.settings import Settings

# On CUDA a decode step is memory-bound (the weights are read once per step, whatever the
# batch), so fewer steps is faster; the demo halved its NER steps with 4 (docs/benchmarks.md).
CUDA_DEFAULT_TOKENS = 4


def has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover - torch ships with vllm
        return False


def speculative_tokens(settings: Settings, *, cuda: bool) -> int:
    """Draft tokens per step: the setting, or when unset the engine kind's default (off on CPU,
    where vLLM does not list speculation as supported and the demo gained little; README)."""
    if settings.speculative_tokens is not None:
        return settings.speculative_tokens
    return CUDA_DEFAULT_TOKENS if cuda else 0


def speculative_config(settings: Settings, *, cuda: bool) -> dict[str, Any] | None:
    """vLLM's `speculative_config` (None: off)."""
    tokens = speculative_tokens(settings, cuda=cuda)
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
