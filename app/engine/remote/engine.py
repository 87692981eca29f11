"""Remote engine: vLLM OpenAI-compatible servers driven over HTTP (the split topology).

Same contract as the in-process engine: token-id prompts, an llguidance grammar per
request, a LoRA adapter by name. The gateway keeps the set of adapters it wants loaded and
makes every replica match it before the replica takes traffic, so a replica that joins
later (or restarts and forgets its adapters) is synced by the health loop.

Replicas are shared by every gateway, so adapters are never unloaded from them (vLLM keeps
only `--max-loras` resident and evicts the rest itself); each registration has its own
engine-side name (name@version plus a hash of its folder), so a version re-registered from
another folder can never be served with the old weights.

Retries: a generation has no side effects, so it is retried on another replica when the
replica could not be reached, answered 502/503, aborted it, or lost the adapter; after a
dropped connection only once (a request that crashes replicas must not take down the
pool). It is not retried after a read timeout or a 504 (it may still be running) or when
the server rejected it (retrying would fail the same way).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from app.engine.base import AdapterHandle, EngineError, EngineUnavailable, GenerationRequest, GenerationResult
from app.engine.remote.discovery import resolve_replicas
from app.engine.remote.metrics import EngineMetrics
from app.engine.remote.replicas import Replica, ReplicaPool
from app.settings import ConfigurationError, Settings

log = logging.getLogger("medlora.engine")

_ERROR_CHARS = 300  # server messages are quoted in problems; keep them short
_RETRY_STATUSES = frozenset({502, 503})  # the replica (or its proxy) did not start the work
_ADMIN_TIMEOUT_S = 60.0  # health checks and adapter loads: never the long generation timeout
# Below vLLM's keep-alive (5 s): reusing a connection the server is closing would look like a
# dropped request and take a healthy replica out of rotation.
_KEEPALIVE_EXPIRY_S = 2.0


def engine_name(adapter: AdapterHandle) -> str:
    """The adapter's name on the replicas: the same for every gateway, new for a new folder."""
    return f"{adapter.key}+{hashlib.sha256(adapter.path.encode()).hexdigest()[:12]}"


@dataclass
class _Attempt:
    """Why one replica did not produce a result; `retry` says another replica may."""

    retry: bool
    message: str
    reason: str = ""  # metric label when retried


class _ReplicaProblem(Exception):
    """The replica cannot serve (yet): it stays or goes out of rotation."""


class _AdapterRejected(Exception):
    """The replica tried to load the adapter and failed: the files are the problem."""


def _token_logprobs(logprobs: Any) -> tuple[tuple[int, ...], tuple[float, ...] | None]:
    """Token ids and log-probabilities from a completion's `logprobs` (tokens as "token_id:N")."""
    if not logprobs:
        return (), None
    ids = tuple(int(str(token).removeprefix("token_id:")) for token in logprobs["tokens"])
    values = tuple(float(value) for value in logprobs["token_logprobs"])
    if len(ids) != len(values):
        raise ValueError("tokens and token_logprobs differ in length")
    return ids, values


def _server_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        message = body.get("error", {}).get("message") or body.get("message") or body.get("detail")
    except (ValueError, AttributeError):
        message = None
    return str(message or response.text or response.reason_phrase)[:_ERROR_CHARS]


