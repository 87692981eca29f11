"""In-process vLLM v1 engine (AsyncLLM): one engine shared by all tasks, a LoRA per request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from app.engine.base import AdapterHandle, EngineDead, EngineError, GenerationRequest, GenerationResult
from app.engine.speculative import has_cuda, speculative_config
from app.engine.vllm_cache import seed_model_info_cache
from app.engine.vllm_logs import LOGGING_CONFIG, LOGGING_CONFIG_ENV
from app.settings import Settings

if TYPE_CHECKING:
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger("medlora.engine")


def vllm_request(request: GenerationRequest) -> tuple[SamplingParams, LoRARequest | None]:
    """vLLM's sampling parameters and LoRA request for one of ours (benchmarks send the same)."""
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import SamplingParams, StructuredOutputsParams

    params = SamplingParams(
        temperature=request.temperature,
        max_tokens=request.max_tokens,
        structured_outputs=StructuredOutputsParams(grammar=request.grammar),
        # 0: the sampled token's log-probability only (no alternatives to rank or return),
        # kept flat: plain lists instead of an object per token (measurably cheaper on CPU).
        logprobs=0 if request.logprobs else None,
        flat_logprobs=request.logprobs,
    )
    lora = None
    if (a := request.adapter) is not None:
        lora = LoRARequest(lora_name=a.key, lora_int_id=a.lora_id, lora_path=a.path)
    return params, lora


class VllmEngine:
    def __init__(self, settings: Settings, model_path: str):
        self.settings = settings
        self.model_path = model_path
        self._llm: AsyncLLM | None = None
        self._dead = False
        self.start_seconds: float | None = None

    @property
    def ready(self) -> bool:
        return self._llm is not None and not self._llm.errored

    @property
    def failure(self) -> str | None:
        # vLLM marks itself errored when its engine-core process dies; it never recovers.
        if self._dead or (self._llm is not None and self._llm.errored):
            return "the vLLM engine process died"
        return None

    def engine_args(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs

        s = self.settings
        kwargs: dict[str, Any] = dict(
            model=self.model_path,
            max_model_len=s.max_model_len,
            enable_lora=True,
            max_loras=s.max_loras,
            max_cpu_loras=s.max_cpu_loras,
            max_lora_rank=s.max_lora_rank,
            structured_outputs_config={"backend": s.structured_outputs_backend},
            disable_log_stats=False,
            # Batch jobs submit at a lower priority so interactive requests are scheduled first.
            scheduling_policy="priority",
            seed=0,
        )
        cuda = has_cuda()
        if cuda:
            kwargs["gpu_memory_utilization"] = s.gpu_memory_utilization
        speculative = speculative_config(s, cuda=cuda)
        if speculative is not None:
            # Each request's drafted and accepted tokens, for the per-task acceptance metrics.
            kwargs |= {"speculative_config": speculative, "per_request_spec_decode_metrics": "summary"}
        return AsyncEngineArgs(**kwargs)

    async def start(self) -> None:
        # vLLM's CPU backend reads its KV cache size from the environment.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.settings.cpu_kvcache_gib))
        # The engine core runs in a spawned process: it must not inherit (fork) this one's state.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        # vLLM's own logs without the notes' text (app/engine/vllm_logs.py), in every process of
        # the engine; an operator's own logging config wins.
        os.environ.setdefault(LOGGING_CONFIG_ENV, str(LOGGING_CONFIG))
        started = time.perf_counter()
        # Building AsyncLLM (config, model load, engine-core process start) takes tens of
        # seconds of blocking work: in a thread, so the event loop keeps answering /livez.
        build = asyncio.ensure_future(asyncio.to_thread(self._build))
        try:
            llm = await asyncio.shield(build)
        except asyncio.CancelledError:
            # A thread cannot be interrupted: let the build finish, then stop what it started
            # (its engine-core process) instead of leaving it to a finalizer.
            with contextlib.suppress(Exception):
                (await build).shutdown()
            raise
        try:
            # Built off the loop, its client starts its queue task lazily; a utility round trip
            # starts it here and proves the engine core answers.
            await llm.is_sleeping()
        except BaseException:
            llm.shutdown()
            raise
        self._llm = llm
        self.start_seconds = time.perf_counter() - started
        log.info("engine started", extra={"seconds": round(self.start_seconds, 1)})

    def _build(self) -> AsyncLLM:
        from vllm.v1.engine.async_llm import AsyncLLM

        seed_model_info_cache()
        return AsyncLLM.from_engine_args(self.engine_args())

    async def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    def _require(self) -> AsyncLLM:
        if self._llm is None:
            raise EngineError("engine is not running")
        return self._llm

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError

        llm = self._require()
        params, lora = vllm_request(request)
        final = None
        try:
            async for output in llm.generate(
                TokensPrompt(prompt_token_ids=request.prompt_token_ids),
                params,
                request.request_id,
                lora_request=lora,
                priority=request.priority,
            ):
                final = output
        except asyncio.CancelledError:
            # AsyncLLM aborts on cancellation itself; this also covers a cancel that
            # lands before its generator started.
            await asyncio.shield(llm.abort(request.request_id))
            raise
        except EngineDeadError:
            self._dead = True
            log.error("engine died", extra={"request_id": request.request_id})
            raise EngineDead("the engine process died during the request") from None
        except (ValueError, TypeError) as exc:
            raise EngineError(f"engine rejected the request: {type(exc).__name__}") from exc
        if final is None or not final.outputs:
            raise EngineError("engine returned no output")
        completion = final.outputs[0]
        token_ids = tuple(completion.token_ids)
        logprobs = None
        if request.logprobs and completion.logprobs is not None:
            logprobs = tuple(
                float(step[token].logprob) for token, step in zip(token_ids, completion.logprobs, strict=True)
            )
        drafts = completion.spec_decode_metrics
        return GenerationResult(
            text=completion.text,
            finish_reason=str(completion.finish_reason),
            prompt_tokens=len(final.prompt_token_ids or []),
            completion_tokens=len(token_ids),
            token_ids=token_ids,
            token_logprobs=logprobs,
            draft_tokens=drafts.num_draft_tokens if drafts else 0,
            accepted_draft_tokens=sum(j * n for j, n in enumerate(drafts.histogram)) if drafts else 0,
        )

    async def load_adapter(self, adapter: AdapterHandle) -> None:
        from vllm.lora.request import LoRARequest

        llm = self._require()
        request = LoRARequest(lora_name=adapter.key, lora_int_id=adapter.lora_id, lora_path=adapter.path)
        try:
            await llm.add_lora(request)
        except Exception as exc:  # vLLM raises several types for bad adapter files
            raise EngineError(f"engine could not load adapter {adapter.key}: {exc}") from exc

    def tokenizer(self) -> Any | None:
        # vLLM's copy is thread-safe per call (a pool of copies), as prompt building needs.
        return self._llm.get_tokenizer() if self._llm is not None else None

    def describe(self) -> dict[str, Any]:
        return {"engine": "local", "errored": self._llm is not None and self._llm.errored}

    async def unload_adapter(self, adapter: AdapterHandle) -> None:
        await self._require().remove_lora(adapter.lora_id)
