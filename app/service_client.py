"""Client side of a running medlora service, for the CLI's `--url` modes."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx

HTTP_TIMEOUT = httpx.Timeout(3600.0, connect=30.0)
READY_TIMEOUT_S = 900.0
# Statuses that say "later", not "never": worth waiting for rather than failing the line.
RETRY_STATUSES = frozenset({429, 503})


class ServiceUnavailable(Exception):
    """The service could not be reached or stayed unavailable through every retry."""


async def wait_ready(client: httpx.AsyncClient, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            response = await client.get("/readyz")
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"cannot reach {client.base_url}: {exc}") from exc
        if response.status_code == 200:
            return
        status = response.json().get("status") if response.headers.get("content-type", "").endswith("json") else None
        if status == "failed" or time.monotonic() > deadline:
            raise ServiceUnavailable(f"{client.base_url} is not ready: {response.text[:500]}")
        await asyncio.sleep(2)


async def post_with_retries(
    client: httpx.AsyncClient,
    path: str,
    body: dict[str, Any],
    *,
    request_id: str,
    attempts: int = 6,
    max_wait_s: float = 60.0,
) -> httpx.Response:
    """POST an idempotent task request, retrying connection failures, 429 and 503.

    Safe to repeat because a task request changes nothing on the server. Other statuses
    are returned as they are: they belong to this request, not to the service's health.
    """
    delay = 1.0
    for attempt in range(1, attempts + 1):
        try:
            response = await client.post(path, json=body, headers={"X-Request-ID": request_id})
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            if attempt == attempts:
                raise ServiceUnavailable(f"{client.base_url}{path}: {type(exc).__name__}: {exc}") from exc
            wait = delay
        else:
            if response.status_code not in RETRY_STATUSES:
                return response
            if attempt == attempts:
                raise ServiceUnavailable(
                    f"{client.base_url}{path}: still {response.status_code} after {attempts} attempts"
                )
            retry_after = response.headers.get("retry-after", "")
            wait = float(retry_after) if retry_after.isdigit() else delay
        await asyncio.sleep(min(wait, max_wait_s) * (1 + random.random() / 4))
        delay = min(delay * 2, max_wait_s)
    raise AssertionError("unreachable")
