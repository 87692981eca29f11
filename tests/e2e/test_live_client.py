"""A client generated from the service's own `openapi.json` by a real generator
(openapi-python-client, as an integrator would run it) works against the live service on real
vLLM: NER, relations, a form, a batch job from upload to output, and a problem read back as its
typed model. If the document and the service disagree, generated code is where it shows."""

from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import LiveServer

pytestmark = pytest.mark.e2e

NOTE = "Terapia: amoxicillina 1 g per os ogni 8 ore per 7 giorni. Febbre 38,5 °C, dispnea da 3 giorni, SpO2 91%."


GENERATE_OPTIONS = ("--output-path", "medlora_client", "--meta", "none")


def generate(spec: dict[str, Any], work: Path) -> Any:
    (work / "openapi.json").write_text(json.dumps(spec))
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        [str(bin_dir / "openapi-python-client"), *("generate", "--path", "openapi.json"), *GENERATE_OPTIONS],
        cwd=work,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Every operation came out: a warning means a piece of the contract the generator could not read.
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
    sys.path.insert(0, str(work))
    try:
        return importlib.import_module("medlora_client")
    finally:
        sys.path.remove(str(work))


def test_a_generated_client_annotates_runs_a_batch_and_reads_problems(
    live_server: LiveServer, client: httpx.Client, tmp_path: Path
) -> None:
    package = generate(client.get("/openapi.json").json(), tmp_path)
    from medlora_client import Client  # type: ignore[import-not-found]
    from medlora_client.api.batch import (  # type: ignore[import-not-found]
        create_batch_v1_batches_post,
        file_content_v1_files_file_id_content_get,
        retrieve_batch_v1_batches_batch_id_get,
        upload_file_v1_files_post,
    )
    from medlora_client.api.tasks import (  # type: ignore[import-not-found]
        forms_v1_forms_post,
        ner_v1_ner_post,
        relations_v1_relations_post,
    )
    from medlora_client.models import (  # type: ignore[import-not-found]
        BatchCreate,
        BatchCreateEndpoint,
        BodyUploadFileV1FilesPost,
        CompletionWindow,
        DocumentIn,
        FormRequest,
        FormRequestTask,
        NerRequest,
        NerRequestTask,
        Problem,
        Purpose,
        RelationsRequest,
        RelationsRequestTask,
    )
    from medlora_client.types import File  # type: ignore[import-not-found]

    assert package.__name__ == "medlora_client"
    api = Client(base_url=live_server.url, timeout=httpx.Timeout(600.0), raise_on_unexpected_status=True)
    docs = [DocumentIn(id="d1", text=NOTE)]

    ner = ner_v1_ner_post.sync(client=api, body=NerRequest(task=NerRequestTask("ner-it-clinical"), documents=docs))
    assert ner.task == "ner-it-clinical" and ner.documents[0].id == "d1"
    for entity in ner.documents[0].entities:
        assert NOTE[entity.start : entity.end] == entity.text

    relations = relations_v1_relations_post.sync(
        client=api, body=RelationsRequest(task=RelationsRequestTask("re-it-medication"), documents=docs)
    )
    ids = {e.id for e in relations.documents[0].entities}
    assert all(r.head in ids and r.tail in ids for r in relations.documents[0].relations)

    form = forms_v1_forms_post.sync(
        client=api, body=FormRequest(task=FormRequestTask("crf-it-dyspnea"), documents=docs)
    )
    items = form.documents[0].items
    assert [i.name for i in items][:3] == ["visit_date", "age", "sex"] and all(
        i.status in ("filled", "unknown") for i in items
    )

    # A problem comes back as the typed Problem, its type one of the documented URNs.
    duplicate = ner_v1_ner_post.sync(
        client=api,
        body=NerRequest(task=NerRequestTask("ner-it-clinical"), documents=[DocumentIn(id="x", text="a")] * 2),
    )
    assert isinstance(duplicate, Problem)
    assert duplicate.type_.value == "urn:medlora:problem:duplicate-id" and duplicate.status == 422
    missing = retrieve_batch_v1_batches_batch_id_get.sync(client=api, batch_id="batch-000000000000000000000000")
    assert isinstance(missing, Problem) and missing.type_.value == "urn:medlora:problem:not-found"

    # A batch job end to end, every call through generated code.
    lines = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/ner",
            "body": {"task": "ner-it-clinical", "documents": [{"id": "d", "text": f"{NOTE} ({i})"}]},
        }
        for i in range(3)
    ]
    payload = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = upload_file_v1_files_post.sync(
        client=api,
        body=BodyUploadFileV1FilesPost(
            file=File(payload=io.BytesIO(payload), file_name="requests.jsonl"), purpose=Purpose.BATCH
        ),
    )
    assert uploaded.bytes_ == len(payload) and uploaded.purpose == "batch"
    batch = create_batch_v1_batches_post.sync(
        client=api,
        body=BatchCreate(
            input_file_id=uploaded.id,
            endpoint=BatchCreateEndpoint("/v1/ner"),
            completion_window=CompletionWindow("24h"),
        ),
    )
    deadline = time.monotonic() + 600
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        assert time.monotonic() < deadline, batch
        time.sleep(1)
        batch = retrieve_batch_v1_batches_batch_id_get.sync(client=api, batch_id=batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 3 and batch.request_counts.total == 3
    content = file_content_v1_files_file_id_content_get.sync_detailed(client=api, file_id=batch.output_file_id)
    out = [json.loads(line) for line in content.content.decode().splitlines()]
    assert sorted(line["custom_id"] for line in out) == ["c0", "c1", "c2"]
    assert all(line["response"]["status_code"] == 200 for line in out)
