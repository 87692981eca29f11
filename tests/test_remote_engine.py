"""Remote engine against fake vLLM replicas (httpx MockTransport): balancing, retries, adapter sync.

The same behaviour is exercised against real vLLM OpenAI servers in tests/e2e/test_remote_engine_live.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from app.engine.base import AdapterHandle, EngineError, EngineUnavailable, GenerationRequest
from app.engine.remote import discovery
from app.engine.remote.engine import RemoteEngine, engine_name
from app.main import app_for
from app.settings import Settings
from app.tasks.prompts import PromptRenderer
from app.tasks.service import build_service
from tests.conftest import TASKS_DIR
from tests.fakes import FAKE_BASE, FakeTokenizer, ner_output

ADAPTER = AdapterHandle(key="ner-it@1", lora_id=1, path="/models/adapters/ner-it/1")
NAME = engine_name(ADAPTER)  # what the replicas know it as


@dataclass
class FakeReplica:
    """Just enough of a vLLM OpenAI server: /health, /v1/models, LoRA load/unload, completions."""

    name: str
    up: bool = True
    adapters: set[str] = field(default_factory=set)
    max_model_len: int = 16384
    completions: int = 0
    gate: asyncio.Event | None = None  # completions wait on it when set
    fail_completion: Callable[[], httpx.Response | None] | None = None  # raise or answer instead
    reject_load: bool = False
    load_status: int | None = None  # answer loads with this status (a replica in trouble)
    models_body: Any = None  # answer /v1/models with this body instead
    loads: list[str] = field(default_factory=list)
    unloads: list[str] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    answer: str | None = None  # completion text (default: names the replica)
    drafts: dict[str, Any] | None = None  # metrics.speculative_decoding, as a speculating server answers

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        path = request.url.path
        if path == "/health":
            return httpx.Response(200)
        if path == "/v1/models":
            if self.models_body is not None:
                return httpx.Response(200, json=self.models_body)
            cards = [{"id": "base", "parent": None, "max_model_len": self.max_model_len}]
            cards += [{"id": a, "parent": "base"} for a in sorted(self.adapters)]
            return httpx.Response(200, json={"object": "list", "data": cards})
        body = json.loads(request.content)
        if path == "/v1/load_lora_adapter":
            self.loads.append(body["lora_name"])
            if self.load_status is not None:
                return httpx.Response(self.load_status, json={"error": {"message": "busy"}})
            if self.reject_load:
                return httpx.Response(500, json={"error": {"message": "bad adapter weights"}})
            if body["lora_name"] in self.adapters:
                return httpx.Response(400, json={"error": {"message": "has already been loaded"}})
            self.adapters.add(body["lora_name"])
            return httpx.Response(200, text="ok")
        if path == "/v1/unload_lora_adapter":
            self.unloads.append(body["lora_name"])
            self.adapters.discard(body["lora_name"])
            return httpx.Response(200, text="ok")
        assert path == "/v1/completions"
        self.bodies.append(body)
        if self.fail_completion is not None and (failure := self.fail_completion()) is not None:
            return failure
        if body["model"] not in self.adapters | {"base"}:
            return httpx.Response(404, json={"error": {"message": f"The model `{body['model']}` does not exist."}})
        if self.gate is not None:
            await self.gate.wait()
        self.completions += 1
        text = self.answer or f'{{"from":"{self.name}"}}'
        choice: dict[str, Any] = {"text": text, "finish_reason": "stop"}
        if body.get("logprobs") is not None:
            # As vLLM answers with return_tokens_as_token_ids: one entry a token (here a byte, as
            # FakeTokenizer has it), ids spelled out.
            tokens = [f"token_id:{b}" for b in text.encode()]
            choice["logprobs"] = {"tokens": tokens, "token_logprobs": [-0.25] + [0.0] * (len(tokens) - 1)}
        answer: dict[str, Any] = {
            "choices": [choice],
            "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": 5},
        }
        if self.drafts is not None:
            answer["metrics"] = {"speculative_decoding": self.drafts}
        return httpx.Response(200, json=answer)


class FakeCluster:
    def __init__(self, *names: str):
        self.replicas = {name: FakeReplica(name) for name in names}

    async def handler(self, request: httpx.Request) -> httpx.Response:
        return await self.replicas[request.url.host].handle(request)

    def urls(self) -> list[str]:
        return [f"http://{name}:8000" for name in self.replicas]


def make_engine(cluster: FakeCluster, **overrides: Any) -> tuple[RemoteEngine, CollectorRegistry]:
    # Health rounds run when a test calls refresh(), unless it asks for a short interval.
    options: dict[str, Any] = {"engine_health_interval_s": 3600, **overrides}
    settings = Settings(engine="remote", engine_urls=cluster.urls(), **options)
    registry = CollectorRegistry()
    return RemoteEngine(settings, registry=registry, transport=httpx.MockTransport(cluster.handler)), registry


def request(adapter: AdapterHandle | None = ADAPTER, priority: int = 0) -> GenerationRequest:
    return GenerationRequest(
        request_id="r1",
        prompt_token_ids=[1, 2, 3],
        grammar="start: x",
        max_tokens=8,
        adapter=adapter,
        priority=priority,
    )


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def test_generation_request_carries_prompt_ids_grammar_adapter_and_priority() -> None:
    cluster = FakeCluster("a")

    async def scenario() -> None:
        engine, _ = make_engine(cluster)
        await engine.start()
        await engine.load_adapter(ADAPTER)
        result = await engine.generate(request(priority=10))
        base = await engine.generate(request(adapter=None))
        await engine.shutdown()
        assert result.text == '{"from":"a"}'
        assert (result.finish_reason, result.prompt_tokens, result.completion_tokens) == ("stop", 3, 5)
        sent, base_sent = cluster.replicas["a"].bodies
        assert sent["model"] == NAME
        assert base_sent["model"] == "base"  # the base model by its served name
        assert sent["prompt"] == [1, 2, 3]
        assert sent["structured_outputs"] == {"grammar": "start: x"}
        assert (sent["priority"], sent["max_tokens"], sent["temperature"]) == (10, 8, 0.0)
        assert base.text == '{"from":"a"}'

    run(scenario)


def test_log_probabilities_are_asked_for_as_token_ids_and_read_back() -> None:
    cluster = FakeCluster("a")

    async def scenario() -> None:
        engine, _ = make_engine(cluster)
        await engine.start()
        plain = await engine.generate(request(adapter=None))
        scored = await engine.generate(replace(request(adapter=None), logprobs=True))
        await engine.shutdown()
        without, with_logprobs = cluster.replicas["a"].bodies
        assert "logprobs" not in without and plain.token_logprobs is None
        # logprobs 0: the sampled token's only; tokens as ids, so that no byte of a split
        # character is lost in decoding them one by one.
        assert with_logprobs["logprobs"] == 0 and with_logprobs["return_tokens_as_token_ids"] is True
        assert scored.token_ids == tuple(b'{"from":"a"}')
        assert scored.token_logprobs == (-0.25, *[0.0] * (len(scored.token_ids) - 1))

    run(scenario)


def test_a_speculating_servers_drafted_and_accepted_tokens_are_read_back() -> None:
    cluster = FakeCluster("a")

    async def scenario() -> None:
        engine, _ = make_engine(cluster)
        await engine.start()
        plain = await engine.generate(request(adapter=None))
        # vLLM's per-request figures (--per-request-spec-decode-metrics summary), as it answers them.
        cluster.replicas["a"].drafts = {
            "mean_acceptance_length": 2.5,
            "draft_acceptance_rate": 0.75,
            "acceptance_histogram": [0, 0, 1, 1],
            "num_spec_steps": 2,
            "num_accepted_draft_tokens": 5,
            "num_draft_tokens": 6,
            "num_spec_tokens": 3,
        }
        drafted = await engine.generate(request(adapter=None))
        await engine.shutdown()
        assert (plain.draft_tokens, plain.accepted_draft_tokens) == (0, 0)
        assert (drafted.draft_tokens, drafted.accepted_draft_tokens) == (6, 5)

    run(scenario)


def test_requests_go_to_the_replica_with_fewest_outstanding() -> None:
    cluster = FakeCluster("a", "b")

    async def scenario() -> None:
        engine, _ = make_engine(cluster)
        await engine.start()
        await engine.load_adapter(ADAPTER)
        cluster.replicas["a"].gate = asyncio.Event()  # a holds whatever it gets
        held = [asyncio.create_task(engine.generate(request())) for _ in range(3)]
        await asyncio.sleep(0.05)
        # Round one: tie -> a; then b (0 < 1) which answers at once; then b again, and again.
        assert len(cluster.replicas["a"].bodies) == 1
        assert cluster.replicas["b"].completions == 2
        more = await asyncio.gather(*(engine.generate(request()) for _ in range(4)))
        assert {r.text for r in more} == {'{"from":"b"}'}  # a is still busy
        cluster.replicas["a"].gate.set()
        await asyncio.gather(*held)
        await engine.shutdown()

    run(scenario)


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (httpx.ConnectError("refused"), "unreachable"),
        (httpx.RemoteProtocolError("server disconnected without sending a response"), "connection_lost"),
        (httpx.ReadError("connection reset"), "connection_lost"),
    ],
)
def test_unreachable_or_dropping_replica_is_retried_elsewhere_and_taken_out(failure: Exception, reason: str) -> None:
    cluster = FakeCluster("a", "b")

    def fail() -> httpx.Response:
        raise failure

    async def scenario() -> None:
        engine, registry = make_engine(cluster)
        await engine.start()
        await engine.load_adapter(ADAPTER)
        cluster.replicas["a"].fail_completion = fail
        results = [await engine.generate(request()) for _ in range(4)]
        assert all(r.text == '{"from":"b"}' for r in results)
        assert len(cluster.replicas["a"].bodies) == 1  # taken out after its first failure
        assert registry.get_sample_value("medlora_engine_retries_total", {"reason": reason}) == 1
        assert registry.get_sample_value("medlora_engine_replicas", {"state": "unhealthy"}) == 1
        # The next health round finds it answering again and puts it back.
        cluster.replicas["a"].fail_completion = None
        await engine.refresh()
        assert engine._pool.replicas["http://a:8000"].healthy
        assert registry.get_sample_value("medlora_engine_replicas", {"state": "healthy"}) == 2
        await engine.shutdown()

    run(scenario)


@pytest.mark.parametrize(
    "failure",
    [
        lambda: httpx.Response(400, json={"error": {"message": "priority scheduling is not enabled"}}),
        lambda: httpx.Response(500, json={"error": {"message": "engine core died"}}),
    ],
)
def test_a_rejected_generation_is_not_retried(failure: Callable[[], httpx.Response]) -> None:
    cluster = FakeCluster("a", "b")

    async def scenario() -> None:
        engine, _ = make_engine(cluster)
        await engine.start()
        for replica in cluster.replicas.values():
            replica.fail_completion = failure
        with pytest.raises(EngineError) as caught:
            await engine.generate(request(adapter=None))
        assert not isinstance(caught.value, EngineUnavailable)
        assert "engine rejected the request" in str(caught.value)
        assert sum(len(r.bodies) for r in cluster.replicas.values()) == 1
        await engine.shutdown()

    run(scenario)


def test_read_timeout_is_not_retried_because_the_work_may_still_run() -> None:
    cluster = FakeCluster("a", "b")

    def slow() -> httpx.Response:
        raise httpx.ReadTimeout("timed out")

    async def scenario() -> None:
        engine, _ = make_engine(cluster)
        await engine.start()
        for replica in cluster.replicas.values():
            replica.fail_completion = slow
        with pytest.raises(EngineError, match="did not answer in time"):
            await engine.generate(request(adapter=None))
        assert sum(len(r.bodies) for r in cluster.replicas.values()) == 1
        await engine.shutdown()

    run(scenario)


def test_no_healthy_replica_is_a_retryable_engine_unavailable() -> None:
    cluster = FakeCluster("a", "b")

    async def scenario() -> None:
        engine, _ = make_engine(cluster)
        await engine.start()
        for replica in cluster.replicas.values():
            replica.up = False
        with pytest.raises(EngineUnavailable, match="safe to retry"):
            await engine.generate(request(adapter=None))
        assert not engine.ready
        with pytest.raises(EngineUnavailable):
            await engine.generate(request(adapter=None))  # nothing left to try
        await engine.shutdown()

    run(scenario)


def test_attempts_are_bounded_by_the_setting() -> None:
    cluster = FakeCluster("a", "b", "c")

    async def scenario() -> None:
        engine, _ = make_engine(cluster, engine_max_attempts=2)
        await engine.start()
        for replica in cluster.replicas.values():
            replica.fail_completion = lambda: httpx.Response(503, text="loading")
        with pytest.raises(EngineUnavailable):
            await engine.generate(request(adapter=None))
        assert sum(len(r.bodies) for r in cluster.replicas.values()) == 2
        await engine.shutdown()

    run(scenario)


def test_adapters_reach_every_replica_including_one_that_joins_later() -> None:
    cluster = FakeCluster("a", "b")
    cluster.replicas["b"].up = False

    async def scenario() -> None:
        engine, _ = make_engine(cluster)
        await engine.start()
        await engine.load_adapter(ADAPTER)
        assert cluster.replicas["a"].adapters == {NAME}
        assert cluster.replicas["b"].loads == []
        cluster.replicas["b"].up = True
        await engine.refresh()
        assert cluster.replicas["b"].adapters == {NAME}
        assert engine._pool.replicas["http://b:8000"].healthy
        # Unregistering stops requiring it; the shared replicas keep it for other gateways.
        await engine.unload_adapter(ADAPTER)
        assert cluster.replicas["a"].unloads == cluster.replicas["b"].unloads == []
        cluster.replicas["b"].adapters.clear()  # restarted
        await engine.refresh()
        assert cluster.replicas["b"].adapters == set()  # no longer synced
        await engine.shutdown()

    run(scenario)


def test_a_restarted_replica_that_lost_its_adapters_is_resynced() -> None:
    cluster = FakeCluster("a", "b")

    async def scenario() -> None:
        engine, _ = make_engine(cluster)
        await engine.start()
        await engine.load_adapter(ADAPTER)
        cluster.replicas["a"].adapters.clear()  # restarted between health checks
        results = [await engine.generate(request()) for _ in range(3)]
        assert all(r.text == '{"from":"b"}' for r in results)  # a's 404 was retried on b
        assert not engine._pool.replicas["http://a:8000"].healthy
        await engine.refresh()
        assert cluster.replicas["a"].adapters == {NAME}
        assert engine._pool.replicas["http://a:8000"].healthy
        await engine.shutdown()

    run(scenario)


def test_an_adapter_one_replica_rejects_is_rolled_back_everywhere() -> None:
    cluster = FakeCluster("a", "b")
    cluster.replicas["b"].reject_load = True

    async def scenario() -> None:
        engine, _ = make_engine(cluster)
        await engine.start()
        with pytest.raises(EngineError, match="bad adapter weights") as caught:
            await engine.load_adapter(ADAPTER)
        assert not isinstance(caught.value, EngineUnavailable)
        # Not part of the wanted set: a later sync does not load it on b, and no request uses it.
        cluster.replicas["b"].reject_load = False
        await engine.refresh()
        assert cluster.replicas["b"].adapters == set()
        assert engine._pool.replicas["http://b:8000"].healthy
        await engine.shutdown()

    run(scenario)


def test_an_adapter_loaded_by_another_gateway_counts_as_loaded() -> None:
    cluster = FakeCluster("a")
    cluster.replicas["a"].adapters.add(NAME)

    async def scenario() -> None:
        engine, _ = make_engine(cluster)
        await engine.start()
        await engine.load_adapter(ADAPTER)  # vLLM answers 400 "already been loaded"
        assert (await engine.generate(request())).text == '{"from":"a"}'
        await engine.shutdown()
        assert cluster.replicas["a"].unloads == []  # shutting down leaves shared adapters alone

    run(scenario)


def test_a_replica_with_a_shorter_context_is_kept_out() -> None:
    cluster = FakeCluster("a", "b")
    cluster.replicas["b"].max_model_len = 4096

    async def scenario() -> None:
        engine, _ = make_engine(cluster, max_model_len=8192)
        await engine.start()
        replica_b = engine._pool.replicas["http://b:8000"]
        assert not replica_b.healthy
        assert "max_model_len 4096" in replica_b.reason
        await engine.shutdown()

    run(scenario)


def test_start_waits_until_a_replica_is_healthy() -> None:
    cluster = FakeCluster("a")
    cluster.replicas["a"].up = False

    async def scenario() -> None:
        engine, _ = make_engine(cluster, engine_health_interval_s=0.05)
        starting = asyncio.create_task(engine.start())
        await asyncio.sleep(0.2)
        assert not starting.done() and not engine.ready
        cluster.replicas["a"].up = True
        await asyncio.wait_for(starting, 2)
        assert engine.ready
        await engine.shutdown()

    run(scenario)


def test_dns_discovery_follows_replicas_that_join_and_leave(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = FakeCluster("10.0.0.1", "10.0.0.2")
    addresses = [["10.0.0.1"]]

    async def fake_getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        assert (host, port) == ("vllm-headless", 8000)
        return [(2, 1, 6, "", (a, port)) for a in addresses[0]]

    async def scenario() -> None:
        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake_getaddrinfo)
        settings = Settings(
            engine="remote",
            engine_urls=["http://vllm-headless:8000"],
            engine_discovery="dns",
            engine_health_interval_s=3600,
        )  # type: ignore[call-arg]
        engine = RemoteEngine(settings, registry=CollectorRegistry(), transport=httpx.MockTransport(cluster.handler))
        await engine.start()
        await engine.load_adapter(ADAPTER)
        assert list(engine._pool.replicas) == ["http://10.0.0.1:8000"]
        addresses[0] = ["10.0.0.1", "10.0.0.2"]
        await engine.refresh()
        assert cluster.replicas["10.0.0.2"].adapters == {NAME}
        addresses[0] = ["10.0.0.2"]
        await engine.refresh()
        assert list(engine._pool.replicas) == ["http://10.0.0.2:8000"]
        assert (await engine.generate(request())).text == '{"from":"10.0.0.2"}'
        await engine.shutdown()

    run(scenario)


def test_cancelling_a_generation_releases_its_replica_slot() -> None:
    cluster = FakeCluster("a")
    cluster.replicas["a"].gate = asyncio.Event()

    async def scenario() -> None:
        engine, registry = make_engine(cluster)
        await engine.start()
        task = asyncio.create_task(engine.generate(request(adapter=None)))
        await asyncio.sleep(0.05)
        assert registry.get_sample_value("medlora_engine_replica_outstanding", {"replica": "http://a:8000"}) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine._pool.replicas["http://a:8000"].outstanding == 0
        assert registry.get_sample_value("medlora_engine_replica_outstanding", {"replica": "http://a:8000"}) == 0
        await engine.shutdown()

    run(scenario)


def test_remote_mode_without_urls_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="MEDLORA_ENGINE_URLS"):
        RemoteEngine(Settings(engine="remote"), registry=CollectorRegistry())  # type: ignore[call-arg]


def test_resolve_replicas_keeps_static_urls_as_given() -> None:
    urls = ["http://a:8000", "https://b.example/v"]
    assert asyncio.run(discovery.resolve_replicas(urls, "static")) == urls


def test_gateway_turns_a_replica_lost_mid_request_into_a_retryable_503(fake_adapters_dir: Path) -> None:
    cluster = FakeCluster("a")
    cluster.replicas["a"].answer = ner_output()
    settings = Settings(
        model=FAKE_BASE,
        tasks_dir=TASKS_DIR,
        adapters_dir=fake_adapters_dir,
        batch_dir=fake_adapters_dir.parent / "batches",
        engine="remote",
        engine_urls=cluster.urls(),
        engine_health_interval_s=3600,
    )  # type: ignore[call-arg]
    registry = CollectorRegistry()
    engine = RemoteEngine(settings, registry=registry, transport=httpx.MockTransport(cluster.handler))
    service = build_service(
        settings, engine=engine, renderer=PromptRenderer(FakeTokenizer()), metrics_registry=registry
    )
    body = {"task": "ner-it-clinical", "documents": [{"id": "d1", "text": "febbre alta"}]}
    with TestClient(app_for(service), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # Every task's adapter was loaded on the replica at startup, under its name@version.
        assert {name.split("+")[0] for name in cluster.replicas["a"].adapters} == {
            f"{t.manifest.adapter.name}@{t.manifest.adapter.version}" for t in service.tasks.values()
        }
        ok = client.post("/v1/ner", json=body)
        assert ok.status_code == 200, ok.text
        assert cluster.replicas["a"].bodies[-1]["model"].startswith("ner-it-clinical@1+")

        def dies() -> httpx.Response:
            raise httpx.RemoteProtocolError("server disconnected without sending a response")

        cluster.replicas["a"].fail_completion = dies
        lost = client.post("/v1/ner", json=body)
        assert lost.status_code == 503
        assert lost.json()["type"] == "urn:medlora:problem:engine-unavailable"
        assert lost.headers["retry-after"] == "5"
        # The only replica is out: the gateway reports not ready until a health round puts it back.
        assert client.get("/readyz").status_code == 503
        cluster.replicas["a"].fail_completion = None
        client.portal.call(engine.refresh)  # type: ignore[union-attr]
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/ner", json=body).status_code == 200


def test_a_version_re_registered_from_another_folder_never_serves_the_old_weights() -> None:
    cluster = FakeCluster("a", "b")
    moved = AdapterHandle(key="ner-it@1", lora_id=2, path="/models/adapters/ner-it/1-retrained")

    async def scenario() -> None:
        engine, _ = make_engine(cluster)
        await engine.start()
        await engine.load_adapter(ADAPTER)
        cluster.replicas["b"].up = False  # misses whatever happens next
        await engine.refresh()
        await engine.load_adapter(moved)  # re-registered while the old one still drains
        await engine.unload_adapter(ADAPTER)  # the old registration's drain ends afterwards
        assert (await engine.generate(request(moved))).text == '{"from":"a"}'
        assert cluster.replicas["a"].bodies[-1]["model"] == engine_name(moved) != NAME
        cluster.replicas["b"].up = True
        await engine.refresh()
        assert engine_name(moved) in cluster.replicas["b"].adapters  # synced under its own name
        await engine.shutdown()

    run(scenario)


def test_the_same_folder_registered_again_keeps_its_name_and_stays_wanted() -> None:
    cluster = FakeCluster("a")
    again = AdapterHandle(key=ADAPTER.key, lora_id=9, path=ADAPTER.path)

    async def scenario() -> None:
        engine, _ = make_engine(cluster)
        await engine.start()
        await engine.load_adapter(ADAPTER)
        await engine.load_adapter(again)
        await engine.unload_adapter(ADAPTER)  # the older registration's late unload
        cluster.replicas["a"].adapters.clear()
        await engine.refresh()
        assert cluster.replicas["a"].adapters == {NAME}  # still required: `again` uses it
        await engine.shutdown()

    run(scenario)


def test_a_replica_in_trouble_during_a_load_is_synced_later_not_a_bad_adapter() -> None:
    cluster = FakeCluster("a", "b")

    async def scenario() -> None:
        engine, _ = make_engine(cluster)
        await engine.start()
        cluster.replicas["b"].load_status = 503
        await engine.load_adapter(ADAPTER)  # a loaded it; b is out until it can
        assert not engine._pool.replicas["http://b:8000"].healthy
        assert all(r.text == '{"from":"a"}' for r in [await engine.generate(request()) for _ in range(3)])
        cluster.replicas["b"].load_status = None
        await engine.refresh()
        assert cluster.replicas["b"].adapters == {NAME}
        assert engine._pool.replicas["http://b:8000"].healthy
        # Every replica in trouble: retryable, not "invalid adapter".
        other = AdapterHandle(key="qa-it@1", lora_id=3, path="/models/adapters/qa-it/1")
        for replica in cluster.replicas.values():
            replica.load_status = 503
        with pytest.raises(EngineUnavailable):
            await engine.load_adapter(other)
        await engine.shutdown()

    run(scenario)


def test_a_request_that_keeps_dropping_connections_is_not_sent_to_every_replica() -> None:
    cluster = FakeCluster("a", "b", "c")

    def crash() -> httpx.Response:
        raise httpx.RemoteProtocolError("server disconnected without sending a response")

    async def scenario() -> None:
        engine, _ = make_engine(cluster)
        await engine.start()
        for replica in cluster.replicas.values():
            replica.fail_completion = crash
        with pytest.raises(EngineUnavailable):
            await engine.generate(request(adapter=None))
        assert sum(len(r.bodies) for r in cluster.replicas.values()) == 2
        assert engine.ready  # one replica never saw it
        await engine.shutdown()

    run(scenario)


@pytest.mark.parametrize(
    ("answer", "retried"),
    [
        (
            {
                "choices": [{"text": "", "finish_reason": "abort"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 0},
            },
            True,
        ),
        (
            {
                "choices": [{"text": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1},
            },
            False,
        ),
        (
            {"choices": [{"text": "x", "finish_reason": None}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
            False,
        ),
        ({"choices": []}, False),
    ],
)
def test_odd_completion_bodies_are_retried_only_when_the_server_aborted(answer: dict[str, Any], retried: bool) -> None:
    cluster = FakeCluster("a", "b")

    async def scenario() -> None:
        engine, _ = make_engine(cluster)
        await engine.start()
        for replica in cluster.replicas.values():
            replica.fail_completion = lambda: httpx.Response(200, json=answer)
        with pytest.raises(EngineError) as caught:
            await engine.generate(request(adapter=None))
        assert isinstance(caught.value, EngineUnavailable) is retried
        assert sum(len(r.bodies) for r in cluster.replicas.values()) == (2 if retried else 1)
        await engine.shutdown()

    run(scenario)


def test_a_504_from_a_proxy_is_not_retried_because_the_replica_may_still_generate() -> None:
    cluster = FakeCluster("a", "b")

    async def scenario() -> None:
        engine, _ = make_engine(cluster)
        await engine.start()
        for replica in cluster.replicas.values():
            replica.fail_completion = lambda: httpx.Response(504, text="upstream request timeout")
        with pytest.raises(EngineError, match="timed out upstream"):
            await engine.generate(request(adapter=None))
        assert sum(len(r.bodies) for r in cluster.replicas.values()) == 1
        assert all(r.healthy for r in engine._pool.replicas.values())
        await engine.shutdown()

    run(scenario)


@pytest.mark.parametrize("body", [{"data": None}, {"data": ["tiny"]}, {"data": []}, {"object": "list"}])
def test_a_replica_with_a_malformed_model_listing_is_kept_out_alone(body: Any) -> None:
    cluster = FakeCluster("a", "b")
    cluster.replicas["b"].models_body = body

    async def scenario() -> None:
        engine, _ = make_engine(cluster)
        await asyncio.wait_for(engine.start(), 2)  # a is healthy: start returns
        replica_b = engine._pool.replicas["http://b:8000"]
        assert engine.ready and not replica_b.healthy and replica_b.reason
        assert engine.describe()["replicas"][1] == {
            "url": "http://b:8000",
            "healthy": False,
            "reason": replica_b.reason,
        }
        await engine.shutdown()

    run(scenario)


def test_a_replica_that_leaves_and_returns_keeps_its_count_of_running_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = FakeCluster("10.0.0.1", "10.0.0.2")
    cluster.replicas["10.0.0.1"].gate = asyncio.Event()
    addresses = [["10.0.0.1", "10.0.0.2"]]

    async def fake_getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        return [(2, 1, 6, "", (a, port)) for a in addresses[0]]

    async def scenario() -> None:
        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake_getaddrinfo)
        settings = Settings(
            engine="remote", engine_urls=["http://vllm:8000"], engine_discovery="dns", engine_health_interval_s=3600
        )  # type: ignore[call-arg]
        engine = RemoteEngine(settings, registry=CollectorRegistry(), transport=httpx.MockTransport(cluster.handler))
        await engine.start()
        busy = [asyncio.create_task(engine.generate(request(adapter=None))) for _ in range(3)]
        await asyncio.sleep(0.05)
        first = engine._pool.replicas["http://10.0.0.1:8000"]
        held = first.outstanding
        assert held >= 1
        addresses[0] = ["10.0.0.2"]  # readiness flap: dropped from the Service
        await engine.refresh()
        addresses[0] = ["10.0.0.1", "10.0.0.2"]
        await engine.refresh()
        assert engine._pool.replicas["http://10.0.0.1:8000"].outstanding == held
        cluster.replicas["10.0.0.1"].gate.set()
        await asyncio.gather(*busy)
        assert engine._pool.replicas["http://10.0.0.1:8000"].outstanding == 0
        await engine.shutdown()

    run(scenario)


def test_one_name_failing_to_resolve_does_not_freeze_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    answers: dict[str, list[str]] = {"pool-a": ["10.0.0.1"], "pool-b": ["10.0.1.1"]}

    async def fake_getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror("Name or service not known")
        return [(2, 1, 6, "", (a, port)) for a in answers[host]]

    async def scenario() -> None:
        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake_getaddrinfo)
        urls = ["http://pool-a:8000", "http://pool-b:9000"]
        known = await discovery.resolve_replicas(urls, "dns")
        assert known == ["http://10.0.0.1:8000", "http://10.0.1.1:9000"]
        del answers["pool-a"]
        answers["pool-b"] = ["10.0.1.2"]
        assert await discovery.resolve_replicas(urls, "dns", known=known) == [
            "http://10.0.0.1:8000",  # kept: its name failed
            "http://10.0.1.2:9000",  # followed
        ]

    run(scenario)


def test_dual_stack_answers_count_each_pod_once(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fake_getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        return [(2, 1, 6, "", ("10.0.0.1", port)), (10, 1, 6, "", ("fd00::1", port, 0, 0))]

    async def scenario() -> None:
        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake_getaddrinfo)
        assert await discovery.resolve_replicas(["http://vllm:8000"], "dns") == ["http://10.0.0.1:8000"]

    run(scenario)


def test_dns_discovery_refuses_https_urls() -> None:
    with pytest.raises(ValueError, match="http:// engine URLs only"):
        RemoteEngine(
            Settings(engine="remote", engine_urls=["https://vllm:8443"], engine_discovery="dns"),  # type: ignore[call-arg]
            registry=CollectorRegistry(),
        )
