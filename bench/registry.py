"""Reading Prometheus counters back in a benchmark (medlora's own registry, or the default one
where the in-process vLLM engine registers its `vllm:*` metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry


def counted(registry: CollectorRegistry, sample: str, labels: dict[str, str] | None = None) -> float:
    """The sum of every sample named `sample` (e.g. `medlora_completion_tokens_total`) whose
    labels include `labels`."""
    return sum(
        s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == sample and (labels is None or labels.items() <= s.labels.items())
    )
