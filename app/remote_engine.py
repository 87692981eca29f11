"""Remote engine: vLLM OpenAI-compatible servers driven over HTTP (the split topology).

Same contract as the in-process engine: token-id prompts, an llguidance grammar per
request, a LoRA adapter by name. The gateway keeps the set of adapters it wants loaded and
makes every replica match it before the replica takes traffic, so a replica that joins
later (or restarts and forgets its adapters) is synced by the health loop.

Retries: a generation has no side effects, so it is retried on another replica when the
replica could not be reached, dropped the connection, or answered that it is not ready
or lost the adapter. It is not retried after a read timeout (it may still be running) or
when the server rejected it (retrying would fail the same way).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from app.engine import AdapterHandle, EngineError, EngineUnavailable, GenerationRequest, GenerationResult
from app.metrics import EngineMetrics
from app.settings import ConfigurationError, Settings

log = logging.getLogger("medlora.engine")

_ERROR_CHARS = 300  # server messages are quoted in problems; keep them short
_RETRY_STATUSES = frozenset({502, 503, 504})  # the replica did not start the work


@dataclass
class Replica:
    url: str
    healthy: bool = False
    outstanding: int = 0
    served_model: str | None = None
    reason: str = "not checked yet"  # why it is unhealthy (logged when it changes)
    removed: bool = False  # gone from discovery; requests in flight finish


@dataclass
class _Attempt:
    """Why one replica did not produce a result; `retry` says another replica may."""

    retry: bool
    message: str
    reason: str = ""  # metric label when retried


class _AdapterRejected(Exception):
    pass


@dataclass
class _Pool:
    replicas: dict[str, Replica] = field(default_factory=dict)
    order: itertools.count[int] = field(default_factory=itertools.count)

    def pick(self, exclude: set[str]) -> Replica | None:
        """Least outstanding requests among healthy replicas; ties rotate."""
        candidates = [r for r in self.replicas.values() if r.healthy and r.url not in exclude]
        if not candidates:
            return None
        least = min(r.outstanding for r in candidates)
        tied = [r for r in candidates if r.outstanding == least]
        return tied[next(self.order) % len(tied)]


def _server_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        message = body.get("error", {}).get("message") or body.get("message") or body.get("detail")
    except (ValueError, AttributeError):
        message = None
    return str(message or response.text or response.reason_phrase)[:_ERROR_CHARS]


async def resolve_replicas(urls: list[str], discovery: str) -> list[str]:
    """Replica base URLs: the URLs themselves, or every address their host names resolve to."""
    if discovery == "static":
        return list(urls)
    loop = asyncio.get_running_loop()
    found: list[str] = []
    for url in urls:
        parsed = httpx.URL(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        infos = await loop.getaddrinfo(parsed.host, port, type=socket.SOCK_STREAM)
        for address in sorted({str(info[4][0]) for info in infos}):
            host = f"[{address}]" if ":" in address else address
            found.append(f"{parsed.scheme}://{host}:{port}{parsed.raw_path.decode().rstrip('/')}")
    return found


def vllm_server_args(settings: Settings) -> list[str]:
    """The vLLM OpenAI server flags this gateway relies on (the Helm chart passes the same; tested).

    Also needed in the server's environment: VLLM_ALLOW_RUNTIME_LORA_UPDATING=True.
    """
    return [
        "--enable-lora",
        "--max-loras", str(settings.max_loras),
        "--max-cpu-loras", str(settings.max_cpu_loras),
        "--max-lora-rank", str(settings.max_lora_rank),
        "--max-model-len", str(settings.max_model_len),
        "--scheduling-policy", "priority",  # batch lines are sent at a lower priority
        "--structured-outputs-config", json.dumps({"backend": settings.structured_outputs_backend}),
    ]  # fmt: skip


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
        self.settings = settings
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._pool = _Pool()
        self._adapters: dict[str, AdapterHandle] = {}  # what every replica must have loaded
        self._adapter_lock = asyncio.Lock()
        self._monitor: asyncio.Task[None] | None = None
        self._first_healthy = asyncio.Event()
        self._metrics = EngineMetrics(registry)

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return any(r.healthy for r in self._pool.replicas.values())

    async def start(self) -> None:
        """Start watching replicas; return once one is healthy (readiness stays false until then)."""
        s = self.settings
        headers = {"Authorization": f"Bearer {s.engine_api_key}"} if s.engine_api_key else {}
        self._client = httpx.AsyncClient(
            transport=self._transport,
            headers=headers,
            timeout=httpx.Timeout(s.request_timeout_s + 10, connect=s.engine_connect_timeout_s),
            # Many generations share each replica; the pool must not be the bottleneck.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
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
        try:
            urls = await resolve_replicas(s.engine_urls, s.engine_discovery)
        except OSError as exc:
            # A DNS hiccup must not empty the pool: keep the replicas we know.
            log.warning("engine discovery failed", extra={"error": str(exc)})
            urls = list(self._pool.replicas)
        for url in urls:
            if url not in self._pool.replicas:
                self._pool.replicas[url] = Replica(url)
                log.info("engine replica discovered", extra={"replica": url})
        for url in set(self._pool.replicas) - set(urls):
            replica = self._pool.replicas.pop(url)
            replica.removed, replica.healthy = True, False
            self._metrics.outstanding.remove(url)
            log.info("engine replica removed", extra={"replica": url})
        await asyncio.gather(*(self._check(r) for r in list(self._pool.replicas.values())))
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
        if healthy != replica.healthy or (not healthy and reason != replica.reason):
            if healthy:
                log.info("engine replica healthy", extra={"replica": replica.url})
            else:
                log.warning("engine replica unhealthy", extra={"replica": replica.url, "reason": reason})
        replica.healthy, replica.reason = healthy, reason

    async def _check(self, replica: Replica) -> None:
        client = self._http()
        timeout = self.settings.engine_connect_timeout_s * 2
        try:
            health = await client.get(f"{replica.url}/health", timeout=timeout)
            if health.status_code != 200:
                raise _AdapterRejected(f"/health answered {health.status_code}")
            listing = await client.get(f"{replica.url}/v1/models", timeout=timeout)
            listing.raise_for_status()
            cards = listing.json()["data"]
            base = next(c for c in cards if not c.get("parent"))
            max_len = base.get("max_model_len")
            if isinstance(max_len, int) and max_len < self.settings.max_model_len:
                raise _AdapterRejected(
                    f"replica max_model_len {max_len} is below the gateway's MEDLORA_MAX_MODEL_LEN "
                    f"{self.settings.max_model_len}"
                )
            replica.served_model = str(base["id"])
            loaded = {str(c["id"]) for c in cards if c.get("parent")}
            if not self._adapters.keys() <= loaded:
                await self._sync_adapters(replica, loaded)
        except (httpx.HTTPError, KeyError, StopIteration, ValueError, _AdapterRejected) as exc:
            self._set_health(replica, False, str(exc)[:_ERROR_CHARS] or type(exc).__name__)
            return
        self._set_health(replica, True)

    async def _sync_adapters(self, replica: Replica, loaded: set[str]) -> None:
        # Under the adapter lock so a registration or removal cannot interleave with the sync.
        async with self._adapter_lock:
            for key, handle in list(self._adapters.items()):
                if key not in loaded:
                    await self._load_on(replica, handle)
                    log.info("adapter synced to replica", extra={"replica": replica.url, "adapter": key})

    # -- adapters ----------------------------------------------------------------------
    async def _load_on(self, replica: Replica, handle: AdapterHandle) -> None:
        response = await self._http().post(
            f"{replica.url}/v1/load_lora_adapter", json={"lora_name": handle.key, "lora_path": handle.path}
        )
        if response.status_code == 200:
            return
        message = _server_message(response)
        if response.status_code == 400 and "already been loaded" in message:
            return  # another gateway (or an earlier attempt) loaded it
        raise _AdapterRejected(f"replica {replica.url} could not load adapter {handle.key}: {message}")

    async def _unload_on(self, replica: Replica, key: str) -> None:
        try:
            response = await self._http().post(f"{replica.url}/v1/unload_lora_adapter", json={"lora_name": key})
        except httpx.HTTPError as exc:
            log.warning("adapter unload failed", extra={"replica": replica.url, "adapter": key, "error": str(exc)})
            return
        if response.status_code not in (200, 404):
            log.warning(
                "adapter unload failed",
                extra={"replica": replica.url, "adapter": key, "status": response.status_code},
            )

    async def load_adapter(self, adapter: AdapterHandle) -> None:
        """Load on every healthy replica; replicas that are down get it when they come back."""
        async with self._adapter_lock:
            targets = [r for r in self._pool.replicas.values() if r.healthy]
            if not targets:
                raise EngineUnavailable("no engine replica is healthy")
            results = await asyncio.gather(*(self._load_on(r, adapter) for r in targets), return_exceptions=True)
            rejected = [exc for exc in results if isinstance(exc, _AdapterRejected)]
            if rejected:
                # All or nothing: a task bound to it must not fail on some replicas only.
                for replica, result in zip(targets, results, strict=True):
                    if result is None:
                        await self._unload_on(replica, adapter.key)
                raise EngineError(str(rejected[0]))
            for replica, result in zip(targets, results, strict=True):
                if isinstance(result, BaseException):
                    # Unreachable now: it is synced on its next health check.
                    self._set_health(replica, False, f"{type(result).__name__}: {result}"[:_ERROR_CHARS])
            self._adapters[adapter.key] = adapter
        self._publish()

    async def unload_adapter(self, adapter: AdapterHandle) -> None:
        async with self._adapter_lock:
            self._adapters.pop(adapter.key, None)
            targets = [r for r in self._pool.replicas.values() if r.healthy]
            await asyncio.gather(*(self._unload_on(r, adapter.key) for r in targets))

    # -- generation --------------------------------------------------------------------
    def _body(self, request: GenerationRequest, replica: Replica) -> dict[str, Any]:
        return {
            "model": request.adapter.key if request.adapter else replica.served_model,
            "prompt": request.prompt_token_ids,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "structured_outputs": {"grammar": request.grammar},
            "priority": request.priority,
            "request_id": request.request_id,
        }

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Send to the least busy healthy replica; on a failure that is safe to retry, try another.

        Cancelling the caller closes the connection, and vLLM aborts a request whose client
        went away.
        """
        tried: set[str] = set()
        failure: _Attempt | None = None
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
                "generation attempt failed; another replica will be tried if one is healthy",
                extra={"request_id": request.request_id, "replica": replica.url, "reason": outcome.reason},
            )
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
        finally:
            replica.outstanding -= 1
            if not replica.removed:
                self._metrics.outstanding.labels(replica.url).set(replica.outstanding)
        if response.status_code == 200:
            return self._result(response)
        message = f"replica {replica.url}: {response.status_code} {_server_message(response)}"
        if response.status_code == 404 and request.adapter is not None:
            # The replica lost the adapter (restarted between health checks): resync it.
            self._set_health(replica, False, "adapter missing; resync pending")
            return _Attempt(True, message, "adapter_missing")
        if response.status_code in _RETRY_STATUSES:
            self._set_health(replica, False, f"answered {response.status_code}")
            return _Attempt(True, message, f"status_{response.status_code}")
        return _Attempt(False, f"engine rejected the request: {message}")

    @staticmethod
    def _result(response: httpx.Response) -> GenerationResult:
        try:
            body = response.json()
            choice = body["choices"][0]
            usage = body.get("usage") or {}
            return GenerationResult(
                text=str(choice["text"]),
                finish_reason=str(choice.get("finish_reason")),
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
            )
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise EngineError(f"engine answered an unexpected body: {type(exc).__name__}") from exc
