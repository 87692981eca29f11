"""The vLLM OpenAI server flags the gateway relies on (the Helm chart passes the same; tested)."""

from __future__ import annotations

import json

from app.engine.speculative import has_cuda, speculative_config
from app.settings import Settings


def vllm_server_args(settings: Settings, *, cuda: bool | None = None) -> list[str]:
    """The vLLM OpenAI server flags this gateway relies on (the Helm chart passes the same; tested).

    `cuda`: whether the server runs on CUDA (None: it runs on this machine), which picks the
    speculative-decoding default. Also needed in the server's environment:
    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True.
    """
    speculative = speculative_config(settings, cuda=has_cuda() if cuda is None else cuda)
    drafts = (
        ["--speculative-config", json.dumps(speculative), "--per-request-spec-decode-metrics", "summary"]
        if speculative
        else []
    )
    return [
        "--enable-lora",
        "--max-loras", str(settings.max_loras),
        "--max-cpu-loras", str(settings.max_cpu_loras),
        "--max-lora-rank", str(settings.max_lora_rank),
        "--max-model-len", str(settings.max_model_len),
        "--scheduling-policy", "priority",  # batch lines are sent at a lower priority
        "--structured-outputs-config", json.dumps({"backend": settings.structured_outputs_backend}),
        *drafts,
    ]  # fmt: skip
