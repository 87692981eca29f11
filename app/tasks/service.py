"""The running task service: loaded tasks, the engine, the adapter registry and the runner.

Startup order: manifests are checked before the server starts (a bad one refuses to
start). Everything slow happens in `start`, in the background while the HTTP server already
answers /livez: the model's tokenizer loads and the engine starts off the event loop, then
each task's adapter is validated, loaded and bound, and only then is the service ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry

from app.engine.base import Engine
from app.engine.factory import build_engine
from app.engine.models import ResolvedModel, resolve_model
from app.problems import (
    DUPLICATE_ID,
    ENGINE_UNAVAILABLE,
    INVALID_REQUEST,
    NOT_READY,
    UNKNOWN_TASK,
    WRONG_TASK_TYPE,
    Problem,
)
from app.settings import Settings
from app.tasks.adapters import AdapterRegistry
from app.tasks.admission import Admission, AdmissionMetrics
from app.tasks.manifests import load_tasks
from app.tasks.metrics import Metrics
from app.tasks.prompts import PromptRenderer, load_renderer
from app.tasks.runner import TaskRunner
from app.tasks.types.base import Task, TaskInput

log = logging.getLogger("medlora.service")
T = TypeVar("T")


@dataclass(frozen=True)
class InputLimits:
    """What one task request may hold (from the settings; the OpenAPI document states them too)."""

    max_items: int
    max_chars: int  # per input field (a note, a QA context or question)


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
        admission_metrics = AdmissionMetrics(self.metrics_registry)
        self.interactive = Admission(
            "interactive",
            settings.max_admitted_generations,
            admission_metrics,
            wait_s=settings.admission_wait_s,
            per_key=settings.max_admitted_generations_per_key,
            key_limits=settings.key_admission_limits,
        )
        self.background = Admission(
            "background", settings.background_max_admitted_generations, admission_metrics, wait_s=None
        )
        self.background.yield_to(self.interactive)
        self.startup_error: str | None = None
        self.draining = False  # SIGTERM: finish what runs, take nothing new
        self.in_flight = 0  # task calls between their checks and their answer
        # Set when the grace period is over: what still runs is answered with a retryable 503.
        self._stop_signals: set[asyncio.Future[Any]] = set()
        self._adapters_loaded = False
        # Read at every scrape, so it can never disagree with /readyz.
        self.metrics.engine_ready.set_function(lambda: float(self.ready))

    @property
    def failure(self) -> str | None:
        """Why this process can no longer serve (a failed start, a dead engine): restart it."""
        return self.startup_error or self.engine.failure

    @property
    def ready(self) -> bool:
        return (
            not self.draining
            and self.failure is None
            and self.engine.ready
            and self._adapters_loaded
            and self.registry.all_bound_resident(list(self.tasks))
        )

    @property
    def state(self) -> str:
        """What /readyz says: ready, starting, draining or failed."""
        if self.failure is not None:
            return "failed"
        if self.draining:
            return "draining"
        return "ready" if self.ready else "starting"

    def admission(self, origin: str) -> Admission:
        """Interactive API requests wait a bounded time; everything else is background work."""
        return self.interactive if origin == "api" else self.background

    @contextmanager
    def tracked(self) -> Iterator[None]:
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def begin_drain(self) -> None:
        if not self.draining:
            self.draining = True
            log.info("draining: new requests get 503 not-ready", extra={"in_flight": self.in_flight})

    def stop_in_flight(self) -> None:
        """The grace period is over: what still runs is cancelled and answered with a retryable 503."""
        for signal in self._stop_signals:
            if not signal.done():
                signal.set_result(None)

    async def unless_stopped(self, work: Awaitable[T]) -> T:
        job = asyncio.ensure_future(work)
        stopped: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._stop_signals.add(stopped)
        try:
            await asyncio.wait([job, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._stop_signals.discard(stopped)
            if not job.done():
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job
        if job.cancelled():
            raise Problem(NOT_READY, "the service stopped before this request finished; retry it", retry_after_s=5)
        return job.result()

    def resolve_adapter_path(self, path: str) -> Path:
        candidate = Path(path)
        return candidate if candidate.is_absolute() else self.model.adapters_root / candidate

    async def start(self) -> None:
        """Start the engine and take its tokenizer (or load the model's), then load and bind
        every task's adapter."""
        await self.engine.start()
        if self.runner.renderer is None:
            # The 150k-token tokenizer is read once: the in-process engine's copy when there is
            # one, else from the model folder (seconds: never on the event loop).
            tokenizer = self.engine.tokenizer()
            if tokenizer is not None:
                self.runner.renderer = PromptRenderer(tokenizer)
            else:
                self.runner.renderer = await asyncio.to_thread(load_renderer, self.model.path)
        for task in self.tasks.values():
            fits, needed = self.runner.full_chunk_fits(task)
            if not fits:
                # Still correct (chunks are split further), but context is lost: say so.
                log.warning(
                    "task chunks exceed the context; they will be split smaller",
                    extra={"task": task.name, "tokens_needed": needed, "max_model_len": self.settings.max_model_len},
                )
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
        await self.engine.shutdown()

    def task(self, name: str, type_name: str) -> Task:
        task = self.tasks.get(name)
        if task is None:
            raise Problem(UNKNOWN_TASK, f"no task named {name!r}", {"tasks": sorted(self.tasks)})
        if task.type != type_name:
            raise Problem(WRONG_TASK_TYPE, f"task {name!r} is a {task.type} task, not {type_name}")
        return task

    @property
    def input_limits(self) -> InputLimits:
        return InputLimits(self.settings.max_documents, self.settings.max_document_chars)

    def check_inputs(self, items: Sequence[TaskInput], items_field: str) -> None:
        """Per-request limits (counts, characters per input field) and unique ids.

        The OpenAPI document states the same limits (`maxItems`, `maxLength`), so a request
        the schema refuses is refused here as it would be by the schema: 422, naming where."""
        limits = self.input_limits
        errors: list[dict[str, Any]] = []
        if len(items) > limits.max_items:
            errors.append(_too_long([items_field], f"List should have at most {limits.max_items} items", "too_long"))
        for i, item in enumerate(items[: limits.max_items]):
            for name, value in item.payload.items():
                if len(value) > limits.max_chars:
                    message = f"String should have at most {limits.max_chars} characters"
                    errors.append(_too_long([items_field, str(i), name], message, "string_too_long"))
        if errors:
            raise Problem(INVALID_REQUEST, "request exceeds the service's input limits", {"errors": errors})
        seen: set[str] = set()
        for item in items:
            if item.id in seen:
                raise Problem(DUPLICATE_ID, f"id {item.id!r} appears more than once", {"id": item.id})
            seen.add(item.id)

    def require_ready(self) -> None:
        if not self.ready:
            detail = {
                "failed": "the engine has failed; the service is restarting",
                "draining": "the service is shutting down; another replica can take the request",
                "starting": "engine is starting",
            }[self.state]
            raise Problem(NOT_READY, detail, retry_after_s=10)


def _too_long(loc: list[str], message: str, kind: str) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": message, "type": kind}


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
