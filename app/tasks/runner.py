"""Run one task over a batch of inputs: chunk, prompt, constrain, generate, validate, then
hand the answers to the task's type to ground and merge.

Every generation is constrained by a grammar compiled from the ask's schema (grounded
fields restricted to the chunk's source text) with max_tokens at the schema's worst case,
so a result either validates and grounds, or the request fails with a problem: a broken
or unvalidated result is never returned.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from app.engine.base import (
    AdapterHandle,
    Engine,
    EngineError,
    EngineUnavailable,
    GenerationRequest,
    GenerationResult,
)
from app.problems import ENGINE_UNAVAILABLE, GENERATION_FAILED, Problem
from app.tasks.adapters import AdapterUse
from app.tasks.chunking import Chunk, split_text
from app.tasks.confidence import TokenConfidences
from app.tasks.grammar import PIECE_MAX_CHARS, compile_grammar, json_escape
from app.tasks.linking import HasEntities, link_asks, with_codes
from app.tasks.metrics import Metrics
from app.tasks.normalization import NfcText
from app.tasks.prompts import PromptRenderer, build_messages
from app.tasks.schema import worst_case_bytes
from app.tasks.terminology import NONE
from app.tasks.types.base import Answer, Ask, Tally, Task, TaskInput

log = logging.getLogger("medlora.tasks")

T = TypeVar("T")

# Below this a chunk is not split further to fit the context; the request fails instead. As
# small as it can be without cutting a piece (a word of up to 32 characters): a chunk of emoji,
# 4 bytes each, needs about 40 characters for NER's worst case to fit the context.
_MIN_CHUNK_CHARS = PIECE_MAX_CHARS


Gate = asyncio.Semaphore


class _PromptTooLong(Exception):
    """Prompt plus worst-case output would not fit the engine's context."""


@dataclass
class RunStats:
    """What a run learned beyond its results."""

    unscored_answers: int = 0  # answers without token log-probabilities: no confidence to filter by


@dataclass(frozen=True)
class Plan:
    """A request's work, known before it is admitted: each item as the model reads it (its
    source in NFC), the way back to the source sent (None: it was NFC already), its chunks
    (None: answered without the model) and the generations each chunk needs."""

    items: list[TaskInput]
    originals: list[NfcText | None]
    chunks: list[list[Chunk] | None]
    asks_per_chunk: int

    @property
    def generations(self) -> int:
        return sum(len(chunks) for chunks in self.chunks if chunks is not None) * self.asks_per_chunk


