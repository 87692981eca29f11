"""The running task service: loaded tasks, the engine, the adapter registry and the runner.

Startup order: manifests are checked before the server starts (a bad one refuses to
start). Everything slow happens in `start`, in the background while the HTTP server already
answers /livez: the model's tokenizer loads and the engine starts off the event loop, then
each task's adapter is validated, loaded and bound, and only then is the service ready.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry

from app.engine.base import Engine
from app.engine.factory import build_engine
from app.engine.models import ResolvedModel, resolve_model
from app.problems import (
    DUPLICATE_ID,
    ENGINE_UNAVAILABLE,
    NOT_READY,
    PAYLOAD_TOO_LARGE,
    UNKNOWN_TASK,
    WRONG_TASK_TYPE,
    Problem,
)
from app.settings import Settings
from app.tasks.adapters import AdapterRegistry
from app.tasks.manifests import load_tasks
from app.tasks.metrics import Metrics
from app.tasks.prompts import PromptRenderer, load_renderer
from app.tasks.runner import TaskRunner
from app.tasks.types.base import Task

log = logging.getLogger("medlora.service")


class Service:
    def __init__(
        self,
        settings: Settings,
        tasks: dict[str, Task],
        model: ResolvedModel,
        engine: Engine,
        *,
        renderer: PromptRenderer | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ):
        self.settings = settings
        self.tasks = tasks
        self.model = model
        self.engine = engine
        self.metrics_registry = metrics_registry or REGISTRY
        self.metrics = Metrics(self.metrics_registry)
        self.registry = AdapterRegistry(engine, max_rank=settings.max_lora_rank, base_model=model.path)
        self.runner = TaskRunner(engine, self.metrics, max_model_len=settings.max_model_len, renderer=renderer)
        self.startup_error: str | None = None
        self._adapters_loaded = False

    @property
    def ready(self) -> bool:
        return self.engine.ready and self._adapters_loaded and self.registry.all_bound_resident(list(self.tasks))

    def resolve_adapter_path(self, path: str) -> Path:
        candidate = Path(path)
        return candidate if candidate.is_absolute() else self.model.adapters_root / candidate

    async def start(self) -> None:
        """Load the tokenizer, start the engine, then load and bind every task's adapter."""
        if self.runner.renderer is None:
            # Reading a 150k-token tokenizer takes seconds: never on the event loop.
            self.runner.renderer = await asyncio.to_thread(load_renderer, self.model.path)
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

    async def run_startup(self) -> None:
        """`start` in the background: a failure is recorded (/readyz and /livez say why) and logged."""
        try:
            await self.start()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.startup_error = str(exc)
            log.error("startup failed", extra={"error": str(exc)})

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

    def task(self, name: str, type_name: str) -> Task:
        task = self.tasks.get(name)
        if task is None:
            raise Problem(UNKNOWN_TASK, f"no task named {name!r}", {"tasks": sorted(self.tasks)})
        if task.type != type_name:
            raise Problem(WRONG_TASK_TYPE, f"task {name!r} is a {task.type} task, not {type_name}")
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
    tasks: dict[str, Task] | None = None,
    engine: Engine | None = None,
    renderer: PromptRenderer | None = None,
    metrics_registry: CollectorRegistry | None = None,
) -> Service:
    """Load and check the manifests (unless `tasks` are given) and assemble the service. Fast:
    nothing is loaded or started (the tokenizer and the engine come with `start`)."""
    tasks = tasks if tasks is not None else load_tasks(settings.tasks_dir, settings.schemas_dir)
    model = resolve_model(settings)
    metrics_registry = metrics_registry or REGISTRY
    engine = engine or build_engine(settings, model.path, metrics_registry)
    return Service(settings, tasks, model, engine, renderer=renderer, metrics_registry=metrics_registry)


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
