"""End-to-end servers: real `medlora serve` processes on in-process vLLM (the CPU build).

- `live_server`: a random-weight tiny Qwen3 with the real Qwen3 tokenizer and embedding size
  (151,936 rows) and a random LoRA per shipped task. Random weights are the worst case for
  the decoding guarantees under test.
- `demo_server`: what a newcomer runs. The wheel is built and installed into a folder of its
  own, and the server starts from another directory with an empty HOME, serving the shipped
  demo.

Each runs once per test session and records what its probes answered while it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from app.settings import REPO_ROOT
from app.tasks.manifests import load_tasks
from app.training.tiny_model import build_tiny_adapter
from tests.conftest import SCHEMAS_DIR, TASKS_DIR
from tests.support.forms import BIG_FORM, write_big_form
from tests.support.logscan import Sent, scan, summary
from tests.support.qwen3 import build_random_qwen3

STARTUP_TIMEOUT_S = 600


def _gateway_probe_timeout_s(probe: str) -> float:
    values = yaml.safe_load((REPO_ROOT / "helm" / "medlora" / "values.yaml").read_text(encoding="utf-8"))
    return float(values["gateway"][probe]["timeoutSeconds"])


# Probes wait as long as the chart's kubelet would: a start-up that answers within these
# never gets the pod restarted or taken out of its Service.
LIVENESS_TIMEOUT_S = _gateway_probe_timeout_s("livenessProbe")
READINESS_TIMEOUT_S = _gateway_probe_timeout_s("readinessProbe")


@dataclass(frozen=True)
class Probe:
    """One round of polling during start-up (None: refused, or no answer within the chart's timeout)."""

    at_s: float  # since the process was spawned
    livez: int | None
    livez_s: float  # how long /livez took to answer (or to fail)
    readyz: int | None
    readyz_retry_after: str | None = None
    task: int | None = None  # a task request sent while /readyz said 503
    task_type: str | None = None
    task_retry_after: str | None = None


@dataclass
class LiveServer:
    url: str
    base_dir: Path
    adapters_dir: Path | None
    log_path: Path
    startup_s: float
    probes: list[Probe] = field(default_factory=list)

    def client(self, timeout: float = 600) -> httpx.Client:
        return recording_client(self.url, timeout)


# What the e2e tests sent and were answered, and every log they made: checked for clinical text
# once the session is over (`logs_hold_no_clinical_text`).
SENT = Sent()
LOGS: list[Path] = []


def recording_client(url: str, timeout: float = 600) -> httpx.Client:
    """An httpx client that records the texts it sends and the spans it gets back."""

    def on_request(request: httpx.Request) -> None:
        if request.headers.get("content-type", "").startswith("application/json"):
            with contextlib.suppress(ValueError):
                SENT.record_body(json.loads(request.content))

    def on_response(response: httpx.Response) -> None:
        if response.headers.get("content-type", "").startswith("application/json"):
            response.read()
            with contextlib.suppress(ValueError):
                SENT.record_answer(response.json())

    return httpx.Client(base_url=url, timeout=timeout, event_hooks={"request": [on_request], "response": [on_response]})


@pytest.fixture(scope="session", autouse=True)
def logs_hold_no_clinical_text() -> Iterator[None]:
    """Every log of every server, engine and CLI run of the session: no note text, no span."""
    yield
    if report := scan(LOGS, SENT):
        pytest.fail(f"clinical text in {len(report)} log(s):\n{summary(report)}")


@dataclass(frozen=True)
class RandomModel:
    base_dir: Path
    adapters_dir: Path  # one random adapter per shipped task, at its manifest's path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def skip_unless_e2e() -> None:
    if os.environ.get("MEDLORA_SKIP_E2E") == "1":
        pytest.skip("MEDLORA_SKIP_E2E=1: end-to-end tests against vLLM skipped on request")
    try:
        import vllm  # noqa: F401
    except ImportError:
        pytest.fail("end-to-end tests need the vLLM engine: run scripts/install.sh --dev")


@pytest.fixture(scope="session")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> RandomModel:
    work = tmp_path_factory.mktemp("qwen3-random")
    base = build_random_qwen3(work / "base")
    adapters = work / "adapters"
    paths = [task.manifest.adapter.path for task in load_tasks(TASKS_DIR, SCHEMAS_DIR).values()]
    for path in [*paths, BIG_FORM]:
        # Each task its own seed: different tasks really run different adapters.
        build_tiny_adapter(base, adapters / path, seed=zlib.crc32(path.encode()) % 10_000)
    return RandomModel(base, adapters)


def _probe(url: str, started: float) -> Probe:
    def get(path: str, timeout: float) -> httpx.Response | None:
        try:
            return httpx.get(f"{url}{path}", timeout=timeout)
        except httpx.TransportError:
            return None

    at_s = time.monotonic() - started
    livez = get("/livez", LIVENESS_TIMEOUT_S)
    livez_s = time.monotonic() - started - at_s
    readyz = get("/readyz", READINESS_TIMEOUT_S)
    task: httpx.Response | None = None
    if readyz is not None and readyz.status_code == 503:
        body = {"task": "ner-it-clinical", "documents": [{"id": "d", "text": "Febbre."}]}
        try:
            task = httpx.post(f"{url}/v1/ner", json=body, timeout=READINESS_TIMEOUT_S)
        except httpx.TransportError:
            task = None
    return Probe(
        at_s,
        livez.status_code if livez else None,
        livez_s,
        readyz.status_code if readyz else None,
        readyz.headers.get("retry-after") if readyz else None,
        task.status_code if task is not None else None,
        task.json().get("type") if task is not None else None,
        task.headers.get("retry-after") if task is not None else None,
    )


def start_server(
    argv: list[str], env: dict[str, str], cwd: Path, log_path: Path, port: int
) -> tuple[subprocess.Popen[bytes], list[Probe], float]:
    """Spawn `medlora serve` and poll it until /readyz says 200; the probes and seconds it took."""
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    LOGS.append(log_path)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    probes: list[Probe] = []
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        probe = _probe(url, started)
        probes.append(probe)
        if probe.readyz == 200:
            return proc, probes, time.monotonic() - started
        if time.monotonic() - started > STARTUP_TIMEOUT_S:
            proc.kill()
            pytest.fail(f"server not ready after {STARTUP_TIMEOUT_S}s:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.25)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def server_env(work: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "MEDLORA_BATCH_DIR": str(work / "batches"),
        "MEDLORA_REVIEW_DIR": str(work / "reviews"),
        "MEDLORA_PORT": str(port),
        "MEDLORA_REQUEST_TIMEOUT_S": "300",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "PYTHONUNBUFFERED": "1",
    }


SAMPLED = "-sampled"


def tasks_with_sampled_copies(folder: Path) -> Path:
    """The shipped manifests, a copy of each sampled at temperature 1 (`<name>-sampled`,
    same schema and adapter), and the generated 140-item form (tests/support/forms.py). A
    random-weight model's greedy answer is often the shortest one (an empty list); sampling
    walks far more of each grammar."""
    folder.mkdir(parents=True)
    for path in sorted(TASKS_DIR.glob("*.yaml")):
        shutil.copy(path, folder / path.name)
        manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
        manifest["name"] += SAMPLED
        manifest["generation"] = {**manifest.get("generation", {}), "temperature": 1.0}
        (folder / f"{path.stem}{SAMPLED}.yaml").write_text(yaml.safe_dump(manifest, allow_unicode=True))
    # A 140-item form of every kind, sampled: split into item groups that each fit the context.
    write_big_form(folder, temperature=1.0)
    return folder


@pytest.fixture(scope="session")
def live_server(random_model: RandomModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    skip_unless_e2e()
    work = tmp_path_factory.mktemp("live")
    port = free_port()
    env = {
        **server_env(work, port),
        "MEDLORA_MODEL": str(random_model.base_dir),
        "MEDLORA_ADAPTERS_DIR": str(random_model.adapters_dir),
        "MEDLORA_TASKS_DIR": str(tasks_with_sampled_copies(work / "tasks")),
    }
    log_path = work / "server.log"
    proc, probes, seconds = start_server([sys.executable, "-m", "app.cli", "serve"], env, REPO_ROOT, log_path, port)
    print(f"\n[e2e] random-weight Qwen3-vocabulary server ready in {seconds:.1f}s")
    try:
        yield LiveServer(
            f"http://127.0.0.1:{port}", random_model.base_dir, random_model.adapters_dir, log_path, seconds, probes
        )
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> httpx.Client:
    """A client of the random-weight Qwen3-vocabulary server."""
    return live_server.client()


@pytest.fixture(scope="module")
def tasks(client: httpx.Client) -> dict[str, dict[str, Any]]:
    """That server's tasks as `GET /v1/tasks` describes them, by name."""
    return {t["name"]: t for t in client.get("/v1/tasks").json()["tasks"]}


@dataclass(frozen=True)
class WheelInstall:
    site: Path  # the folder the wheel was installed into (on PYTHONPATH, nothing else of the checkout)
    elsewhere: Path  # a working directory outside the checkout
    home: Path  # an empty HOME: no cache of any kind

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.site), "HOME": str(self.home)}