class TaskRunner:
    def __init__(self, engine: Engine, metrics: Metrics, *, max_model_len: int, renderer: PromptRenderer | None = None):
        self.engine = engine
        self.metrics = metrics
        self.max_model_len = max_model_len
        self.renderer = renderer  # set once the model's tokenizer is loaded (service start)

    # -- one generation ----------------------------------------------------------------
    def budget(self, task: Task, ask: Ask) -> tuple[list[int], int]:
        """Prompt token ids and max_tokens (the schema's worst case for this source)."""
        if self.renderer is None:
            raise RuntimeError("the tokenizer is not loaded yet")
        messages = ask.messages if ask.messages is not None else build_messages(task, ask.payload, ask.part)
        prompt_ids = self.renderer.prompt_ids(messages)
        # +1 leaves room for the end-of-sequence token after the last byte.
        return prompt_ids, worst_case_bytes(ask.schema, json_escape(ask.source)) + 1

    def full_chunk_fits(self, task: Task) -> tuple[bool, int]:
        """Whether a chunk of max_chunk_chars (plain prose) fits the context with its worst case."""
        size = task.manifest.generation.max_chunk_chars
        source = ("lorem ipsum " * size)[:size]
        payload = {name: "?" for name in task.kind.input_fields} | {task.kind.source_field: source}
        needed = max(
            len(ids) + max_tokens for ids, max_tokens in map(partial(self.budget, task), task.kind.asks(task, payload))
        )
        return needed <= self.max_model_len, needed

    def generation_request(
        self, task: Task, ask: Ask, adapter: AdapterHandle | None, *, priority: int = 0, request_id: str | None = None
    ) -> GenerationRequest:
        """The engine request the gateway sends for one ask: its prompt, grammar, token budget,
        sampling, and the log-probabilities confidence is computed from."""
        prompt_ids, max_tokens = self.budget(task, ask)
        return GenerationRequest(
            request_id=request_id or f"medlora-{uuid.uuid4().hex}",
            prompt_token_ids=prompt_ids,
            grammar=compile_grammar(ask.schema, ask.source),
            max_tokens=max_tokens,
            temperature=task.manifest.generation.temperature,
            adapter=adapter,
            priority=priority,
            logprobs=True,
        )

    async def _generate(
        self, task: Task, adapter: AdapterUse, ask: Ask, priority: int, gate: Gate, stats: RunStats
    ) -> Answer:
        labels = (task.name, adapter.key)
        async with gate:
            # Rendering, tokenizing and building the grammar cost milliseconds a chunk, seconds
            # for a long note: in a worker thread, so the event loop keeps answering.
            request = await asyncio.to_thread(self.generation_request, task, ask, adapter.handle, priority=priority)
            if len(request.prompt_token_ids) + request.max_tokens > self.max_model_len:
                raise _PromptTooLong
            try:
                result = await self.engine.generate(request)
            except EngineUnavailable as exc:
                self.metrics.invalid_outputs.labels(*labels, "engine_unavailable").inc()
                raise Problem(ENGINE_UNAVAILABLE, str(exc), retry_after_s=5) from exc
            except EngineError as exc:
                self.metrics.invalid_outputs.labels(*labels, "engine_error").inc()
                raise Problem(GENERATION_FAILED, str(exc)) from exc
        answer = await asyncio.to_thread(self._answer, task, adapter, ask, result)
        if answer.confidences is None:
            stats.unscored_answers += 1
        return answer

    def _answer(self, task: Task, adapter: AdapterUse, ask: Ask, result: GenerationResult) -> Answer:
        """A finished generation as a checked answer (a problem if it is not one)."""
        labels = (task.name, adapter.key)
        self.metrics.generations.labels(*labels, result.finish_reason).inc()
        self.metrics.prompt_tokens.labels(*labels).inc(result.prompt_tokens)
        self.metrics.completion_tokens.labels(*labels).inc(result.completion_tokens)
        if result.draft_tokens:
            self.metrics.draft_tokens.labels(*labels).inc(result.draft_tokens)
            self.metrics.accepted_draft_tokens.labels(*labels).inc(result.accepted_draft_tokens)
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
        error = next(iter(ask.validator.iter_errors(output)), None)
        if error is not None:
            self.metrics.invalid_outputs.labels(*labels, "schema").inc()
            raise Problem(GENERATION_FAILED, f"model output violates the task schema at {list(error.path)}")
        assert self.renderer is not None  # budget() needed it
        tokenizer = self.renderer.tokenizer
        confidences = TokenConfidences.build(tokenizer, result.text, result.token_ids, result.token_logprobs)
        return Answer(dict(output), result.text, confidences)

    async def _over_chunks(
        self,
        task: Task,
        adapter: AdapterUse,
        item: TaskInput,
        chunks: list[Chunk],
        priority: int,
        gate: Gate,
        stats: RunStats,
    ) -> list[tuple[Chunk, list[Answer]]]:
        """Answer every ask of every chunk of the item's source, re-splitting any chunk the
        context cannot hold; (chunk, answers) in document order."""
        gen = task.manifest.generation
        kind = task.kind
        done: list[tuple[Chunk, list[Answer]]] = []

        async def one(chunk: Chunk) -> None:
            try:
                asks = await asyncio.to_thread(kind.asks, task, item.with_source(chunk.text))
                answers = await gather_first_error(
                    [self._generate(task, adapter, ask, priority, gate, stats) for ask in asks]
                )
                done.append((chunk, answers))
            except _PromptTooLong:
                if len(chunk.text) <= _MIN_CHUNK_CHARS:
                    raise Problem(
                        GENERATION_FAILED, "input does not fit the model context even in the smallest chunk"
                    ) from None
                half = max(len(chunk.text) // 2, _MIN_CHUNK_CHARS)
                parts = split_text(chunk.text, half, min(gen.chunk_overlap_chars, half // 4))
                await gather_first_error([one(Chunk(chunk.start + p.start, p.text)) for p in parts])

        await gather_first_error([one(chunk) for chunk in chunks])
        if len(done) > 1:
            self.metrics.chunks.labels(task.name, adapter.key).inc(len(done))
        return sorted(done, key=lambda pair: pair[0].start)

    def plan(self, task: Task, items: list[TaskInput]) -> Plan:
        """What a request will ask of the engine, before it runs (CPU work: off the event loop)."""
        gen = task.manifest.generation
        chunks: list[list[Chunk] | None] = []
        asks_per_chunk = 0
        originals = [NfcText.of(item.source) for item in items]
        items = [
            item if nfc is None else dataclasses.replace(item, payload=item.with_source(nfc.text))
            for item, nfc in zip(items, originals, strict=True)
        ]
        for item in items:
            if task.kind.blank(task, item) is not None:
                chunks.append(None)
                continue
            parts = split_text(item.source, gen.max_chunk_chars, gen.chunk_overlap_chars)
            chunks.append(parts)
            if not asks_per_chunk:  # the same for every chunk of a task (a form's item groups)
                asks_per_chunk = len(task.kind.asks(task, item.with_source(parts[0].text)))
        return Plan(items, originals, chunks, asks_per_chunk)

    async def run(
        self,
        task: Task,
        adapter: AdapterUse,
        plan: Plan,
        *,
        priority: int = 0,
        concurrency: int | None = None,
        stats: RunStats | None = None,
    ) -> list[Any]:
        """One result per item, in order (the type's result objects). At most `concurrency`
        generations of this request are in the engine at once (its admitted weight)."""
        kind = task.kind
        gate = asyncio.Semaphore(concurrency or max(plan.generations, 1))
        stats = stats if stats is not None else RunStats()

        async def one(item: TaskInput, original: NfcText | None, chunks: list[Chunk] | None) -> Any:
            if chunks is None:
                return kind.blank(task, item)
            done = await self._over_chunks(task, adapter, item, chunks, priority, gate, stats)
            result = await asyncio.to_thread(self._conclude, task, adapter, item, original, done)
            if task.coding:
                text = item.source if original is None else original.original
                await self._link(task, adapter, text, result, priority, gate, stats)
            return result

        work = zip(plan.items, plan.originals, plan.chunks, strict=True)
        return await gather_first_error([one(*each) for each in work])

    async def _link(
        self,
        task: Task,
        adapter: AdapterUse,
        text: str,
        result: HasEntities,
        priority: int,
        gate: Gate,
        stats: RunStats,
    ) -> None:
        """Code the result's entities (linking.py): one generation per entity with candidates,
        after grounding, so that only entities the note holds are coded."""
        links = await asyncio.to_thread(link_asks, task, text, result.entities)
        answers = await gather_first_error(
            [self._generate(task, adapter, link.ask, priority, gate, stats) for link in links]
        )
        with_codes(result, links, answers)
        for answer in answers:
            outcome = "abstained" if answer.output["code"] == NONE else "coded"
            self.metrics.links.labels(task.name, adapter.key, outcome).inc()

    def _conclude(
        self,
        task: Task,
        adapter: AdapterUse,
        item: TaskInput,
        original: NfcText | None,
        done: list[tuple[Chunk, list[Answer]]],
    ) -> Any:
        """Ground each chunk's answers, merge them into the item's result, and move its spans
        back to the text sent when the model read it in NFC."""
        kind = task.kind
        tally = Tally()
        parts = [kind.read(task, item, chunk, answers, tally) for chunk, answers in done]
        result = kind.merge(task, item, parts, tally)
        if original is not None:
            result = kind.to_original(task, result, original, tally)
        self._publish(task, adapter, tally)
        return result

    def _publish(self, task: Task, adapter: AdapterUse, tally: Tally) -> None:
        labels = (task.name, adapter.key)
        for reason, n in tally.dropped.items():
            self.metrics.spans_dropped.labels(*labels, reason).inc(n)
        if tally.returned is not None:
            self.metrics.spans_returned.labels(*labels).inc(tally.returned)
        if tally.limit_reached:
            self.metrics.entity_limit_reached.labels(*labels).inc()
        if tally.mismatched:
            self.metrics.evidence_mismatches.labels(*labels).inc(tally.mismatched)


async def gather_first_error(coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run concurrently (the engine batches them); the first failure cancels the rest.

    Re-raises that first failure itself, not an ExceptionGroup, so callers see a Problem.
    """
    tasks: list[asyncio.Task[T]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coros]
    except BaseExceptionGroup as group_error:
        leaf: BaseException = group_error
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None
    return [t.result() for t in tasks]
