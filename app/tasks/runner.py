"""Run one task over a batch of inputs: chunk, prompt, constrain, generate, validate, ground.

Every generation is constrained by a grammar compiled from the task's schema (grounded
fields restricted to the request's source text) with max_tokens at the schema's worst case,
so a result either validates and grounds, or the request fails with a problem: a broken
or unvalidated result is never returned.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from app.tasks.adapters import AdapterUse
from app.tasks.chunking import Chunk, merge_spans, shift, split_text
from app.engine.base import Engine, EngineError, EngineUnavailable, GenerationRequest
from app.tasks.grammar import compile_grammar, json_escape
from app.tasks.grounding import GroundingResult, Span, ground_answer, ground_spans
from app.tasks.manifests import Task
from app.tasks.metrics import Metrics
from app.tasks.schema import worst_case_bytes
from app.problems import ENGINE_UNAVAILABLE, GENERATION_FAILED, Problem
from app.tasks.prompts import PromptRenderer, build_messages

log = logging.getLogger("medlora.tasks")

# Below this a chunk is not split further to fit the context; the request fails instead.
_MIN_CHUNK_CHARS = 64


@dataclass(frozen=True)
class Document:
    id: str
    text: str


@dataclass(frozen=True)
class QaItem:
    id: str
    context: str
    question: str


@dataclass
class NerResult:
    id: str
    entities: list[Span]
    # Some chunk returned the schema's maxItems entities: there may be more than were listed.
    limit_reached: bool = False


@dataclass
class QaResult:
    id: str
    answer: Span | None


@dataclass
class ClassifyResult:
    id: str
    labels: list[str]


class _PromptTooLong(Exception):
    """Prompt plus worst-case output would not fit the engine's context."""


