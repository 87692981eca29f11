"""The volume run's documents through real vLLM, over HTTP: a share of what
tests/test_grammar_volume.py walks in process (MEDLORA_LIVE_VOLUME_DOCS per task type, default
32, the same seeded generator: CRLF, NFD and stray combining marks, emoji and astral
characters, zero-width characters, JSON-hostile characters, numbers in every notation, notes
near and past the chunk size, repeated substrings), sent several to a request to the
random-weight tiny Qwen3 with the real Qwen3 vocabulary, sampled at temperature 1 (the
`-sampled` copies: a random model's greedy answer is mostly the shortest). Every response is
checked for the same guarantees (tests/support/volume.py `check_response`). A request that
fails is sent again one document at a time, so that each failure names its document.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.conftest import shipped_task
from tests.e2e.conftest import SAMPLED
from tests.support.documents import TYPES, volume_documents
from tests.support.volume import ENDPOINTS, check_response

pytestmark = pytest.mark.e2e

# A share the suite's time allows (relations, sampled, took 290 s for 100 on 2 cores).
DOCS = int(os.environ.get("MEDLORA_LIVE_VOLUME_DOCS", "") or 32)
PER_REQUEST = 16  # of MEDLORA_MAX_DOCUMENTS' 64: several requests per task, each a few generations deep


def _post(client: httpx.Client, name: str, items: list[dict[str, Any]]) -> httpx.Response:
    task = shipped_task(name)
    body = {"task": name + SAMPLED, task.kind.items_field: items}
    return client.post(f"/v1/{ENDPOINTS[task.type]}", json=body)


@pytest.mark.parametrize("kind", list(TYPES))
def test_generated_documents_keep_every_guarantee_on_real_vllm(client: httpx.Client, kind: str) -> None:
    failures: Counter[str] = Counter()
    examples: dict[str, str] = {}
    returned: Counter[str] = Counter()
    docs = volume_documents(TYPES[kind], DOCS)
    for name in TYPES[kind]:
        task = shipped_task(name)
        items = [{"id": f"d{index}", **payload} for index, doc_task, payload in docs if doc_task == name]
        for at in range(0, len(items), PER_REQUEST):
            batch = items[at : at + PER_REQUEST]
            r = _post(client, name, batch)
            answered = [(batch, r)]
            if r.status_code != 200:
                answered = [([item], _post(client, name, [item])) for item in batch]
            for sent, response in answered:
                if response.status_code != 200:
                    found = [(f"http_{response.status_code}", str(response.json().get("detail")))]
                else:
                    found = check_response(task, sent, response.json(), returned, served_as=name + SAMPLED)
                for failure_kind, detail in found:
                    failures[failure_kind] += 1
                    examples.setdefault(failure_kind, f"{name}: {detail[:300]} items={sent!r}"[:1500])
    print(f"\n[e2e] volume {kind}: {len(docs)} documents, returned {json.dumps(dict(returned))}")
    assert not failures, "\n".join(f"{k}: {n}\n  {examples[k]}" for k, n in failures.most_common())
