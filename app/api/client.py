"""Client side of a running medlora service, for the CLI's `--url` modes."""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import httpx

HTTP_TIMEOUT = httpx.Timeout(3600.0, connect=30.0)
READY_TIMEOUT_S = 900.0
# Statuses that say "later", not "never": worth waiting for rather than failing the line.
RETRY_STATUSES = frozenset({429, 503})


API_KEY_ENV = "MEDLORA_API_KEY"


def auth_headers() -> dict[str, str]:
    """The caller's API key from the environment (never a flag: flags show up in `ps`)."""
    key = os.environ.get(API_KEY_ENV, "").strip()
    return {"Authorization": f"Bearer {key}"} if key else {}


class ServiceError(Exception):
    """The service refused what every request of this run would need (a key, a task list)."""


class ServiceUnavailable(ServiceError):
    """The service could not be reached or stayed unavailable through every retry."""


async def fetch_tasks(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """The served tasks (GET /v1/tasks); a refusal names its status and, for 401, the key setting."""
    response = await client.get("/v1/tasks")
    if response.status_code != 200:
        hint = f" (set {API_KEY_ENV} to a valid key)" if response.status_code == 401 else ""
        raise ServiceError(f"{client.base_url}/v1/tasks: {response.status_code} {response.text[:300]}{hint}")
    tasks: list[dict[str, Any]] = response.json()["tasks"]
    return tasks


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
