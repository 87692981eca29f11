"""API keys: hashed key files, Bearer auth on /v1, admin keys for adapter administration."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api import auth
from app.api.auth import KeyFileError, hash_key, parse_key_file
from app.main import app_for
from app.settings import REPO_ROOT
from tests.fakes import ner_output

READER_KEY = "reader-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
NER_BODY = {"task": "ner-it-clinical", "documents": [{"id": "d1", "text": "febbre alta"}]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def key_files(tmp_path: Path) -> tuple[Path, Path]:
    api = tmp_path / "api-keys"
    admin = tmp_path / "admin-keys"
    api.write_text(f"# readers\nward-7 {hash_key(READER_KEY)}\n\n")
    admin.write_text(f"ops {hash_key(ADMIN_KEY)}\n")
    return api, admin


def test_hash_key_is_the_sha256_hex_of_the_key() -> None:
    assert hash_key("abc") == hashlib.sha256(b"abc").hexdigest()
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("alice deadbeef\n", 1),  # digest too short
        (f"# ok\nalice {'A' * 64}\n", 2),  # upper case is not what sha256sum prints
        (f"alice {'a' * 64} extra\n", 1),
        (f"alice {'a' * 64}\nbob {'a' * 64}\n", 2),  # the same key twice
    ],
)
def test_malformed_key_file_names_the_line_and_not_its_content(text: str, line: int) -> None:
    with pytest.raises(KeyFileError) as caught:
        parse_key_file(text, "keys")
    assert f"keys:{line}:" in str(caught.value)
    assert "alice" not in str(caught.value)


def test_without_key_files_every_endpoint_is_open(client_for: Any) -> None:
    client, _ = client_for(lambda r: ner_output())
    assert client.post("/v1/ner", json=NER_BODY).status_code == 200
    assert client.delete("/v1/adapters/x/1").status_code == 404  # reached the handler


def test_api_keys_guard_every_v1_endpoint(client_for: Any, key_files: tuple[Path, Path]) -> None:
    api, admin = key_files
    client, _ = client_for(lambda r: ner_output(), api_keys_file=api, admin_keys_file=admin)
    guarded = [
        ("POST", "/v1/ner", NER_BODY),
        ("POST", "/v1/qa", {"task": "qa-it-clinical", "items": []}),
        ("POST", "/v1/classify", {"task": "classify-it-note-type", "documents": []}),
        ("GET", "/v1/tasks", None),
        ("GET", "/v1/adapters", None),
        ("GET", "/v1/files", None),
        ("POST", "/v1/files", None),
        ("GET", "/v1/files/file-x", None),
        ("GET", "/v1/files/file-x/content", None),
        ("DELETE", "/v1/files/file-x", None),
        ("GET", "/v1/batches", None),
        ("POST", "/v1/batches", {"input_file_id": "file-x", "endpoint": "/v1/ner", "completion_window": "24h"}),
        ("GET", "/v1/batches/batch-x", None),
        ("POST", "/v1/batches/batch-x/cancel", None),
    ]
    for method, path, body in guarded:
        for headers in ({}, bearer("wrong-key-0123456789"), {"Authorization": f"Basic {READER_KEY}"}):
            r = client.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (method, path, headers)
            assert r.json()["type"] == "urn:medlora:problem:unauthorized"
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.headers["www-authenticate"].startswith("Bearer")
    r = client.post("/v1/ner", json=NER_BODY, headers=bearer(READER_KEY))
    assert r.status_code == 200
    assert r.json()["documents"][0]["id"] == "d1"
    assert client.get("/v1/tasks", headers=bearer(READER_KEY)).status_code == 200
    # An admin key is also a client key.
    assert client.post("/v1/ner", json=NER_BODY, headers=bearer(ADMIN_KEY)).status_code == 200


def test_health_and_metrics_stay_open_for_probes_and_scrapers(client_for: Any, key_files: tuple[Path, Path]) -> None:
    api, admin = key_files
    client, _ = client_for(lambda r: ner_output(), api_keys_file=api, admin_keys_file=admin)
    for path in ("/livez", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200, path


def test_adapter_administration_needs_an_admin_key(client_for: Any, key_files: tuple[Path, Path]) -> None:
    api, admin = key_files
    client, _ = client_for(lambda r: ner_output(), api_keys_file=api, admin_keys_file=admin)
    switch = {"name": "ner-it-clinical", "version": "1"}
    calls = [
        ("DELETE", "/v1/adapters/x/1", None),
        ("POST", "/v1/adapters", {"name": "x", "version": "1", "path": "/nope"}),
        ("PUT", "/v1/tasks/ner-it-clinical/adapter", switch),
    ]
    for method, path, body in calls:
        r = client.request(method, path, json=body)
        assert r.status_code == 401, (method, path)
        r = client.request(method, path, json=body, headers=bearer(READER_KEY))
        assert r.status_code == 403, (method, path)
        assert r.json()["type"] == "urn:medlora:problem:forbidden"
    assert client.delete("/v1/adapters/x/1", headers=bearer(ADMIN_KEY)).status_code == 404
    r = client.put("/v1/tasks/ner-it-clinical/adapter", json=switch, headers=bearer(ADMIN_KEY))
    assert r.status_code == 200


def test_admin_keys_alone_still_close_every_v1_endpoint(client_for: Any, key_files: tuple[Path, Path]) -> None:
    _, admin = key_files
    client, _ = client_for(lambda r: ner_output(), admin_keys_file=admin)
    assert client.post("/v1/ner", json=NER_BODY).status_code == 401
    assert client.get("/v1/files").status_code == 401
    assert client.post("/v1/ner", json=NER_BODY, headers=bearer(ADMIN_KEY)).status_code == 200
    assert client.delete("/v1/adapters/x/1").status_code == 401
    assert client.delete("/v1/adapters/x/1", headers=bearer(ADMIN_KEY)).status_code == 404


def test_api_keys_without_admin_keys_lock_administration(client_for: Any, key_files: tuple[Path, Path]) -> None:
    api, _ = key_files
    client, _ = client_for(lambda r: ner_output(), api_keys_file=api)
    assert client.delete("/v1/adapters/x/1", headers=bearer(READER_KEY)).status_code == 403


def test_rotated_key_file_takes_effect_without_restart(
    client_for: Any, key_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "_RECHECK_S", 0.0)
    api, admin = key_files
    client, _ = client_for(lambda r: ner_output(), api_keys_file=api, admin_keys_file=admin)
    new_key = "rotated-key-0123456789abcdef"
    api.write_text(f"ward-7 {hash_key(new_key)}\n")
    os.utime(api, (1, 1))  # a different mtime even on coarse-grained file systems
    assert client.post("/v1/ner", json=NER_BODY, headers=bearer(READER_KEY)).status_code == 401
    assert client.post("/v1/ner", json=NER_BODY, headers=bearer(new_key)).status_code == 200


def test_a_malformed_key_file_update_revokes_rather_than_keeping_old_keys(
    client_for: Any, key_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "_RECHECK_S", 0.0)
    api, admin = key_files
    leaked = "leaked-key-0123456789abcdef"
    api.write_text(f"ward-7 {hash_key(READER_KEY)}\nlab {hash_key(leaked)}\n")
    client, _ = client_for(lambda r: ner_output(), api_keys_file=api, admin_keys_file=admin)
    assert client.post("/v1/ner", json=NER_BODY, headers=bearer(leaked)).status_code == 200
    # The update that revokes the leaked key has a typo: the leaked key must not keep working.
    api.write_text(f"ward-7 {hash_key(READER_KEY)}\nlab-new not-a-digest\n")
    os.utime(api, (2, 2))
    assert client.post("/v1/ner", json=NER_BODY, headers=bearer(leaked)).status_code == 401
    assert client.post("/v1/ner", json=NER_BODY, headers=bearer(READER_KEY)).status_code == 401  # fail closed
    assert client.post("/v1/ner", json=NER_BODY, headers=bearer(ADMIN_KEY)).status_code == 200  # other file
    api.write_text(f"ward-7 {hash_key(READER_KEY)}\n")  # fixed
    os.utime(api, (3, 3))
    assert client.post("/v1/ner", json=NER_BODY, headers=bearer(READER_KEY)).status_code == 200
    assert client.post("/v1/ner", json=NER_BODY, headers=bearer(leaked)).status_code == 401


def test_keys_never_reach_the_logs(
    client_for: Any, key_files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    api, admin = key_files
    client, _ = client_for(lambda r: ner_output(), api_keys_file=api, admin_keys_file=admin)
    with caplog.at_level(logging.DEBUG):
        client.post("/v1/ner", json=NER_BODY, headers=bearer(READER_KEY))
        client.post("/v1/ner", json=NER_BODY, headers=bearer("wrong-key-0123456789"))
    logged = caplog.text + json.dumps([r.__dict__ for r in caplog.records], default=str)
    assert READER_KEY not in logged
    assert "wrong-key-0123456789" not in logged


def test_serve_refuses_a_malformed_key_file_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "keys"
    bad.write_text("alice 1234\n")
    env = {**os.environ, "MEDLORA_API_KEYS_FILE": str(bad), "MEDLORA_MODEL": "/nonexistent-model"}
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert f"invalid API key configuration: cannot use key file {bad}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_hash_key_command_writes_a_line_the_service_accepts(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "hash-key", "--name", "ward-7"],
        input=READER_KEY + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert parse_key_file(proc.stdout, "stdout") == {hash_key(READER_KEY): "ward-7"}
    generated = subprocess.run(
        [sys.executable, "-m", "app.cli", "hash-key", "--name", "ops", "--generate"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    new_key = generated.stderr.strip()
    assert len(new_key) >= 32
    assert parse_key_file(generated.stdout, "stdout") == {hash_key(new_key): "ops"}
    short = subprocess.run(
        [sys.executable, "-m", "app.cli", "hash-key", "--name", "x"], input="short\n", capture_output=True, text=True
    )
    assert short.returncode == 2


def test_cli_clients_take_their_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.api.client import auth_headers

    monkeypatch.delenv("MEDLORA_API_KEY", raising=False)
    assert auth_headers() == {}
    monkeypatch.setenv("MEDLORA_API_KEY", f" {READER_KEY}\n")
    assert auth_headers() == {"Authorization": f"Bearer {READER_KEY}"}


def test_anonymous_bodies_are_refused_before_they_are_read(client_for: Any, key_files: tuple[Path, Path]) -> None:
    api, admin = key_files
    client, engine = client_for(lambda r: ner_output(), api_keys_file=api, admin_keys_file=admin)
    # Malformed JSON: 401, not a 422 that would mean the body was parsed for an anonymous caller.
    r = client.post("/v1/ner", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 401
    r = client.post("/v1/files", files={"file": ("x.jsonl", b"{}\n")}, data={"purpose": "batch"})
    assert r.status_code == 401
    assert not engine.calls


def test_a_chunked_body_over_the_limit_is_cut_off_with_413(make_fake_service: Any) -> None:
    """Raw ASGI, no Content-Length: the limit is enforced while the body streams in."""
    service, engine = make_fake_service(lambda r: ner_output(), max_documents=1, max_document_chars=100)
    app = app_for(service)
    chunks = [b'{"task": "ner-it-clinical", "documents": [{"id": "d", "text": "', *[b"x" * 1024] * 200, b'"}]}']
    read = [0]

    async def scenario() -> list[dict[str, Any]]:
        await service.start()
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            read[0] += 1
            return {"type": "http.request", "body": chunks[read[0] - 1], "more_body": read[0] < len(chunks)}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/v1/ner", "raw_path": b"/v1/ner", "query_string": b"",
            "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000), "root_path": "",
        }  # fmt: skip
        await asyncio.wait_for(app(scope, receive, send), timeout=5)
        return sent

    sent = asyncio.run(scenario())
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["type"] == "urn:medlora:problem:payload-too-large"
    assert len(sent) == 2  # nothing the app said afterwards reached the client
    assert read[0] < len(chunks)  # stopped reading at the limit (~70 KB of 200 KB)
    assert not engine.calls


def test_batch_files_and_jobs_belong_to_the_key_that_made_them(
    client_for: Any, key_files: tuple[Path, Path], tmp_path: Path
) -> None:
    api, admin = key_files
    other = "other-ward-key-0123456789"
    api.write_text(f"ward-7 {hash_key(READER_KEY)}\nward-9 {hash_key(other)}\n")
    client, _ = client_for(lambda r: ner_output(), api_keys_file=api, admin_keys_file=admin)
    line = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/ner", "body": NER_BODY})
    up = client.post(
        "/v1/files", files={"file": ("in.jsonl", (line + "\n").encode())}, data={"purpose": "batch"},
        headers=bearer(READER_KEY),
    )  # fmt: skip
    assert up.status_code == 200, up.text
    file_id = up.json()["id"]
    job = client.post(
        "/v1/batches",
        json={"input_file_id": file_id, "endpoint": "/v1/ner", "completion_window": "24h"},
        headers=bearer(READER_KEY),
    )
    assert job.status_code == 200, job.text
    batch_id = job.json()["id"]
    deadline = time.monotonic() + 10
    while (b := client.get(f"/v1/batches/{batch_id}", headers=bearer(READER_KEY)).json())["status"] != "completed":
        assert time.monotonic() < deadline, b
        time.sleep(0.05)
    output = b["output_file_id"]
    # The other ward sees none of it, as if it did not exist.
    for path in (f"/v1/files/{file_id}", f"/v1/files/{file_id}/content", f"/v1/files/{output}/content",
                 f"/v1/batches/{batch_id}"):  # fmt: skip
        assert client.get(path, headers=bearer(other)).status_code == 404, path
    assert client.get("/v1/files", headers=bearer(other)).json()["data"] == []
    assert client.get("/v1/batches", headers=bearer(other)).json()["data"] == []
    assert client.delete(f"/v1/files/{file_id}", headers=bearer(other)).status_code == 404
    assert client.post(f"/v1/batches/{batch_id}/cancel", headers=bearer(other)).status_code == 404
    stolen = client.post(
        "/v1/batches",
        json={"input_file_id": file_id, "endpoint": "/v1/ner", "completion_window": "24h"},
        headers=bearer(other),
    )
    assert stolen.status_code == 404
    # Its owner and the admins do.
    owned = {f["id"] for f in client.get("/v1/files", headers=bearer(READER_KEY)).json()["data"]}
    assert {file_id, output} <= owned
    assert client.get(f"/v1/files/{output}/content", headers=bearer(READER_KEY)).status_code == 200
    assert client.get(f"/v1/files/{output}/content", headers=bearer(ADMIN_KEY)).status_code == 200
    assert batch_id in {x["id"] for x in client.get("/v1/batches", headers=bearer(ADMIN_KEY)).json()["data"]}


def test_deleting_a_key_file_or_a_bad_encoding_revokes_its_keys(
    client_for: Any, key_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "_RECHECK_S", 0.0)
    api, admin = key_files
    client, _ = client_for(lambda r: ner_output(), api_keys_file=api, admin_keys_file=admin)
    api.write_text(f"ward-7 {hash_key(READER_KEY)}\n", encoding="utf-16")  # PowerShell's >> default
    os.utime(api, (3, 3))
    assert client.post("/v1/ner", json=NER_BODY, headers=bearer(READER_KEY)).status_code == 401
    api.write_text(f"ward-7 {hash_key(READER_KEY)}\n")
    os.utime(api, (4, 4))
    assert client.post("/v1/ner", json=NER_BODY, headers=bearer(READER_KEY)).status_code == 200
    api.unlink()
    assert client.post("/v1/ner", json=NER_BODY, headers=bearer(READER_KEY)).status_code == 401
    assert client.post("/v1/ner", json=NER_BODY, headers=bearer(ADMIN_KEY)).status_code == 200


def test_the_request_log_names_the_key_not_the_key_itself(
    client_for: Any, key_files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    api, admin = key_files
    client, _ = client_for(lambda r: ner_output(), api_keys_file=api, admin_keys_file=admin)
    with caplog.at_level(logging.INFO):
        client.post("/v1/ner", json=NER_BODY, headers=bearer(READER_KEY))
        client.put(
            "/v1/tasks/ner-it-clinical/adapter",
            json={"name": "ner-it-clinical", "version": "1"},
            headers=bearer(ADMIN_KEY),
        )
    requests = [r for r in caplog.records if r.getMessage() == "request"]
    assert [getattr(r, "client", None) for r in requests] == ["ward-7"]
    actions = [r for r in caplog.records if r.getMessage() == "admin action"]
    assert [(getattr(r, "client", None), getattr(r, "action", None)) for r in actions] == [("ops", "switch")]


def test_behind_a_path_prefix_every_v1_route_still_needs_a_key(
    make_fake_service: Any, key_files: tuple[Path, Path]
) -> None:
    """Served under a root path (a reverse proxy's prefix), the middleware's path test must not
    let /v1 through unauthenticated, and a route never falls back to an open caller."""
    api, admin = key_files
    service, _ = make_fake_service(
        lambda r: ner_output(("febbre", "SYMPTOM")), api_keys_file=api, admin_keys_file=admin
    )
    with TestClient(app_for(service), root_path="/medlora", raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # The proxy passes the prefix on: Starlette routes /medlora/v1/... to the /v1 routes.
        for method, path in (
            ("POST", "/medlora/v1/ner"),
            ("GET", "/medlora/v1/tasks"),
            ("DELETE", "/medlora/v1/adapters/x/1"),
        ):
            r = client.request(method, path, json=NER_BODY if method == "POST" else None)
            assert r.status_code == 401, (method, path, r.text)
        assert client.post("/medlora/v1/ner", json=NER_BODY, headers=bearer(READER_KEY)).status_code == 200
        assert client.delete("/medlora/v1/adapters/x/1", headers=bearer(READER_KEY)).status_code == 403
