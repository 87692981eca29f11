"""The remote engine's replicas: their health, load and the choice of the next one."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field


@dataclass
class Replica:
    url: str
    healthy: bool = False
    outstanding: int = 0
    served_model: str | None = None
    reason: str = "not checked yet"  # why it is unhealthy (logged when it changes)
    removed: bool = False  # gone from discovery; requests in flight finish


@dataclass
class ReplicaPool:
    replicas: dict[str, Replica] = field(default_factory=dict)
    gone: dict[str, Replica] = field(default_factory=dict)  # removed, possibly still busy
    order: itertools.count[int] = field(default_factory=itertools.count)

    def pick(self, exclude: set[str]) -> Replica | None:
        """Least outstanding requests among healthy replicas; ties rotate."""
        candidates = [r for r in self.replicas.values() if r.healthy and r.url not in exclude]
        if not candidates:
            return None
        least = min(r.outstanding for r in candidates)
        tied = [r for r in candidates if r.outstanding == least]
        return tied[next(self.order) % len(tied)]
