"""Composition root: the loaded tasks, the engine, the adapter registry and the runner.

Startup order: manifests are checked before the server starts (a bad one refuses to
start); the engine starts in the background while /livez already answers; each task's
adapter is then validated, loaded and bound, and only then is the service ready.
"""

from __future__ import annotations

import asyncio
import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry

from app.tasks.adapters import AdapterRegistry
from app.engine.base import Engine
from app.tasks.manifests import Task, load_tasks
from app.tasks.metrics import Metrics
from app.problems import (
    DUPLICATE_ID,
    ENGINE_UNAVAILABLE,
    NOT_READY,
    PAYLOAD_TOO_LARGE,
    UNKNOWN_TASK,
    WRONG_TASK_TYPE,
    Problem,
)
from app.tasks.prompts import PromptRenderer, load_renderer
from app.settings import Settings
from app.tasks.runner import TaskRunner

log = logging.getLogger("medlora.service")

# Bump when the tiny model's recipe changes, so that cached builds are not reused.
EMBEDDED_CACHE_NAME = "embedded-v2"


@dataclass(frozen=True)
class ResolvedModel:
    """Where the served base model and adapter folders really are."""

    display_name: str  # what responses report as model.base
    path: str  # what the engine and tokenizer load
    adapters_root: Path


def resolve_model(settings: Settings, tasks: dict[str, Task]) -> ResolvedModel:
    """Build the embedded tiny model if it is selected; otherwise use the settings as given."""
    if settings.embedded and settings.embedded_adapters == "demo":
        from app.training.demo import DEMO_CACHE_NAME, ensure_demo

        root = ensure_demo(settings.cache_dir / DEMO_CACHE_NAME, tasks)
        return ResolvedModel("embedded-tiny-qwen3-demo", str((root / "base").resolve()), root / "adapters")
    if settings.embedded:
        from app.training.tiny_model import ensure_embedded_default

        # One tiny adapter per distinct manifest adapter path, each with its own seed, so
        # that different tasks really run different adapters.
        seeds = {t.manifest.adapter.path: zlib.crc32(t.manifest.adapter.path.encode()) % 10_000 for t in tasks.values()}
        root = ensure_embedded_default(settings.cache_dir / EMBEDDED_CACHE_NAME, seeds)
        return ResolvedModel("embedded-tiny-qwen3", str(root / "base"), root / "adapters")
    adapters_root = settings.adapters_dir or settings.tasks_dir
    return ResolvedModel(settings.model, settings.model, adapters_root)


