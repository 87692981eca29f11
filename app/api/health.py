"""Probes and metrics: /livez, /readyz, /metrics (open: no key, no clinical text)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.tasks.service import Service


def health_router(service: Service) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/livez")
    async def livez() -> JSONResponse:
        # A failed startup never recovers by itself: let the orchestrator restart the process.
        if service.startup_error:
            return JSONResponse({"status": "failed", "error": service.startup_error}, status_code=503)
        return JSONResponse({"status": "alive"})

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        if service.ready:
            return JSONResponse({"status": "ready", "tasks": sorted(service.tasks)})
        body = {
            "status": "failed" if service.startup_error else "starting",
            "error": service.startup_error,
            **service.engine.describe(),
        }
        return JSONResponse(body, status_code=503, headers={"Retry-After": "10"})

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics_registry), media_type=CONTENT_TYPE_LATEST)

    return router
