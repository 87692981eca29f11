"""The HTTP server process: uvicorn, with a drain on SIGTERM and an exit when the engine dies.

On SIGTERM (or Ctrl-C) the gateway keeps its port open and drains: /readyz says 503 so the
orchestrator stops routing to it, new task requests get 503 `not-ready` (retryable: another
replica takes them), requests already running finish, and batch jobs start no new line.
When nothing runs any more, or the grace period is over (what still runs is then answered
with a retryable 503), the server stops; unfinished batch jobs resume at the next start.

A failed start or a dead engine cannot recover in this process: the server drains what it
can and exits with EXIT_FAILED, so that Kubernetes (or systemd) starts a fresh one. /livez
says 503 meanwhile.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from app.settings import ConfigurationError, Settings
from app.tasks.service import Service

log = logging.getLogger("medlora.server")

EXIT_FAILED = 3  # the service failed (start-up or engine): restart it
_DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: Service, grace_s: float):
        super().__init__(config)
        self.service = service
        self.grace_s = grace_s
        self.drain_started: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_started is None and sig in _DRAIN_SIGNALS:
            self._drain(f"signal {signal.Signals(sig).name}")
            return
        super().handle_exit(sig, frame)  # a second signal: stop now

    def _drain(self, why: str) -> None:
        self.drain_started = time.monotonic()
        self.service.begin_drain()
        log.info("shutting down", extra={"reason": why, "in_flight": self.service.in_flight, "grace_s": self.grace_s})

    async def on_tick(self, counter: int) -> bool:
        if self.drain_started is None and self.service.failure is not None:
            self._drain("the service failed")
        if self.drain_started is not None and not self.should_exit:
            if self.service.in_flight == 0:
                self.should_exit = True
            elif time.monotonic() - self.drain_started >= self.grace_s:
                log.warning("grace period over: stopping what still runs", extra={"in_flight": self.service.in_flight})
                self.service.stop_in_flight()
                self.should_exit = self.service.in_flight == 0
        return await super().on_tick(counter)


def check_exposure(settings: Settings, auth_enabled: bool) -> None:
    """Refuse to open the service beyond this machine without keys, unless told to."""
    if auth_enabled or settings.allow_unauthenticated or _loopback(settings.host):
        return
    raise ConfigurationError(
        f"refusing to serve on {settings.host!r} without API keys: anyone who can reach it could read batch "
        "files and change adapters. Set MEDLORA_API_KEYS_FILE / MEDLORA_ADMIN_KEYS_FILE (see `medlora hash-key`), "
        "bind to 127.0.0.1, or set MEDLORA_ALLOW_UNAUTHENTICATED=true behind a network policy of your own."
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(app: FastAPI, service: Service, settings: Settings) -> int:
    """Run the gateway until it is stopped; the process exit code."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,  # the gateway logs every request itself, without bodies
        # The drain already waited for requests in flight; what is left are idle connections.
        timeout_graceful_shutdown=5,
    )
    server = GatewayServer(config, service, settings.shutdown_grace_s)
    server.run()
    if service.failure is not None:
        log.error("exiting after a failure", extra={"error": service.failure})
        return EXIT_FAILED
    return 0