@pytest.fixture(scope="session")
def wheel_install(tmp_path_factory: pytest.TempPathFactory) -> WheelInstall:
    """`pip wheel .` then `pip install` of that wheel (no dependencies: they are this venv's)."""
    work = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(REPO_ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = (work / "dist").glob("medlora-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(work / "site"), str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    install = WheelInstall(work / "site", work / "elsewhere", work / "home")
    install.elsewhere.mkdir()
    install.home.mkdir()
    return install


@pytest.fixture(scope="session")
def demo_server(wheel_install: WheelInstall, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The default `medlora serve` (the shipped demo), run from the installed wheel."""
    skip_unless_e2e()
    work = tmp_path_factory.mktemp("demo")
    port = free_port()
    env = {**server_env(work, port), **wheel_install.env()}
    log_path = work / "server.log"
    argv = [sys.executable, "-m", "app.cli", "serve"]
    proc, probes, seconds = start_server(argv, env, wheel_install.elsewhere, log_path, port)
    print(f"\n[e2e] shipped demo, installed from the wheel, ready in {seconds:.1f}s (empty HOME)")
    try:
        base = wheel_install.site / "app" / "data" / "demo" / "tiny-qwen3-demo"
        yield LiveServer(f"http://127.0.0.1:{port}", base, None, log_path, seconds, probes)
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "Debian's chromium and chromium-driver: scripts/install.sh --dev installs them"
    options = Options()
    options.binary_location = chromium
    # Closed network: no background connections, no component updates, a fresh profile.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1100",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    browser.set_page_load_timeout(60)
    try:
        yield browser
    finally:
        browser.quit()
