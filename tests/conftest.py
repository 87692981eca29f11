from __future__ import annotations

# hypothesis is imported up front: imported late (by its pytest plugin's summary hook), CPython
# 3.11.7's AST rewriter crashed with "AST constructor recursion depth mismatch" after asyncio runs.
import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis  # noqa: F401
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from app.main import app_for
from app.settings import REPO_ROOT, Settings
from app.tasks.manifests import load_tasks
from app.tasks.prompts import PromptRenderer
from app.tasks.service import Service, build_service
from app.tasks.types.base import Task
from tests.fakes import FAKE_BASE, ByteLogprob, FakeEngine, FakeTokenizer, Responder, write_fake_adapter


@pytest.fixture(autouse=True)
def _stores_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway a test builds without naming its stores keeps them in a temporary folder, never
    in the home directory of whoever runs the suite."""
    for name in ("MEDLORA_BATCH_DIR", "MEDLORA_REVIEW_DIR"):
        monkeypatch.setenv(name, str(tmp_path_factory.mktemp(name.lower())))


TASKS_DIR = REPO_ROOT / "adapters"
SCHEMAS_DIR = REPO_ROOT / "schemas"
# What ships: the tests that list it fail when a task is added or lost without them.
SHIPPED_TASKS = (
    "ner-it-clinical",
    "ner-en-clinical",
    "qa-it-clinical",
    "classify-it-note-type",
    "re-it-medication",
    "re-en-medication",
    "crf-it-dyspnea",
    "deid-clinical",
)


@functools.cache
def _shipped_tasks() -> dict[str, Task]:
    return load_tasks(TASKS_DIR, SCHEMAS_DIR)


def shipped_task(name: str) -> Task:
    """A shipped task as loaded from adapters/ (loaded once per test process)."""
    return _shipped_tasks()[name]


@pytest.fixture
def fake_adapters_dir(tmp_path: Path) -> Path:
    root = tmp_path / "adapters"
    for task in load_tasks(TASKS_DIR, SCHEMAS_DIR).values():
        write_fake_adapter(root / task.manifest.adapter.path)
    return root


FakeServiceFactory = Callable[..., tuple[Service, FakeEngine]]


@pytest.fixture
def make_fake_service(fake_adapters_dir: Path) -> FakeServiceFactory:
    def make(
        respond: Responder, *, delay_s: float = 0.0, logprob: ByteLogprob | None = None, **settings_overrides: object
    ) -> tuple[Service, FakeEngine]:
        engine = FakeEngine(respond, delay_s=delay_s, logprob=logprob)
        defaults = {
            "tasks_dir": TASKS_DIR,
            "batch_dir": fake_adapters_dir.parent / "batches",
            "review_dir": fake_adapters_dir.parent / "reviews",
        }
        settings = Settings(
            model=FAKE_BASE,
            adapters_dir=fake_adapters_dir,
            **{**defaults, **settings_overrides},  # type: ignore[arg-type]
        )
        service = build_service(
            settings, engine=engine, renderer=PromptRenderer(FakeTokenizer()), metrics_registry=CollectorRegistry()
        )
        return service, engine

    return make


@pytest.fixture
def client_for(make_fake_service: FakeServiceFactory) -> Iterator[Callable[..., tuple[TestClient, FakeEngine]]]:
    """A started TestClient (lifespan run, service ready) around a fake engine."""
    clients: list[TestClient] = []

    def make(respond: Responder, **kwargs: object) -> tuple[TestClient, FakeEngine]:
        service, engine = make_fake_service(respond, **kwargs)
        client = TestClient(app_for(service), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.01)
        return client, engine

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture(scope="session")
def lltok() -> Any:
    """llguidance's view of the real Qwen3 tokenizer (tests/support/qwen3.py)."""
    from llguidance.hf import from_tokenizer

    from tests.support.qwen3 import qwen3_tokenizer

    return from_tokenizer(qwen3_tokenizer())


def accepts(lltok: Any, grammar: str, output: str) -> bool:
    """Whether llguidance compiles `grammar` and accepts `output` (tokenized by Qwen3) as complete."""
    import llguidance

    matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    ok = matcher.consume_tokens(lltok.tokenize_str(output))
    return bool(ok and not matcher.is_error() and matcher.is_accepting())


@pytest.fixture(scope="session")
def qwen3_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny Qwen3 with the real Qwen3 tokenizer and embedding size, built once."""
    from tests.support.qwen3 import build_random_qwen3

    return build_random_qwen3(tmp_path_factory.mktemp("qwen3") / "base")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`volume` tests run only when the -m expression names them (`-m volume`): not in the
    default run, nor in `-m "not e2e"`."""
    if "volume" in (config.getoption("markexpr", "") or ""):
        return
    skip = pytest.mark.skip(reason="volume test: run with -m volume (and MEDLORA_VOLUME_DOCS)")
    for item in items:
        if item.get_closest_marker("volume") is not None:
            item.add_marker(skip)
