"""Admission control: a bound on the engine work admitted at once, counted in generations.

A request is admitted with a weight, the generations it needs (its chunks times the asks
of each), capped at the bound so that even the largest request can run (alone). Admitted
weight is also the most generations the request keeps in the engine at once, so the engine's
queued plus running requests never exceed the bound. A request that cannot be admitted
within the bounded wait is refused (429 with Retry-After): it was never started, so nothing
is lost and a retry is safe. Once admitted, a request is never dropped.

Interactive requests wait a bounded time; background work (batch jobs, `annotate`, `eval`)
has a pool of its own and waits as long as it takes.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter

from app.problems import KEY_LIMIT, OVERLOADED, Problem

_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)


class AdmissionMetrics:
    """One set for every pool, labelled by pool ("interactive", "background")."""

    def __init__(self, registry: CollectorRegistry):
        self.admitted = Gauge(
            "medlora_admitted_generations",
            "Generations admitted and not yet finished (queued or running in the engine), by pool.",
            ["pool"],
            registry=registry,
        )
        self.waiting = Gauge(
            "medlora_admission_waiting", "Requests waiting to be admitted, by pool.", ["pool"], registry=registry
        )
        self.wait_seconds = Histogram(
            "medlora_admission_wait_seconds",
            "Time requests waited for admission, by pool.",
            ["pool"],
            buckets=_WAIT_BUCKETS,
            registry=registry,
        )
        self.rejected = PromCounter(
            "medlora_admission_rejected",
            "Requests refused with 429 because admitted work was at its bound (reason: overloaded, key_limit).",
            ["pool", "reason"],
            registry=registry,
        )


@dataclass
class _Waiter:
    weight: int
    key: str | None
    admitted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(frozen=True)
class Ticket:
    """An admitted request: how many generations it may keep in the engine at once."""

    concurrency: int


class Admission:
    def __init__(
        self,
        pool: str,
        limit: int,
        metrics: AdmissionMetrics,
        *,
        wait_s: float | None,
        per_key: int | None = None,
        key_limits: Mapping[str, int] | None = None,
    ):
        if limit < 1:
            raise ValueError("the admission limit must be at least 1")
        self.pool = pool
        self.limit = limit
        self.wait_s = wait_s  # None: wait as long as it takes (background work)
        self.per_key = per_key
        self.key_limits = dict(key_limits or {})
        self.metrics = metrics
        self.used = 0
        self._by_key: Counter[str | None] = Counter()
        self._waiters: deque[_Waiter] = deque()
        self._yields_to: Admission | None = None
        self._yielding: list[Admission] = []  # pools that wake when this one frees room
        metrics.admitted.labels(pool).set(0)
        metrics.waiting.labels(pool).set(0)

    def yield_to(self, other: Admission) -> None:
        """Take only the room `other` leaves: this pool's bound shrinks in proportion to what
        `other` holds, to nothing while `other` is full or has requests waiting. Background work
        yields so to interactive requests, at any load: it fills the engine when they leave room
        and stops starting generations when they need it (those running finish)."""
        self._yields_to = other
        other._yielding.append(self)

    @property
    def room(self) -> int:
        """The bound at this moment (the whole limit unless this pool yields to another)."""
        other = self._yields_to
        if other is None:
            return self.limit
        if other._waiters:
            return 0
        return math.floor(self.limit * (other.limit - other.used) / other.limit)

    def key_limit(self, key: str | None) -> int:
        limit = self.key_limits.get(key, self.per_key) if key is not None else self.per_key
        return self.limit if limit is None else max(1, min(limit, self.limit))

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.wait_s or 1))

    def _fits_pool(self, weight: int) -> bool:
        return self.used + weight <= self.room

    def _fits_key(self, weight: int, key: str | None) -> bool:
        return self._by_key[key] + weight <= self.key_limit(key)

    def _take(self, weight: int, key: str | None) -> None:
        self.used += weight
        self._by_key[key] += weight
        self.metrics.admitted.labels(self.pool).set(self.used)

    def _release(self, weight: int, key: str | None) -> None:
        self.used -= weight
        self._by_key[key] -= weight
        if self._by_key[key] <= 0:
            del self._by_key[key]
        self.metrics.admitted.labels(self.pool).set(self.used)
        self._changed()

    def _changed(self) -> None:
        """Room freed here: admit this pool's waiters, then those of pools yielding to it."""
        self._wake()
        for pool in self._yielding:
            pool._wake()

    def _wake(self) -> None:
        """Admit waiters in arrival order. One the pool cannot hold stops the scan (a large
        request is not overtaken for ever by small ones); one held back only by its own key's
        limit is passed over (another key's work need not wait for it)."""
        for waiter in list(self._waiters):
            if waiter.admitted.done():
                self._waiters.remove(waiter)
                continue
            if not self._fits_pool(waiter.weight):
                break
            if self._fits_key(waiter.weight, waiter.key):
                self._take(waiter.weight, waiter.key)
                waiter.admitted.set_result(None)
                self._waiters.remove(waiter)
        self.metrics.waiting.labels(self.pool).set(len(self._waiters))

    @asynccontextmanager
    async def admit(self, generations: int, key: str | None) -> AsyncIterator[Ticket]:
        """Hold `generations` (capped at what the pool and the key may hold) while the body runs."""
        weight = max(1, min(generations, self.key_limit(key)))
        started = time.monotonic()
        if not self._waiters and self._fits_pool(weight) and self._fits_key(weight, key):
            self._take(weight, key)
        else:
            await self._wait(weight, key)
        self.metrics.wait_seconds.labels(self.pool).observe(time.monotonic() - started)
        try:
            yield Ticket(weight)
        finally:
            self._release(weight, key)

    async def _wait(self, weight: int, key: str | None) -> None:
        waiter = _Waiter(weight, key)
        self._waiters.append(waiter)
        self.metrics.waiting.labels(self.pool).set(len(self._waiters))
        try:
            await asyncio.wait_for(asyncio.shield(waiter.admitted), self.wait_s)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.admitted.done() and not waiter.admitted.cancelled():
                # Admitted in the same instant the wait ended: give the weight back.
                self._release(weight, key)
            else:
                waiter.admitted.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            self.metrics.waiting.labels(self.pool).set(len(self._waiters))
            self._changed()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise self._refusal(weight, key) from None

    def _refusal(self, weight: int, key: str | None) -> Problem:
        own = not self._fits_key(weight, key) and self._fits_pool(weight)
        reason, kind = ("key_limit", KEY_LIMIT) if own else ("overloaded", OVERLOADED)
        self.metrics.rejected.labels(self.pool, reason).inc()
        detail = (
            f"this key has {self._by_key[key]} of its {self.key_limit(key)} generations admitted"
            if own
            else f"{self.used} of {self.limit} generations are admitted"
        )
        return Problem(kind, f"{detail}; retry later", retry_after_s=self.retry_after_s)