class TaskRunner:
    def __init__(self, engine: Engine, renderer: PromptRenderer, metrics: Metrics, *, max_model_len: int):
        self.engine = engine
        self.renderer = renderer
        self.metrics = metrics
        self.max_model_len = max_model_len

    # -- one generation ----------------------------------------------------------------
    def budget(self, task: Task, payload: dict[str, str], source: str) -> tuple[list[int], int]:
        """Prompt token ids and max_tokens (the schema's worst case for this source)."""
        prompt = self.renderer.render(build_messages(task, payload))
        prompt_ids: list[int] = self.renderer.tokenizer.encode(prompt, add_special_tokens=False)
        # +1 leaves room for the end-of-sequence token after the last byte.
        return prompt_ids, worst_case_bytes(task.schema, len(json_escape(source).encode())) + 1

    def full_chunk_fits(self, task: Task) -> tuple[bool, int]:
        """Whether a chunk of max_chunk_chars (plain prose) fits the context with its worst case."""
        source = ("lorem ipsum " * task.manifest.generation.max_chunk_chars)[: task.manifest.generation.max_chunk_chars]
        payload = {"context": source, "question": "?"} if task.type == "qa" else {"text": source}
        ids, max_tokens = self.budget(task, payload, source)
        return len(ids) + max_tokens <= self.max_model_len, len(ids) + max_tokens

    async def _generate(
        self, task: Task, adapter: AdapterUse, payload: dict[str, str], source: str, priority: int
    ) -> dict[str, Any]:
        labels = (task.name, adapter.key)
        prompt_ids, max_tokens = self.budget(task, payload, source)
        if len(prompt_ids) + max_tokens > self.max_model_len:
            raise _PromptTooLong
        request = GenerationRequest(
            request_id=f"medlora-{uuid.uuid4().hex}",
            prompt_token_ids=prompt_ids,
            grammar=compile_grammar(task.schema, source),
            max_tokens=max_tokens,
            temperature=task.manifest.generation.temperature,
            adapter=adapter.handle,
            priority=priority,
        )
        try:
            result = await self.engine.generate(request)
        except EngineUnavailable as exc:
            self.metrics.invalid_outputs.labels(*labels, "engine_unavailable").inc()
            raise Problem(ENGINE_UNAVAILABLE, str(exc), retry_after_s=5) from exc
        except EngineError as exc:
            self.metrics.invalid_outputs.labels(*labels, "engine_error").inc()
            raise Problem(GENERATION_FAILED, str(exc)) from exc
        self.metrics.generations.labels(*labels, result.finish_reason).inc()
        self.metrics.prompt_tokens.labels(*labels).inc(result.prompt_tokens)
        self.metrics.completion_tokens.labels(*labels).inc(result.completion_tokens)
        if result.finish_reason != "stop":
            self.metrics.invalid_outputs.labels(*labels, f"finish_{result.finish_reason}").inc()
            raise Problem(
                GENERATION_FAILED,
                f"generation ended with finish_reason={result.finish_reason!r} after {result.completion_tokens} tokens",
            )
        try:
            output = json.loads(result.text)
        except json.JSONDecodeError as exc:
            self.metrics.invalid_outputs.labels(*labels, "unparsable").inc()
            raise Problem(GENERATION_FAILED, "model output is not valid JSON") from exc
        error = next(iter(task.validator.iter_errors(output)), None)
        if error is not None:
            self.metrics.invalid_outputs.labels(*labels, "schema").inc()
            raise Problem(GENERATION_FAILED, f"model output violates the task schema at {list(error.path)}")
        return dict(output)

    async def _over_chunks(
        self, task: Task, adapter: AdapterUse, text: str, make_payload: Any, priority: int
    ) -> list[tuple[Chunk, dict[str, Any]]]:
        """Generate once per chunk of `text`, re-splitting any chunk the context cannot hold."""
        gen = task.manifest.generation
        pending = split_text(text, gen.max_chunk_chars, gen.chunk_overlap_chars)
        done: list[tuple[Chunk, dict[str, Any]]] = []

        async def one(chunk: Chunk) -> None:
            try:
                output = await self._generate(task, adapter, make_payload(chunk.text), chunk.text, priority)
                done.append((chunk, output))
            except _PromptTooLong:
                if len(chunk.text) <= _MIN_CHUNK_CHARS:
                    raise Problem(
                        GENERATION_FAILED, "input does not fit the model context even in the smallest chunk"
                    ) from None
                half = max(len(chunk.text) // 2, _MIN_CHUNK_CHARS // 2)
                parts = split_text(chunk.text, half, min(gen.chunk_overlap_chars, half // 4))
                await gather_first_error([one(Chunk(chunk.start + p.start, p.text)) for p in parts])

        await gather_first_error([one(chunk) for chunk in pending])
        if len(done) > 1:
            self.metrics.chunks.labels(task.name, adapter.key).inc(len(done))
        return sorted(done, key=lambda item: item[0].start)

    def _count_grounding(self, task: Task, adapter: AdapterUse, result: GroundingResult) -> None:
        for reason, n in result.dropped.items():
            self.metrics.spans_dropped.labels(task.name, adapter.key, reason).inc(n)

    # -- task types ---------------------------------------------------------------------
    async def ner(self, task: Task, adapter: AdapterUse, docs: list[Document], *, priority: int = 0) -> list[NerResult]:
        async def one(doc: Document) -> NerResult:
            if not doc.text.strip():
                return NerResult(doc.id, [])
            outputs = await self._over_chunks(task, adapter, doc.text, lambda t: {"text": t}, priority)
            per_chunk: list[list[Span]] = []
            limit = task.schema["properties"]["entities"]["maxItems"]
            limit_reached = any(len(output.get("entities", [])) >= limit for _, output in outputs)
            if limit_reached:
                self.metrics.entity_limit_reached.labels(task.name, adapter.key).inc()
            for chunk, output in outputs:
                candidates = [(e["text"], e["label"], e.get("attributes", {})) for e in output.get("entities", [])]
                grounded = ground_spans(chunk.text, candidates)
                self._count_grounding(task, adapter, grounded)
                per_chunk.append([shift(s, chunk.start) for s in grounded.spans])
            entities = merge_spans(per_chunk)
            self.metrics.spans_returned.labels(task.name, adapter.key).inc(len(entities))
            return NerResult(doc.id, entities, limit_reached)

        return await gather_first_error([one(d) for d in docs])

    async def qa(self, task: Task, adapter: AdapterUse, items: list[QaItem], *, priority: int = 0) -> list[QaResult]:
        async def one(item: QaItem) -> QaResult:
            if not item.context.strip():
                return QaResult(item.id, None)
            outputs = await self._over_chunks(
                task, adapter, item.context, lambda t: {"context": t, "question": item.question}, priority
            )
            # Chunks are in document order: the first chunk that answers wins.
            for chunk, output in outputs:
                span, grounded = ground_answer(chunk.text, output.get("answer"))
                self._count_grounding(task, adapter, grounded)
                if span is not None:
                    self.metrics.spans_returned.labels(task.name, adapter.key).inc()
                    return QaResult(item.id, shift(span, chunk.start))
            return QaResult(item.id, None)

        return await gather_first_error([one(i) for i in items])

    async def classify(
        self, task: Task, adapter: AdapterUse, docs: list[Document], *, priority: int = 0
    ) -> list[ClassifyResult]:
        order = {name: i for i, name in enumerate(task.label_names)}

        async def one(doc: Document) -> ClassifyResult:
            outputs = await self._over_chunks(task, adapter, doc.text, lambda t: {"text": t}, priority)
            votes: Counter[str] = Counter()
            for _, output in outputs:
                votes.update(dict.fromkeys(output["labels"], 1))
            if task.manifest.multi_label:
                labels = sorted(votes, key=order.__getitem__)
            else:
                # Long notes: majority over chunks, ties to the task's label order.
                labels = [min(votes, key=lambda name: (-votes[name], order[name]))]
            return ClassifyResult(doc.id, labels)

        return await gather_first_error([one(d) for d in docs])


async def gather_first_error(coros: list[Any]) -> list[Any]:
    """Run concurrently (the engine batches them); the first failure cancels the rest.

    Re-raises that first failure itself, not an ExceptionGroup, so callers see a Problem.
    """
    tasks: list[asyncio.Task[Any]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coros]
    except BaseExceptionGroup as group_error:
        leaf: BaseException = group_error
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None
    return [t.result() for t in tasks]
