"""n-gram speculative decoding as a setting: the default per engine kind, vLLM's config and server
flags built from it, the batch-size cap, and drafts counted per task and adapter on /metrics.
The answers with it are compared with those without it in tests/e2e/test_live_speculative.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from app.engine.base import GenerationRequest, GenerationResult
from app.engine.remote.server_args import vllm_server_args
from app.engine.speculative import speculative_config
from app.settings import Settings
from tests.fakes import ner_output


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def test_off_by_default_on_every_engine_kind_and_the_proposer_follows_the_device() -> None:
    assert speculative_config(Settings(), cuda=False) is None
    assert speculative_config(Settings(), cuda=True) is None
    settings = Settings(speculative_tokens=4)
    assert speculative_config(settings, cuda=True) == {
        "method": "ngram_gpu",
        "num_speculative_tokens": 4,
        "prompt_lookup_min": 2,
        "prompt_lookup_max": 5,
    }


def test_an_explicit_setting_wins_over_the_engine_kind() -> None:
    on_cpu = speculative_config(Settings(speculative_tokens=3, speculative_lookup_min=1), cuda=False)
    assert on_cpu == {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 5}
    assert speculative_config(Settings(speculative_tokens=0), cuda=True) is None


def test_server_flags_carry_the_config_and_ask_for_per_request_drafts() -> None:
    args = vllm_server_args(
        Settings(speculative_tokens=4, speculative_tokens_by_batch_size="1-64:4, 65-256:2"), cuda=True
    )
    config = json.loads(flag(args, "--speculative-config") or "")
    assert config["method"] == "ngram_gpu" and config["num_speculative_tokens"] == 4
    assert config["num_speculative_tokens_per_batch_size"] == [[1, 64, 4], [65, 256, 2]]
    assert flag(args, "--per-request-spec-decode-metrics") == "summary"
    off = vllm_server_args(Settings(), cuda=False)
    assert "--speculative-config" not in off and "--per-request-spec-decode-metrics" not in off


def test_settings_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDLORA_SPECULATIVE_TOKENS", "6")
    monkeypatch.setenv("MEDLORA_SPECULATIVE_TOKENS_BY_BATCH_SIZE", "1-128:6,257-1024:0")
    settings = Settings()
    assert settings.speculative_tokens == 6
    assert settings.speculative_tokens_by_batch_size == [(1, 128, 6), (257, 1024, 0)]


@pytest.mark.parametrize(
    "overrides",
    [
        {"speculative_tokens": -1},
        {"speculative_lookup_min": 4, "speculative_lookup_max": 3},
        {"speculative_tokens_by_batch_size": "2-64:4"},  # must start at 1
        {"speculative_tokens_by_batch_size": "1-64:4,64-128:2"},  # overlaps
        {"speculative_tokens_by_batch_size": "1-64:-1"},
        {"speculative_tokens_by_batch_size": "1-64"},
        {"speculative_tokens_by_batch_size": "1:4"},
    ],
)
def test_bad_speculation_settings_are_refused_before_the_engine_loads(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Settings(**overrides)


def test_drafted_and_accepted_tokens_are_counted_per_task_and_adapter(client_for: Any) -> None:
    def respond(request: GenerationRequest) -> GenerationResult:
        out = ner_output(("febbre", "SYMPTOM"))
        tokens = tuple(out.encode())
        return GenerationResult(out, "stop", len(request.prompt_token_ids), len(tokens), tokens, None, 12, 9)

    client, _ = client_for(respond)
    body = {"task": "ner-it-clinical", "documents": [{"id": "a", "text": "febbre"}, {"id": "b", "text": "febbre"}]}
    assert client.post("/v1/ner", json=body).status_code == 200
    metrics = client.get("/metrics").text
    labels = '{adapter="ner-it-clinical@1",task="ner-it-clinical"}'
    assert f"medlora_draft_tokens_total{labels} 24.0" in metrics
    assert f"medlora_accepted_draft_tokens_total{labels} 18.0" in metrics
