"""Adapter registry: validate LoRA folders, load them into the engine, bind them to tasks.

Hot-swap semantics: a request takes a lease on its task's current adapter when it starts
and keeps that adapter to the end, so switching a task's adapter never disturbs requests
in flight. An adapter is unloaded from the engine only after its last lease is returned.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from app.engine.base import AdapterHandle, Engine, EngineError, EngineUnavailable
from app.problems import (
    ADAPTER_CONFLICT,
    ADAPTER_NOT_FOUND,
    ENGINE_UNAVAILABLE,
    INVALID_ADAPTER,
    UNKNOWN_ADAPTER,
    UNKNOWN_TASK,
    Problem,
)

log = logging.getLogger("medlora.adapters")

# Projection names a Qwen3 dense model exposes to LoRA.
SUPPORTED_TARGET_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# `medlora eval` leaves the latest evaluation report of an adapter in the adapter's own folder;
# `GET /v1/adapters/{name}/{version}/report` serves it and the page links it.
EVAL_REPORT = "eval-report.html"


@dataclass(frozen=True)
class AdapterFiles:
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    base_model: str


@dataclass(frozen=True)
class AdapterUse:
    """What one request runs with: an adapter, or the base model alone (handle None)."""

    key: str  # "name@version", or "base"
    name: str | None
    version: str | None
    handle: AdapterHandle | None


BASE_MODEL_USE = AdapterUse("base", None, None, None)

# What a request asks for: None = the task's bound adapter, (name, version) = a registered
# adapter, "none" = the base model alone.
AdapterChoice = tuple[str, str] | Literal["none"] | None


@dataclass
class AdapterRecord:
    name: str
    version: str
    path: Path
    files: AdapterFiles
    handle: AdapterHandle
    resident: bool = False
    leases: int = 0
    retired: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def use(self) -> AdapterUse:
        return AdapterUse(self.key, self.name, self.version, self.handle)


def same_base_model(adapter_base: str, served: str) -> bool:
    """Adapters name their base as a hub id or a local path; match either form.

    Hub id and local checkout are compared by their final path component
    ("Qwen/Qwen3-1.7B" == "/models/Qwen3-1.7B"), case-insensitively.
    """
    if not adapter_base:
        return False
    if adapter_base == served:
        return True
    a, b = Path(adapter_base), Path(served)
    if a.exists() and b.exists():
        return a.resolve() == b.resolve()
    return a.name.lower() == b.name.lower()


def inspect_adapter(path: Path, *, max_rank: int, base_model: str) -> AdapterFiles:
    """Check a PEFT LoRA folder before the engine sees it; Problem(422) names what is wrong."""

    def bad(detail: str) -> Problem:
        return Problem(INVALID_ADAPTER, detail, {"path": str(path)})

    def missing(detail: str) -> Problem:
        # Nothing there to judge: a wrong path, not a bad adapter.
        return Problem(ADAPTER_NOT_FOUND, detail, {"path": str(path)})

    if not path.is_dir():
        raise missing("adapter path is not a directory")
    try:
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise missing("adapter_config.json is missing") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise bad(f"adapter_config.json is unreadable: {exc}") from exc
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise bad("adapter_config.json: peft_type must be LORA")
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise bad("adapter_config.json: r must be a positive integer")
    if rank > max_rank:
        raise bad(f"adapter rank {rank} exceeds the engine's max_lora_rank {max_rank}")
    targets = config.get("target_modules")
    if not isinstance(targets, list) or not targets:
        raise bad("adapter_config.json: target_modules must be a non-empty list")
    unsupported = sorted(set(targets) - SUPPORTED_TARGET_MODULES)
    if unsupported:
        raise bad(f"unsupported target modules: {', '.join(unsupported)}")
    base = str(config.get("base_model_name_or_path") or "")
    if not same_base_model(base, base_model):
        raise bad(f"adapter was trained for base model {base!r}, the engine serves {base_model!r}")
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise bad("adapter weights (adapter_model.safetensors) are missing")
    return AdapterFiles(
        rank=rank,
        alpha=float(config.get("lora_alpha", rank)),
        target_modules=tuple(sorted(targets)),
        base_model=base,
    )


class AdapterRegistry:
    def __init__(self, engine: Engine, *, max_rank: int, base_model: str):
        self.engine = engine
        self.max_rank = max_rank
        self.base_model = base_model
        self._records: dict[str, AdapterRecord] = {}
        self._bindings: dict[str, str] = {}  # task -> adapter key
        self._next_id = 1
        self._lock = asyncio.Lock()  # admin operations only; never held by requests

    # -- queries ---------------------------------------------------------------------
    def get(self, name: str, version: str) -> AdapterRecord:
        record = self._records.get(f"{name}@{version}")
        if record is None or record.retired:
            raise Problem(UNKNOWN_ADAPTER, f"adapter {name}@{version} is not registered")
        return record

    def records(self) -> list[AdapterRecord]:
        return [r for r in self._records.values() if not r.retired]

    def tasks_using(self, key: str) -> list[str]:
        return sorted(task for task, bound in self._bindings.items() if bound == key)

    def bound(self, task: str) -> AdapterRecord | None:
        key = self._bindings.get(task)
        return self._records.get(key) if key else None

    def all_bound_resident(self, tasks: list[str]) -> bool:
        return all((r := self.bound(t)) is not None and r.resident for t in tasks)

    # -- request path ----------------------------------------------------------------
    @contextmanager
    def lease(self, task: str, choice: AdapterChoice = None) -> Iterator[AdapterUse]:
        """Pin what one request runs with for its whole duration.

        `choice` None means the task's bound adapter, (name, version) a registered adapter
        (evaluation, canaries), "none" the base model without any adapter.
        """
        if choice == "none":
            yield BASE_MODEL_USE
            return
        record = self.get(*choice) if choice is not None else self.bound(task)
        if record is None:
            raise Problem(UNKNOWN_TASK, f"task {task!r} has no adapter bound")
        record.leases += 1
        record.drained.clear()
        try:
            yield record.use
        finally:
            record.leases -= 1
            if record.leases == 0:
                record.drained.set()

    # -- admin -----------------------------------------------------------------------
    async def register(self, name: str, version: str, path: Path) -> AdapterRecord:
        async with self._lock:
            key = f"{name}@{version}"
            # File checks touch the disk: keep them off the event loop.
            try:
                path = await asyncio.to_thread(path.resolve)
            except (OSError, ValueError) as exc:  # a name too long, a NUL byte
                raise Problem(ADAPTER_NOT_FOUND, f"adapter path cannot be used: {type(exc).__name__}") from None
            existing = self._records.get(key)
            if existing is not None and not existing.retired:
                if existing.path == path:
                    return existing  # idempotent re-registration
                raise Problem(ADAPTER_CONFLICT, f"adapter {key} is already registered with another path")
            try:
                files = await asyncio.to_thread(
                    inspect_adapter, path, max_rank=self.max_rank, base_model=self.base_model
                )
            except OSError as exc:  # what the file checks did not foresee (a component too long)
                raise Problem(ADAPTER_NOT_FOUND, f"adapter path cannot be read: {type(exc).__name__}") from None
            handle = AdapterHandle(key=key, lora_id=self._next_id, path=str(path))
            self._next_id += 1
            record = AdapterRecord(name, version, path, files, handle)
            record.drained.set()
            try:
                await self.engine.load_adapter(handle)
            except EngineUnavailable as exc:
                raise Problem(ENGINE_UNAVAILABLE, str(exc), retry_after_s=5) from exc
            except EngineError as exc:
                raise Problem(INVALID_ADAPTER, str(exc), {"path": str(path)}) from exc
            record.resident = True
            self._records[key] = record
            log.info("adapter registered", extra={"adapter": key, "rank": files.rank})
            return record

    async def bind(self, task: str, name: str, version: str) -> tuple[str | None, AdapterRecord]:
        """Point `task` at an adapter; returns (previous key, new record). Atomic for requests."""
        async with self._lock:
            record = self.get(name, version)
            previous = self._bindings.get(task)
            self._bindings[task] = record.key
            log.info("task adapter switched", extra={"task": task, "adapter": record.key, "previous": previous})
            return previous, record

    async def unregister(self, name: str, version: str, *, drain_timeout_s: float = 600.0) -> None:
        async with self._lock:
            record = self.get(name, version)
            users = self.tasks_using(record.key)
            if users:
                raise Problem(
                    ADAPTER_CONFLICT,
                    f"adapter {record.key} is bound to tasks {', '.join(users)}; switch them first",
                    {"tasks": users},
                )
            record.retired = True
        # Requests that leased it before a switch finish on it; unload afterwards.
        try:
            await asyncio.wait_for(record.drained.wait(), drain_timeout_s)
        except TimeoutError:
            log.warning("adapter drain timed out", extra={"adapter": record.key})
        await self.engine.unload_adapter(record.handle)
        record.resident = False
        if self._records.get(record.key) is record:
            del self._records[record.key]
        log.info("adapter unloaded", extra={"adapter": record.key})