@dataclass
class Service:
    settings: Settings
    tasks: dict[str, Task]
    model: ResolvedModel
    engine: Engine
    renderer: PromptRenderer
    metrics_registry: CollectorRegistry = field(default_factory=lambda: REGISTRY)
    startup_error: str | None = None

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.metrics_registry)
        self.registry = AdapterRegistry(self.engine, max_rank=self.settings.max_lora_rank, base_model=self.model.path)
        self.runner = TaskRunner(self.engine, self.renderer, self.metrics, max_model_len=self.settings.max_model_len)
        self._adapters_loaded = False

    @property
    def ready(self) -> bool:
        return self.engine.ready and self._adapters_loaded and self.registry.all_bound_resident(list(self.tasks))

    def resolve_adapter_path(self, path: str) -> Path:
        candidate = Path(path)
        return candidate if candidate.is_absolute() else self.model.adapters_root / candidate

    async def start(self) -> None:
        """Start the engine, then load and bind every task's adapter."""
        for task in self.tasks.values():
            fits, needed = self.runner.full_chunk_fits(task)
            if not fits:
                # Still correct (chunks are split further), but context is lost: say so.
                log.warning(
                    "task chunks exceed the context; they will be split smaller",
                    extra={"task": task.name, "tokens_needed": needed, "max_model_len": self.settings.max_model_len},
                )
        await self.engine.start()
        for task in self.tasks.values():
            ref = task.manifest.adapter
            while True:
                try:
                    await self.registry.register(ref.name, ref.version, self.resolve_adapter_path(ref.path))
                    break
                except Problem as exc:
                    if exc.kind is ENGINE_UNAVAILABLE:
                        # Remote replicas restarting under us: wait for them, do not fail for good.
                        await asyncio.sleep(exc.retry_after_s or 5)
                        continue
                    raise RuntimeError(f"task {task.name}: adapter {ref.name}@{ref.version}: {exc.detail}") from exc
            await self.bind(task.name, ref.name, ref.version)
        self._adapters_loaded = True
        self.metrics.engine_ready.set(1)
        log.info("service ready", extra={"tasks": len(self.tasks)})

    async def bind(self, task: str, name: str, version: str) -> str | None:
        previous, record = await self.registry.bind(task, name, version)
        if previous and previous != record.key:
            old_name, _, old_version = previous.partition("@")
            self.metrics.task_adapter.remove(task, old_name, old_version)
            self.metrics.adapter_switches.labels(task).inc()
        self.metrics.task_adapter.labels(task, name, version).set(1)
        self.metrics.adapter_resident.labels(name, version).set(1)
        return previous

    async def stop(self) -> None:
        self.metrics.engine_ready.set(0)
        await self.engine.shutdown()

    def task(self, name: str, kind: str) -> Task:
        task = self.tasks.get(name)
        if task is None:
            raise Problem(UNKNOWN_TASK, f"no task named {name!r}", {"tasks": sorted(self.tasks)})
        if task.type != kind:
            raise Problem(WRONG_TASK_TYPE, f"task {name!r} is a {task.type} task, not {kind}")
        return task

    def check_inputs(self, sizes: Sequence[tuple[str, int]]) -> None:
        """Per-request limits on (item id, characters) pairs: counts, sizes, unique ids."""
        limits = self.settings
        if len(sizes) > limits.max_documents:
            raise Problem(
                PAYLOAD_TOO_LARGE, f"{len(sizes)} items exceed the limit of {limits.max_documents} per request"
            )
        for item_id, size in sizes:
            if size > limits.max_document_chars:
                raise Problem(
                    PAYLOAD_TOO_LARGE,
                    f"item {item_id!r} has {size} characters, over the limit of {limits.max_document_chars}",
                    {"id": item_id},
                )
        seen: set[str] = set()
        for item_id, _ in sizes:
            if item_id in seen:
                raise Problem(DUPLICATE_ID, f"id {item_id!r} appears more than once", {"id": item_id})
            seen.add(item_id)

    def require_ready(self) -> None:
        if not self.ready:
            detail = "engine is starting" if self.startup_error is None else "engine failed to start"
            raise Problem(NOT_READY, detail, retry_after_s=10)


def build_service(
    settings: Settings,
    *,
    engine: Engine | None = None,
    renderer: PromptRenderer | None = None,
    metrics_registry: CollectorRegistry | None = None,
) -> Service:
    """Load and check manifests, resolve the model, and assemble the service (engine not started)."""
    tasks = load_tasks(settings.tasks_dir, settings.schemas_dir)
    model = resolve_model(settings, tasks)
    metrics_registry = metrics_registry or REGISTRY
    if engine is None and settings.engine == "remote":
        from app.engine.remote import RemoteEngine

        engine = RemoteEngine(settings, registry=metrics_registry)
    elif engine is None:
        from app.engine.local import VllmEngine

        engine = VllmEngine(settings, model.path)
    return Service(
        settings=settings,
        tasks=tasks,
        model=model,
        engine=engine,
        renderer=renderer or load_renderer(model.path),
        metrics_registry=metrics_registry,
    )


async def run_startup(service: Service) -> None:
    """Background startup; a failure is recorded (readyz says why) and logged."""
    try:
        await service.start()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        service.startup_error = str(exc)
        log.error("startup failed", extra={"error": str(exc)})


def settings_for(model: str | None, adapters: str | Path | None) -> Settings:
    """Settings for a CLI run: env vars, then --model / --adapters (a folder of adapters
    usually carries its own task manifests)."""
    overrides: dict[str, object] = {}
    if model:
        overrides["model"] = model
    if adapters:
        overrides["adapters_dir"] = Path(adapters)
        if any(Path(adapters).glob("*.yaml")):
            overrides["tasks_dir"] = Path(adapters)
    return Settings(**overrides)  # type: ignore[arg-type]


def make_local_service(settings: Settings) -> Service:
    """The in-process service (vLLM engine) for CLI commands, as `medlora serve` builds it."""
    from app.logs import configure_logging

    configure_logging(settings.log_level)
    # vLLM's engine core runs in a spawned process; it must not re-import this CLI's state.
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    return build_service(settings)
