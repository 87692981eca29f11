"""FHIR R4 bundles from real vLLM: every shipped task with a FHIR mapping, on the random-weight
tiny Qwen3 with the real Qwen3 vocabulary (the worst case) and on the shipped demo from the
wheel (answers with content). Every bundle validates with two FHIR implementations
(tests/support/fhir.py), every reference resolves, and every resource cites its evidence by
offset and length in the note as sent; the resources are those the JSON answer maps to.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.tasks.fhir import FHIR_MEDIA_TYPE
from app.training.demo import held_out_records
from tests.conftest import shipped_task
from tests.e2e.conftest import LiveServer
from tests.support.fhir import check_bundle, derivations
from tests.test_fhir import FHIR_TASKS, _expected_evidence

pytestmark = pytest.mark.e2e

ENDPOINTS = {"ner": "ner", "relations": "relations", "form": "forms"}
AWKWARD = ['Citazione: "dolore"\\destro\tcon febbre\r\nè più forte 🙂 «ok» Cafe\u0301', "x"]
FOUND: dict[str, int] = {}


def notes(name: str, n: int) -> list[str]:
    return [record.payload["text"] for record in held_out_records(shipped_task(name), n)] + AWKWARD


def both(url: str, name: str, texts: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON answer and the FHIR bundle for the same notes (greedy: the same answers)."""
    task = shipped_task(name)
    body = {"task": name, "documents": [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)]}
    endpoint = f"{url}/v1/{ENDPOINTS[task.type]}"
    plain = httpx.post(endpoint, json=body, timeout=600)
    fhir = httpx.post(endpoint, json=body, headers={"Accept": FHIR_MEDIA_TYPE}, timeout=600)
    assert plain.status_code == 200, plain.text
    assert fhir.status_code == 200, fhir.text
    assert fhir.headers["content-type"].startswith(FHIR_MEDIA_TYPE)
    return plain.json(), fhir.json()


def check(url: str, name: str, n: int) -> int:
    texts = notes(name, n)
    plain, bundle = both(url, name, texts)
    found = check_bundle(bundle, {f"d{i}": t for i, t in enumerate(texts)})
    for document in plain["documents"]:
        cited = sorted(derivations(r)[0][1:] for r in found[document["id"]])
        assert cited == sorted(_expected_evidence(name, document)), (name, document["id"])
    return sum(len(resources) for resources in found.values())


@pytest.mark.parametrize("name", FHIR_TASKS)
def test_random_weight_answers_of_every_fhir_task_are_valid_bundles(live_server: LiveServer, name: str) -> None:
    FOUND[f"random:{name}"] = check(live_server.url, name, 4)


@pytest.mark.parametrize("name", FHIR_TASKS)
def test_the_demos_answers_of_every_fhir_task_are_valid_bundles(demo_server: LiveServer, name: str) -> None:
    FOUND[f"demo:{name}"] = check(demo_server.url, name, 6)


def test_the_demo_bundles_had_content_to_check() -> None:
    demo = {name: count for name, count in FOUND.items() if name.startswith("demo:")}
    assert len(demo) == len(FHIR_TASKS) and all(count >= 6 for count in demo.values()), FOUND
