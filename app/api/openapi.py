"""The OpenAPI document, as integrators generate clients from it: every status a route can
answer with (RFC 9457 problems, one schema whose `type` lists every stable URN), the
security the server really enforces, and this deployment's limits and task names.

Routes declare the problems they raise next to their code (`problems(...)`); what every
route of a kind shares (authentication, body limits, validation) is added here once, from
the same settings the middleware and request checks enforce, so spec and code agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.problems import (
    FORBIDDEN,
    INVALID_REQUEST,
    MALFORMED_REQUEST,
    PAYLOAD_TOO_LARGE,
    PROBLEM_MEDIA_TYPE,
    UNAUTHORIZED,
    ProblemType,
    problem_types,
)
from app.tasks.service import InputLimits

PROBLEM_REF = "#/components/schemas/Problem"
BEARER_SCHEME = "bearerAuth"
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def problems(*kinds: ProblemType) -> dict[int | str, dict[str, Any]]:
    """A route's `responses` for the problems it answers with, one entry per status."""
    grouped: dict[int, list[ProblemType]] = {}
    for kind in kinds:
        grouped.setdefault(kind.status, []).append(kind)
    return {status: _problem_response(group) for status, group in sorted(grouped.items())}


def _problem_response(kinds: Iterable[ProblemType]) -> dict[str, Any]:
    listed = ", ".join(f"`{kind.uri}` ({kind.title})" for kind in kinds)
    return {
        "description": f"Problem details (RFC 9457): {listed}.",
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_REF}}},
    }


def problem_schema() -> dict[str, Any]:
    return {
        "title": "Problem",
        "description": "RFC 9457 problem details. `type` is a stable URN; `detail` never quotes the text sent.",
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string", "enum": [kind.uri for kind in problem_types()]},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "errors": {
                "description": "Validation failures: where and why, never the value sent.",
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "loc": {"type": "array", "items": {"type": "string"}},
                        "msg": {"type": "string"},
                        "type": {"type": "string"},
                    },
                },
            },
        },
        "additionalProperties": True,
    }


@dataclass(frozen=True)
class TaskEndpoint:
    """One task route as the document shows it: its request model and the tasks it serves."""

    path: str
    request_component: str  # the request model's name in components/schemas
    items_field: str
    input_fields: tuple[str, ...]
    tasks: tuple[str, ...]


def install_openapi(
    app: FastAPI, *, auth_enabled: bool, limits: InputLimits, endpoints: Callable[[], list[TaskEndpoint]]
) -> None:
    """Replace FastAPI's document with this deployment's (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = finish(document, auth_enabled=auth_enabled, limits=limits, endpoints=endpoints())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def finish(
    document: dict[str, Any], *, auth_enabled: bool, limits: InputLimits, endpoints: list[TaskEndpoint]
) -> dict[str, Any]:
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = problem_schema()
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    components.pop("securitySchemes", None)
    if auth_enabled:
        components["securitySchemes"] = {
            BEARER_SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key (`medlora hash-key`); adapter administration needs an admin key.",
            }
        }
    else:
        document["info"]["description"] += (
            " Authentication is off on this server (no key files configured): no route needs a key."
        )
    for path, item in document["paths"].items():
        for method in _METHODS:
            if method in item:
                _finish_operation(path, item[method], auth_enabled)
    for endpoint in endpoints:
        _bound_request(schemas, endpoint, limits)
    for schema in schemas.values():
        _mark_binary(schema)
    return document


def _mark_binary(schema: dict[str, Any]) -> None:
    """Uploaded files as `format: binary`, which client generators read as a file part (FastAPI
    writes OpenAPI 3.1's `contentMediaType` alone, and a generated client then sends text)."""
    for field in schema.get("properties", {}).values():
        if field.get("type") == "string" and field.get("contentMediaType") == "application/octet-stream":
            field["format"] = "binary"


def _finish_operation(path: str, operation: dict[str, Any], auth_enabled: bool) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    validation = responses.get("422", {}).get("content", {}).get("application/json")
    if validation is not None:  # FastAPI's default: ours is a problem like every other error
        responses["422"] = _problem_response([INVALID_REQUEST])
    added: list[ProblemType] = []
    if "requestBody" in operation:
        # Every body is size-checked before it is read, and can fail to parse at all.
        added += [MALFORMED_REQUEST, PAYLOAD_TOO_LARGE, INVALID_REQUEST]
    elif operation.get("parameters"):
        added.append(INVALID_REQUEST)
    operation.pop("security", None)
    if auth_enabled and (path == "/v1" or path.startswith("/v1/")):
        operation["security"] = [{BEARER_SCHEME: []}]
        added.append(UNAUTHORIZED)
        if "admin" in operation.get("tags", []):
            added.append(FORBIDDEN)
    for status, response in problems(*added).items():
        key = str(status)
        if key in responses:
            _merge_description(responses[key], response)
        else:
            responses[key] = response


def _merge_description(existing: dict[str, Any], response: dict[str, Any]) -> None:
    existing.setdefault("content", {}).update(response["content"])
    if response["description"] not in existing.get("description", ""):
        existing["description"] = f"{existing.get('description', '')} {response['description']}".strip()


def _bound_request(schemas: dict[str, Any], endpoint: TaskEndpoint, limits: InputLimits) -> None:
    request = schemas.get(endpoint.request_component)
    if request is None:
        return
    properties: Mapping[str, Any] = request.get("properties", {})
    if endpoint.tasks and "task" in properties:
        properties["task"]["enum"] = list(endpoint.tasks)
    items = properties.get(endpoint.items_field)
    if items is None:
        return
    items["maxItems"] = min(int(items.get("maxItems", limits.max_items)), limits.max_items)
    reference = items.get("items", {}).get("$ref", "")
    item = schemas.get(reference.rsplit("/", 1)[-1], {})
    for name in endpoint.input_fields:
        field = item.get("properties", {}).get(name)
        if field is not None:
            field["maxLength"] = min(int(field.get("maxLength", limits.max_chars)), limits.max_chars)
