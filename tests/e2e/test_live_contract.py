"""The contract, as an integrator meets it: schemathesis (every check) over the whole API of a
real `medlora serve` on vLLM with the random-weight, real-vocabulary Qwen3, once with
authentication off and once with key files, where `ignored_auth` must pass as well (no route
accepts a missing or wrong key). Zero failures: every status documented, every body of its
documented type and shape, no request the schema allows refused or one it forbids accepted,
no 5xx, 405 with `Allow` for undeclared methods.

Time-boxed (MEDLORA_SCHEMATHESIS_SECONDS per run) with a fixed seed. The server runs with
small input limits, which the document states, so that the longest request schemathesis
may send stays a few generations on 2 cores.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from app.api.auth import hash_key
from app.settings import REPO_ROOT
from tests.e2e.conftest import LiveServer, RandomModel, free_port, server_env, start_server, stop

pytestmark = pytest.mark.e2e

SECONDS = int(os.environ.get("MEDLORA_SCHEMATHESIS_SECONDS", "120"))
SEED = "20261201"
ADMIN_KEY = "contract-admin-key-0123456789"
LIMITS = {
    "MEDLORA_MAX_DOCUMENTS": "3",
    "MEDLORA_MAX_DOCUMENT_CHARS": "1000",
    "MEDLORA_BATCH_MAX_UPLOAD_BYTES": "1000000",
}


@contextmanager
def contract_server(model: RandomModel, work: Path, *, keys: bool) -> Iterator[LiveServer]:
    port = free_port()
    env = {
        **server_env(work, port),
        **LIMITS,
        "MEDLORA_MODEL": str(model.base_dir),
        "MEDLORA_ADAPTERS_DIR": str(model.adapters_dir),
    }
    if keys:
        (work / "admin-keys").write_text(f"contract {hash_key(ADMIN_KEY)}\n")
        (work / "api-keys").write_text(f"reader {hash_key('contract-reader-key-0123456789')}\n")
        env |= {"MEDLORA_ADMIN_KEYS_FILE": str(work / "admin-keys"), "MEDLORA_API_KEYS_FILE": str(work / "api-keys")}
    log_path = work / "server.log"
    proc, probes, seconds = start_server([sys.executable, "-m", "app.cli", "serve"], env, REPO_ROOT, log_path, port)
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", model.base_dir, model.adapters_dir, log_path, seconds, probes)
    finally:
        stop(proc)


# A review save names a decision that must fit the note stored under that review: no schema can
# say so, and the stateful phase's saves bypass the hooks' case filter, so a positive save may be
# refused with 422 invalid-review (valid saves: tests/test_review_api.py, the browser tests).
CONFIG = """
[[operations]]
include-path = "/v1/reviews/items/{review_id}"
include-method = "PUT"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", 401, 403, 404, 409, 422, 429, "5xx"]
"""


def schemathesis(server: LiveServer, work: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    config = work / "schemathesis.toml"
    config.write_text(CONFIG, encoding="utf-8")
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(config),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "all",
        "--max-time",
        str(SECONDS),
        "--seed",
        SEED,
        # Generations take seconds on 2 CPU cores; latency is not what this run checks.
        "--max-response-time",
        "300",
        "--request-timeout",
        "300",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(work / "report"),
        *extra,
    ]
    env = {
        **os.environ,
        # The one rule JSON Schema cannot state (ids unique within a request): tests/support/schemathesis_hooks.py.
        "SCHEMATHESIS_HOOKS": "tests.support.schemathesis_hooks",
        "PYTHONPATH": str(REPO_ROOT),
    }
    return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=SECONDS * 3 + 300)


def assert_clean(result: subprocess.CompletedProcess[str], server: LiveServer) -> None:
    output = result.stdout + result.stderr
    print(output[-3000:])
    assert result.returncode == 0, output[-20000:]
    # Every operation of the document was exercised, not just reachable ones.
    selected = re.search(r"Selected: (\d+)/(\d+)", output)
    tested = re.search(r"Tested: (\d+)", output)
    assert selected and tested and selected[1] == selected[2] == tested[1], output[-3000:]
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "unhandled error" not in log, log[-5000:]


def test_schemathesis_finds_no_failure_with_authentication_off(random_model: RandomModel, tmp_path: Path) -> None:
    with contract_server(random_model, tmp_path, keys=False) as server:
        assert_clean(schemathesis(server, tmp_path), server)


def test_schemathesis_finds_no_failure_with_keys_and_no_route_ignores_them(
    random_model: RandomModel, tmp_path: Path
) -> None:
    with contract_server(random_model, tmp_path, keys=True) as server:
        result = schemathesis(server, tmp_path, "--header", f"Authorization: Bearer {ADMIN_KEY}")
        assert_clean(result, server)
