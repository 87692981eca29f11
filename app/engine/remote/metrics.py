"""Prometheus metrics of the remote engine's replicas (the in-process engine exports vLLM's own)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class EngineMetrics:
    """Remote engine replicas (the in-process engine exports vLLM's own metrics instead)."""

    def __init__(self, registry: CollectorRegistry):
        self.replicas = Gauge(
            "medlora_engine_replicas", "Remote engine replicas by state.", ["state"], registry=registry
        )
        self.outstanding = Gauge(
            "medlora_engine_replica_outstanding",
            "Generations in flight per remote engine replica.",
            ["replica"],
            registry=registry,
        )
        self.retries = Counter(
            "medlora_engine_retries",
            "Failed generation attempts that may be retried elsewhere, by reason.",
            ["reason"],
            registry=registry,
        )
