"""Remote engine replicas: the base URLs themselves, or every address of a DNS name."""

from __future__ import annotations

import asyncio
import logging
import socket

import httpx

log = logging.getLogger("medlora.engine")


async def _resolve_one(url: str) -> list[str]:
    parsed = httpx.URL(url)
    port = parsed.port or 80
    infos = await asyncio.get_running_loop().getaddrinfo(parsed.host, port, type=socket.SOCK_STREAM)
    addresses = {str(info[4][0]) for info in infos}
    # A dual-stack Service lists each pod once per family: keep one family.
    v4 = {a for a in addresses if ":" not in a}
    path = parsed.raw_path.decode().rstrip("/")
    return [f"{parsed.scheme}://{f'[{a}]' if ':' in a else a}:{port}{path}" for a in sorted(v4 or addresses)]


async def resolve_replicas(urls: list[str], discovery: str, known: list[str] | None = None) -> list[str]:
    """Replica base URLs: the URLs themselves, or every address their host names resolve to.

    A name that fails to resolve keeps the replicas it had (`known`, matched by port and
    path), so a DNS hiccup does not empty the pool; the other names are still followed.
    """
    if discovery == "static":
        return list(urls)
    found: list[str] = []
    for url in urls:
        try:
            found += await _resolve_one(url)
        except OSError as exc:
            log.warning("engine discovery failed", extra={"url": url, "error": str(exc)})
            parsed = httpx.URL(url)
            found += [k for k in known or [] if httpx.URL(k).port == (parsed.port or 80)]
    return list(dict.fromkeys(found))