class RemoteEngine:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        if not settings.engine_urls:
            raise ConfigurationError("MEDLORA_ENGINE=remote needs MEDLORA_ENGINE_URLS (comma-separated vLLM base URLs)")
        if settings.engine_discovery == "dns" and any(u.startswith("https:") for u in settings.engine_urls):
            # Connecting by address would fail certificate checks against the Service name.
            raise ConfigurationError("MEDLORA_ENGINE_DISCOVERY=dns works with http:// engine URLs only")
        self.settings = settings
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._pool = ReplicaPool()
        self._adapters: dict[str, AdapterHandle] = {}  # engine name -> adapter every replica must have
        self._adapter_lock = asyncio.Lock()
        self._monitor: asyncio.Task[None] | None = None
        self._first_healthy = asyncio.Event()
        self._metrics = EngineMetrics(registry)

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return any(r.healthy for r in self._pool.replicas.values())

    @property
    def failure(self) -> str | None:
        return None  # replicas come and go; the gateway itself never needs a restart for them

    def tokenizer(self) -> Any | None:
        return None  # the servers' tokenizers live in their processes: the gateway loads its own

    def describe(self) -> dict[str, Any]:
        """For /readyz: every replica and why it is out of rotation."""
        return {
            "engine": "remote",
            "replicas": [
                {"url": r.url, "healthy": r.healthy, **({} if r.healthy else {"reason": r.reason})}
                for r in self._pool.replicas.values()
            ],
        }

    async def start(self) -> None:
        """Start watching replicas; return once one is healthy (readiness stays false until then)."""
        s = self.settings
        headers = {"Authorization": f"Bearer {s.engine_api_key}"} if s.engine_api_key else {}
        self._client = httpx.AsyncClient(
            transport=self._transport,
            headers=headers,
            timeout=httpx.Timeout(s.request_timeout_s + 10, connect=s.engine_connect_timeout_s),
            # Many generations share each replica; the pool must not be the bottleneck.
            limits=httpx.Limits(
                max_connections=None, max_keepalive_connections=256, keepalive_expiry=_KEEPALIVE_EXPIRY_S
            ),
        )
        self._monitor = asyncio.create_task(self._watch())
        await self._first_healthy.wait()

    async def shutdown(self) -> None:
        # Adapters stay loaded on the replicas: other gateways share them.
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise EngineError("engine is not running")
        return self._client

    # -- replica health ----------------------------------------------------------------
    async def _watch(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # a bug here must not stop health checking for good
                log.error("engine health round failed", extra={"error_type": type(exc).__name__})
            await asyncio.sleep(self.settings.engine_health_interval_s)

    async def refresh(self) -> None:
        """One health round: follow discovery, check every replica, sync adapters, publish gauges."""
        s = self.settings
        pool = self._pool
        urls = await resolve_replicas(s.engine_urls, s.engine_discovery, known=list(pool.replicas))
        for url in urls:
            if url not in pool.replicas:
                # A replica that left and came back keeps its count of requests still running.
                replica = pool.gone.pop(url, None) or Replica(url)
                replica.removed = False
                pool.replicas[url] = replica
                log.info("engine replica discovered", extra={"replica": url})
        for url in set(pool.replicas) - set(urls):
            replica = pool.replicas.pop(url)
            replica.removed, replica.healthy = True, False
            pool.gone[url] = replica
            log.info("engine replica removed", extra={"replica": url})
        for url, replica in list(pool.gone.items()):
            if replica.outstanding == 0:
                del pool.gone[url]
                with contextlib.suppress(KeyError):
                    self._metrics.outstanding.remove(url)
        await asyncio.gather(*(self._check(r) for r in list(pool.replicas.values())))
        self._publish()
        if self.ready:
            self._first_healthy.set()

    def _publish(self) -> None:
        replicas = self._pool.replicas.values()
        healthy = sum(r.healthy for r in replicas)
        self._metrics.replicas.labels("healthy").set(healthy)
        self._metrics.replicas.labels("unhealthy").set(len(replicas) - healthy)
        for r in replicas:
            self._metrics.outstanding.labels(r.url).set(r.outstanding)

    def _set_health(self, replica: Replica, healthy: bool, reason: str = "") -> None:
        if replica.removed:
            return
        changed = healthy != replica.healthy
        if changed or (not healthy and reason != replica.reason):
            if healthy:
                log.info("engine replica healthy", extra={"replica": replica.url})
            else:
                log.warning("engine replica unhealthy", extra={"replica": replica.url, "reason": reason})
        replica.healthy, replica.reason = healthy, reason
        if changed:
            self._publish()

    async def _check(self, replica: Replica) -> None:
        try:
            cards = await self._models(replica)
            # Under the adapter lock: a registration running now either sees this replica
            # healthy (and loads on it) or finished before (and this sync loads it).
            async with self._adapter_lock:
                loaded = {str(c["id"]) for c in cards if c.get("parent")}
                for name, handle in list(self._adapters.items()):
                    if name not in loaded:
                        await self._load_on(replica, handle)
                        log.info("adapter synced to replica", extra={"replica": replica.url, "adapter": name})
                self._set_health(replica, True)
        except Exception as exc:  # any failure of one replica takes only that replica out
            reason = str(exc)[:_ERROR_CHARS] if isinstance(exc, _ReplicaProblem | _AdapterRejected) else ""
            self._set_health(replica, False, reason or f"{type(exc).__name__}: {str(exc)[:200]}")

    async def _models(self, replica: Replica) -> list[dict[str, Any]]:
        """Health and the model listing; sets the served base model name."""
        client = self._http()
        health = await client.get(f"{replica.url}/health", timeout=_ADMIN_TIMEOUT_S)
        if health.status_code != 200:
            raise _ReplicaProblem(f"/health answered {health.status_code}")
        listing = await client.get(f"{replica.url}/v1/models", timeout=_ADMIN_TIMEOUT_S)
        if listing.status_code != 200:
            raise _ReplicaProblem(f"/v1/models answered {listing.status_code} {_server_message(listing)}")
        cards = listing.json()["data"]
        if not isinstance(cards, list) or not all(isinstance(c, dict) for c in cards):
            raise _ReplicaProblem("/v1/models answered an unexpected body")
        base = next((c for c in cards if not c.get("parent")), None)
        if base is None:
            raise _ReplicaProblem("/v1/models lists no base model")
        max_len = base.get("max_model_len")
        if isinstance(max_len, int) and max_len < self.settings.max_model_len:
            raise _ReplicaProblem(
                f"replica max_model_len {max_len} is below the gateway's MEDLORA_MAX_MODEL_LEN "
                f"{self.settings.max_model_len}"
            )
        replica.served_model = str(base["id"])
        return list(cards)

    # -- adapters ----------------------------------------------------------------------
    async def _load_on(self, replica: Replica, handle: AdapterHandle) -> None:
        """Load on one replica: _AdapterRejected if the files are bad, _ReplicaProblem if the replica is."""
        name = engine_name(handle)
        try:
            response = await self._http().post(
                f"{replica.url}/v1/load_lora_adapter",
                json={"lora_name": name, "lora_path": handle.path},
                timeout=_ADMIN_TIMEOUT_S,
            )
        except httpx.HTTPError as exc:
            raise _ReplicaProblem(f"loading adapter {handle.key}: {type(exc).__name__}") from exc
        if response.status_code == 200:
            return
        message = _server_message(response)
        if response.status_code == 400 and "already been loaded" in message:
            return  # another gateway (or an earlier attempt) loaded this very registration
        if response.status_code in (500, 400, 404, 422):
            # vLLM answers 500 when the weights fail to load, 404 when the folder is missing.
            raise _AdapterRejected(f"replica {replica.url} could not load adapter {handle.key}: {message}")
        raise _ReplicaProblem(f"loading adapter {handle.key}: {response.status_code} {message}")

    async def load_adapter(self, adapter: AdapterHandle) -> None:
        """Load on every healthy replica; replicas that are down get it when they come back."""
        async with self._adapter_lock:
            targets = [r for r in self._pool.replicas.values() if r.healthy]
            if not targets:
                raise EngineUnavailable("no engine replica is healthy")
            results = await asyncio.gather(*(self._load_on(r, adapter) for r in targets), return_exceptions=True)
            rejected = [exc for exc in results if isinstance(exc, _AdapterRejected)]
            if rejected:
                # Not wanted anywhere: a task bound to it must not fail on some replicas only.
                # Replicas that did load it keep it unused (they are shared; vLLM evicts it).
                raise EngineError(str(rejected[0]))
            for replica, result in zip(targets, results, strict=True):
                if isinstance(result, BaseException):
                    # Out of rotation until its next health check syncs the adapter to it.
                    self._set_health(replica, False, str(result)[:_ERROR_CHARS])
            if not any(r.healthy for r in targets):
                raise EngineUnavailable("no engine replica could load the adapter now")
            self._adapters[engine_name(adapter)] = adapter

    async def unload_adapter(self, adapter: AdapterHandle) -> None:
        """Stop requiring it. Other gateways may still use it on the shared replicas, so it stays
        loaded there; a registration of the same folder reuses it, another folder gets a new name."""
        async with self._adapter_lock:
            name = engine_name(adapter)
            if self._adapters.get(name) is adapter:  # not a newer registration of the same folder
                del self._adapters[name]

    # -- generation --------------------------------------------------------------------
    def _body(self, request: GenerationRequest, replica: Replica) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": engine_name(request.adapter) if request.adapter else replica.served_model,
            "prompt": request.prompt_token_ids,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "structured_outputs": {"grammar": request.grammar},
            "priority": request.priority,
            "request_id": request.request_id,
        }
        if request.logprobs:
            # The sampled tokens' log-probabilities, and the tokens as ids ("token_id:123"):
            # decoded one by one, a token that splits a character would lose its bytes.
            body |= {"logprobs": 0, "return_tokens_as_token_ids": True}
        return body

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Send to the least busy healthy replica; on a failure that is safe to retry, try another.

        Cancelling the caller closes the connection, and vLLM aborts a request whose client
        went away.
        """
        tried: set[str] = set()
        failure: _Attempt | None = None
        dropped = 0
        for _ in range(self.settings.engine_max_attempts):
            replica = self._pool.pick(exclude=tried)
            if replica is None:
                break
            tried.add(replica.url)
            outcome = await self._attempt(replica, request)
            if isinstance(outcome, GenerationResult):
                return outcome
            failure = outcome
            if not outcome.retry:
                raise EngineError(outcome.message)
            self._metrics.retries.labels(outcome.reason).inc()
            log.warning(
                "generation attempt failed",
                extra={"request_id": request.request_id, "replica": replica.url, "reason": outcome.reason},
            )
            dropped += outcome.reason == "connection_lost"
            if dropped > 1:
                break  # twice: the request itself may be what brings replicas down
        detail = failure.message if failure else "no engine replica is healthy"
        raise EngineUnavailable(f"{detail}; safe to retry")

    async def _attempt(self, replica: Replica, request: GenerationRequest) -> GenerationResult | _Attempt:
        replica.outstanding += 1
        self._metrics.outstanding.labels(replica.url).set(replica.outstanding)
        try:
            response = await self._http().post(f"{replica.url}/v1/completions", json=self._body(request, replica))
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            self._set_health(replica, False, f"unreachable: {type(exc).__name__}")
            return _Attempt(True, f"replica {replica.url} is unreachable", "unreachable")
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            # The replica dropped the request (crashed or restarting): no result was produced.
            self._set_health(replica, False, f"connection lost: {type(exc).__name__}")
            return _Attempt(True, f"replica {replica.url} dropped the request", "connection_lost")
        except httpx.TimeoutException:
            return _Attempt(False, f"replica {replica.url} did not answer in time")
        except httpx.HTTPError as exc:
            return _Attempt(False, f"replica {replica.url}: {type(exc).__name__}")
        finally:
            replica.outstanding -= 1
            if not replica.removed:
                self._metrics.outstanding.labels(replica.url).set(replica.outstanding)
        if response.status_code == 200:
            return self._result(replica, response)
        message = f"replica {replica.url}: {response.status_code} {_server_message(response)}"
        if response.status_code == 404 and request.adapter is not None:
            # The replica lost the adapter (restarted between health checks): resync it.
            self._set_health(replica, False, "adapter missing; resync pending")
            return _Attempt(True, message, "adapter_missing")
        if response.status_code in _RETRY_STATUSES:
            self._set_health(replica, False, f"answered {response.status_code}")
            return _Attempt(True, message, f"status_{response.status_code}")
        if response.status_code == 504:
            # A proxy gave up waiting; the replica may still be generating: not retried.
            return _Attempt(False, f"{message} (timed out upstream)")
        return _Attempt(False, f"engine rejected the request: {message}")

    @staticmethod
    def _result(replica: Replica, response: httpx.Response) -> GenerationResult | _Attempt:
        try:
            body = response.json()
            choice = body["choices"][0]
            usage = body.get("usage") or {}
            text, finish_reason = choice["text"], choice.get("finish_reason")
            prompt_tokens, completion_tokens = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
            token_ids, token_logprobs = _token_logprobs(choice.get("logprobs"))
            # Present when the server speculates (--per-request-spec-decode-metrics, server_args.py).
            drafts = (body.get("metrics") or {}).get("speculative_decoding") or {}
            draft_tokens = int(drafts.get("num_draft_tokens", 0))
            accepted = int(drafts.get("num_accepted_draft_tokens", 0))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise EngineError(f"engine answered an unexpected body: {type(exc).__name__}") from exc
        if finish_reason == "abort":
            # The server aborted it (draining, scaling down): nothing was produced.
            return _Attempt(True, f"replica {replica.url} aborted the request", "aborted")
        if not isinstance(text, str) or finish_reason not in ("stop", "length"):
            raise EngineError(f"engine answered an unexpected body: finish_reason={finish_reason!r}")
        return GenerationResult(
            text=text,
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            token_ids=token_ids,
            token_logprobs=token_logprobs,
            draft_tokens=draft_tokens,
            accepted_draft_tokens=accepted,
        )
