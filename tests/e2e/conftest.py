"""One real `medlora serve` per test session: embedded tiny Qwen3, in-process vLLM (CPU build).

The server is the same command a user runs; tests talk to it over HTTP on loopback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.settings import REPO_ROOT
from app.tasks.service import EMBEDDED_CACHE_NAME

STARTUP_TIMEOUT_S = 600


@dataclass
class LiveServer:
    url: str
    cache_dir: Path
    log_path: Path
    startup_s: float

    def client(self, timeout: float = 600) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    @property
    def base_dir(self) -> Path:
        return self.cache_dir / EMBEDDED_CACHE_NAME / "base"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    if os.environ.get("MEDLORA_SKIP_E2E") == "1":
        pytest.skip("MEDLORA_SKIP_E2E=1: end-to-end tests against vLLM skipped on request")
    try:
        import vllm  # noqa: F401
    except ImportError:
        pytest.fail("end-to-end tests need the vLLM engine: run scripts/install.sh --dev")
    work = tmp_path_factory.mktemp("live")
    port = _free_port()
    env = {
        **os.environ,
        "MEDLORA_CACHE_DIR": str(work / "cache"),
        "MEDLORA_BATCH_DIR": str(work / "batches"),
        # Random weights: the worst case for the decoding guarantees under test here.
        "MEDLORA_EMBEDDED_ADAPTERS": "random",
        "MEDLORA_PORT": str(port),
        "MEDLORA_REQUEST_TIMEOUT_S": "300",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    log_path = work / "server.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = started + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                r = httpx.get(f"{url}/readyz", timeout=5)
                if r.status_code == 200:
                    break
                if r.json().get("status") == "failed":
                    pytest.fail(f"server startup failed: {r.json()}\n{log_path.read_text()[-4000:]}")
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {STARTUP_TIMEOUT_S}s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        server = LiveServer(url, work / "cache", log_path, time.monotonic() - started)
        print(f"\n[e2e] medlora serve ready in {server.startup_s:.1f}s (model build + engine start + adapters)")
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
