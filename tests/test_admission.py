"""Admission control: the engine work admitted at once is bounded (in generations), a request
beyond the bound waits a bounded time and then gets 429 with Retry-After, and whatever is
admitted runs to its answer. Against a fake engine here; tests/e2e/test_live_overload.py
drives real vLLM past the bound."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from app.problems import Problem
from app.tasks.admission import Admission, AdmissionMetrics
from tests.fakes import ner_output, sample
from tests.test_api import assert_problem

REGISTRIES: dict[int, CollectorRegistry] = {}


def pool(limit: int, *, wait_s: float | None = 0.2, **kwargs: Any) -> Admission:
    registry = CollectorRegistry()
    admission = Admission("interactive", limit, AdmissionMetrics(registry), wait_s=wait_s, **kwargs)
    REGISTRIES[id(admission)] = registry
    return admission


def metric(admission: Admission, name: str, **labels: str) -> float:
    return sample(generate_latest(REGISTRIES[id(admission)]).decode(), name, pool=admission.pool, **labels)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_work_within_the_bound_is_admitted_at_once_and_released_after() -> None:
    admission = pool(8)

    async def go() -> list[int]:
        seen = []
        async with admission.admit(3, None) as a, admission.admit(5, None) as b:
            seen += [a.concurrency, b.concurrency, admission.used]
        return [*seen, admission.used]

    assert run(go()) == [3, 5, 8, 0]


def test_beyond_the_bound_a_request_waits_then_is_refused_with_retry_after() -> None:
    admission = pool(4, wait_s=0.05)

    async def go() -> Problem:
        async with admission.admit(4, None):
            with pytest.raises(Problem) as refused:
                async with admission.admit(1, None):
                    pass
            return refused.value

    problem = run(go())
    assert problem.kind.slug == "overloaded" and problem.kind.status == 429
    assert problem.retry_after_s == 1
    assert admission.used == 0 and not admission._waiters
    assert metric(admission, "medlora_admission_rejected_total", reason="overloaded") == 1


def test_a_waiting_request_is_admitted_as_soon_as_room_frees() -> None:
    admission = pool(2, wait_s=5)

    async def go() -> list[str]:
        order: list[str] = []

        async def hold(name: str, n: int, seconds: float) -> None:
            async with admission.admit(n, None):
                order.append(f"{name} in")
                await asyncio.sleep(seconds)
            order.append(f"{name} out")

        first = asyncio.create_task(hold("a", 2, 0.05))
        await asyncio.sleep(0.01)
        await hold("b", 1, 0)
        await first
        return order

    assert run(go()) == ["a in", "a out", "b in", "b out"]


def test_a_request_larger_than_the_bound_runs_alone_instead_of_never() -> None:
    admission = pool(4, wait_s=5)

    async def go() -> int:
        async with admission.admit(10_000, None) as ticket:
            assert admission.used == 4
            return ticket.concurrency

    assert run(go()) == 4


def test_a_large_waiter_is_not_overtaken_by_later_small_ones() -> None:
    admission = pool(4, wait_s=5)

    async def go() -> list[str]:
        order: list[str] = []

        async def hold(name: str, n: int, seconds: float) -> None:
            async with admission.admit(n, None):
                order.append(name)
                await asyncio.sleep(seconds)

        small = asyncio.create_task(hold("running", 2, 0.05))
        await asyncio.sleep(0.01)
        large = asyncio.create_task(hold("large", 4, 0))
        await asyncio.sleep(0.01)
        later = asyncio.create_task(hold("later small", 1, 0))
        await asyncio.gather(small, large, later)
        return order

    assert run(go()) == ["running", "large", "later small"]


def test_a_key_at_its_own_limit_gets_key_limit_while_other_keys_are_admitted() -> None:
    admission = pool(10, wait_s=0.05, per_key=3, key_limits={"etl": 6})

    async def go() -> tuple[Problem, int]:
        async with admission.admit(3, "ward"):
            with pytest.raises(Problem) as refused:
                async with admission.admit(1, "ward"):
                    pass
            async with admission.admit(5, "etl") as etl:
                return refused.value, etl.concurrency

    problem, etl = run(go())
    assert problem.kind.slug == "key-limit" and problem.kind.status == 429
    assert "this key has 3 of its 3 generations admitted" in problem.detail
    assert etl == 5  # its own limit is 6
    assert metric(admission, "medlora_admission_rejected_total", reason="key_limit") == 1
    assert [admission.key_limit(k) for k in ("etl", "ward", None)] == [6, 3, 3]


def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    admission = pool(1, wait_s=5)

    async def go() -> None:
        async with admission.admit(1, None):
            waiter = asyncio.create_task(admission.admit(1, None).__aenter__())
            await asyncio.sleep(0.01)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        assert admission.used == 0 and not admission._waiters

    run(go())


def test_background_work_takes_only_the_room_interactive_requests_leave() -> None:
    interactive, background = pool(4, wait_s=5), pool(4, wait_s=None)
    background.yield_to(interactive)

    async def go() -> list[str]:
        order: list[str] = []

        async def hold(admission: Admission, name: str, n: int, seconds: float) -> None:
            async with admission.admit(n, None):
                order.append(f"{name} in")
                await asyncio.sleep(seconds)
            order.append(f"{name} out")

        assert background.room == 4  # interactive idle: the whole bound
        async with interactive.admit(2, None):
            assert background.room == 2  # half the interactive bound in use: half the room
            async with interactive.admit(2, None):
                assert background.room == 0
                batch = asyncio.create_task(hold(background, "batch", 1, 0))
                await asyncio.sleep(0.02)
                order.append("interactive out")
        await batch
        return order

    assert run(go()) == ["interactive out", "batch in", "batch out"]


# -- through the gateway -----------------------------------------------------------------


def docs(n: int) -> list[dict[str, str]]:
    return [{"id": str(i), "text": f"febbre {i}"} for i in range(n)]


def test_admitted_weight_bounds_the_generations_in_the_engine(client_for: Any) -> None:
    client, engine = client_for(lambda r: ner_output(), delay_s=0.02, max_admitted_generations=3)
    r = client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": docs(12)})
    assert r.status_code == 200, r.text
    assert len(engine.calls) == 12 and engine.max_active == 3


def test_overload_is_429_with_retry_after_counted_and_nothing_admitted_is_lost(client_for: Any) -> None:
    client, engine = client_for(lambda r: ner_output(), delay_s=0.3, max_admitted_generations=4, admission_wait_s=0.05)
    results: list[Any] = []

    def send() -> None:
        results.append(client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": docs(4)}))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ok = [r for r in results if r.status_code == 200]
    refused = [r for r in results if r.status_code != 200]
    assert ok and refused
    for r in refused:
        body = assert_problem(r, 429, "overloaded")
        assert r.headers["retry-after"] == "1" and "generations are admitted" in body["detail"]
    for r in ok:
        assert [d["id"] for d in r.json()["documents"]] == ["0", "1", "2", "3"]
    assert len(engine.calls) == 4 * len(ok)  # a refused request never reached the engine
    metrics = client.get("/metrics").text
    assert sample(metrics, "medlora_admission_rejected_total", pool="interactive", reason="overloaded") == len(refused)
    outcome = sample(metrics, "medlora_requests_total", outcome="overloaded", endpoint="ner")
    assert outcome == len(refused)
    assert sample(metrics, "medlora_admitted_generations", pool="interactive") == 0


def test_per_key_limits_come_from_the_settings(client_for: Any) -> None:
    client, _ = client_for(
        lambda r: json.dumps({"entities": []}),
        max_admitted_generations_per_key=2,
        key_admission_limits={"etl": 7},
    )
    service = client.app.state.service  # type: ignore[attr-defined]
    assert service.interactive.key_limit("ward") == 2 and service.interactive.key_limit("etl") == 7
