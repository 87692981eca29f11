"""Probes and metrics: /livez, /readyz, /metrics (open: no key, no clinical text)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.tasks.service import Service


def _status(description: str) -> dict[str, Any]:
    schema = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def health_router(service: Service) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/livez", responses={503: _status("The process cannot recover by itself: restart it.")})
    async def livez() -> JSONResponse:
        # A failed start or a dead engine never recovers by itself: let the orchestrator restart the process.
        if (failure := service.failure) is not None:
            return JSONResponse({"status": "failed", "error": failure}, status_code=503)
        return JSONResponse({"status": "alive"})

    @router.get("/readyz", responses={503: _status("Not serving (starting, draining or failed): try later.")})
    async def readyz() -> JSONResponse:
        if service.ready:
            return JSONResponse({"status": "ready", "tasks": sorted(service.tasks)})
        body = {"status": service.state, "error": service.failure, **service.engine.describe()}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "10"})

    @router.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"description": "Prometheus text format.", "content": {"text/plain": {"schema": {"type": "string"}}}}
        },
    )
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics_registry), media_type=CONTENT_TYPE_LATEST)

    return router
