"""The OpenAPI document is the contract clients are generated from: it must say every status a
route answers with, as problem+json of one schema whose `type` values are every stable URN,
the security the server enforces (none with authentication off), and the limits and task
names the code enforces. Schemathesis checks the running service against it end to end
(tests/e2e/test_live_contract.py); these check the document itself, quickly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.problems import PROBLEM_MEDIA_TYPE, problem_types
from tests.conftest import SHIPPED_TASKS, shipped_task
from tests.fakes import ner_output
from tests.test_api import assert_problem
from tests.test_auth import ADMIN_KEY, READER_KEY, bearer
from tests.test_auth import key_files as key_files

METHODS = ("get", "put", "post", "delete", "patch")


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, item in document["paths"].items() for m, op in item.items() if m in METHODS]


def test_every_error_response_is_a_problem_of_the_one_schema(client_for: Any) -> None:
    client, _ = client_for(lambda r: ner_output())
    document = client.get("/openapi.json").json()
    problem = document["components"]["schemas"]["Problem"]
    assert problem["properties"]["type"]["enum"] == [kind.uri for kind in problem_types()]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for method, path, op in operations(document):
        for status, response in op["responses"].items():
            if status.startswith("2") or path in ("/livez", "/readyz"):
                continue
            assert list(response["content"]) == [PROBLEM_MEDIA_TYPE], (method, path, status)
            assert response["content"][PROBLEM_MEDIA_TYPE]["schema"] == {"$ref": "#/components/schemas/Problem"}
            # The description names the types a client may see with that status.
            assert "urn:medlora:problem:" in response["description"], (method, path, status)


def test_task_routes_document_every_status_they_can_answer_with(client_for: Any) -> None:
    client, _ = client_for(lambda r: ner_output())
    document = client.get("/openapi.json").json()
    for kind in ("ner", "qa", "classify", "relations", "forms"):
        responses = document["paths"][f"/v1/{kind}"]["post"]["responses"]
        assert set(responses) == {"200", "400", "404", "406", "413", "422", "429", "502", "503", "504"}


def test_with_authentication_off_no_route_claims_to_need_a_key(client_for: Any) -> None:
    client, _ = client_for(lambda r: ner_output())
    document = client.get("/openapi.json").json()
    assert "securitySchemes" not in document["components"]
    assert "Authentication is off" in document["info"]["description"]
    for method, path, op in operations(document):
        assert "security" not in op and "401" not in op["responses"], (method, path)
        names = [p["name"].lower() for p in op.get("parameters", [])]
        assert "authorization" not in names, (method, path)


def test_with_keys_every_v1_route_needs_bearer_auth_and_admin_routes_say_403(
    client_for: Any, key_files: tuple[Path, Path]
) -> None:
    api, admin = key_files
    client, _ = client_for(lambda r: ner_output(), api_keys_file=api, admin_keys_file=admin)
    document = client.get("/openapi.json").json()
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for method, path, op in operations(document):
        if path.startswith("/v1/"):
            assert op["security"] == [{"bearerAuth": []}], (method, path)
            assert "401" in op["responses"]
            assert ("403" in op["responses"]) == ("admin" in op.get("tags", [])), (method, path)
        else:  # probes and metrics stay open for the kubelet and the scraper
            assert "security" not in op, (method, path)
    # What the spec says is what the server does.
    assert_problem(client.get("/v1/tasks"), 401, "unauthorized")
    assert client.get("/v1/tasks", headers=bearer(READER_KEY)).status_code == 200
    r = client.post("/v1/adapters", json={"name": "x", "version": "1", "path": "x"}, headers=bearer(READER_KEY))
    assert_problem(r, 403, "forbidden")
    r = client.post("/v1/adapters", json={"name": "x", "version": "1", "path": "x"}, headers=bearer(ADMIN_KEY))
    assert_problem(r, 404, "adapter-not-found")


def test_each_task_route_lists_the_tasks_it_serves(client_for: Any) -> None:
    client, _ = client_for(lambda r: ner_output())
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    by_type: dict[str, list[str]] = {}
    for name in SHIPPED_TASKS:
        by_type.setdefault(shipped_task(name).kind.request_model.__name__, []).append(name)
    for component, names in by_type.items():
        assert schemas[component]["properties"]["task"]["enum"] == sorted(names)
    # A task of another type is what the enum leaves out, and what the route refuses.
    r = client.post("/v1/ner", json={"task": "crf-it-dyspnea", "documents": [{"id": "d", "text": "x"}]})
    assert_problem(r, 400, "wrong-task-type")


def test_an_undeclared_method_is_405_with_every_allowed_method(client_for: Any) -> None:
    client, _ = client_for(lambda r: ner_output())
    for method, path, allowed in (
        ("PUT", "/v1/adapters", "GET, POST"),
        ("TRACE", "/livez", "GET"),
        ("PATCH", "/v1/files/file-1", "DELETE, GET"),
        ("GET", "/v1/ner", "POST"),
    ):
        r = client.request(method, path)
        assert_problem(r, 405, "method-not-allowed")
        assert r.headers["allow"] == allowed, (method, path)


def test_unparsable_bodies_are_400_and_values_are_never_coerced(client_for: Any) -> None:
    client, _ = client_for(lambda r: ner_output())
    r = client.put(
        "/v1/tasks/ner-it-clinical/adapter", content=b"\xff\xfe", headers={"content-type": "application/json"}
    )
    assert r.status_code in (400, 422) and r.headers["content-type"] == PROBLEM_MEDIA_TYPE
    coerced = {"task": "ner-it-clinical", "documents": [{"id": "d", "text": "x"}], "min_confidence": False}
    body = assert_problem(client.post("/v1/ner", json=coerced), 422, "invalid-request")
    assert body["errors"][0]["loc"] == ["body", "min_confidence"]
    numeric_id = {"task": "ner-it-clinical", "documents": [{"id": 7, "text": "x"}]}
    assert_problem(client.post("/v1/ner", json=numeric_id), 422, "invalid-request")


def test_no_page_loads_scripts_from_a_cdn(client_for: Any) -> None:
    client, _ = client_for(lambda r: ner_output())
    for path in ("/docs", "/redoc"):
        assert_problem(client.get(path), 404, "not-found")
    assert client.get("/openapi.json").status_code == 200
