"""Prometheus metrics per task and adapter.

vLLM's own metrics know only the base model; these carry the task and adapter labels.
The in-process engine registers its `vllm:*` metrics in the same default registry, so
`/metrics` exposes both.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, registry: CollectorRegistry):
        labels = ["task", "adapter"]
        self.requests = Counter(
            "medlora_requests", "Task requests by outcome.", ["endpoint", *labels, "outcome"], registry=registry
        )
        self.latency = Histogram(
            "medlora_request_duration_seconds",
            "Task request latency.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.items = Counter("medlora_items", "Documents or QA items processed.", labels, registry=registry)
        self.in_flight = Gauge("medlora_requests_in_flight", "Task requests in flight.", labels, registry=registry)
        self.generations = Counter(
            "medlora_generations",
            "Engine generations by finish reason.",
            [*labels, "finish_reason"],
            registry=registry,
        )
        self.prompt_tokens = Counter("medlora_prompt_tokens", "Prompt tokens sent.", labels, registry=registry)
        self.completion_tokens = Counter("medlora_completion_tokens", "Tokens generated.", labels, registry=registry)
        # vLLM counts drafts per engine only; these come from each request's own figures.
        self.draft_tokens = Counter(
            "medlora_draft_tokens", "Tokens drafted by n-gram speculation.", labels, registry=registry
        )
        self.accepted_draft_tokens = Counter(
            "medlora_accepted_draft_tokens",
            "Drafted tokens the model accepted (acceptance: accepted / drafted).",
            labels,
            registry=registry,
        )
        self.invalid_outputs = Counter(
            "medlora_invalid_outputs",
            "Generations that did not parse or validate (never returned).",
            [*labels, "reason"],
            registry=registry,
        )
        self.spans_returned = Counter("medlora_spans_returned", "Grounded spans returned.", labels, registry=registry)
        self.spans_dropped = Counter(
            "medlora_spans_dropped",
            "Decoded spans dropped because they could not be grounded.",
            [*labels, "reason"],
            registry=registry,
        )
        self.entity_limit_reached = Counter(
            "medlora_entity_limit_reached",
            "Documents where a chunk hit the schema's entity limit.",
            labels,
            registry=registry,
        )
        self.evidence_mismatches = Counter(
            "medlora_evidence_mismatches",
            "Form values (numbers, dates) their evidence does not state: kept with lowered confidence or made unknown.",
            labels,
            registry=registry,
        )
        self.links = Counter(
            "medlora_entity_links",
            "Entities the model chose a terminology code for (coded) or none (abstained).",
            [*labels, "outcome"],
            registry=registry,
        )
        self.chunks = Counter("medlora_chunks", "Chunks generated for long inputs.", labels, registry=registry)
        self.adapter_switches = Counter(
            "medlora_adapter_switches", "Task adapter switches.", ["task"], registry=registry
        )
        self.task_adapter = Gauge(
            "medlora_task_adapter_info",
            "1 for the adapter each task currently uses.",
            ["task", "adapter", "version"],
            registry=registry,
        )
        self.adapter_resident = Gauge(
            "medlora_adapter_resident",
            "1 if the adapter is loaded in the engine.",
            ["adapter", "version"],
            registry=registry,
        )
        self.engine_ready = Gauge("medlora_engine_ready", "1 when the engine serves requests.", registry=registry)
