"""Composition root: the whole gateway (task service, HTTP routes, batch jobs, review) from settings."""

from __future__ import annotations

from fastapi import FastAPI

from app.api.app import create_app
from app.api.auth import Authenticator
from app.batch.api import BatchJobs
from app.review.api import ReviewDesk
from app.settings import Settings
from app.tasks.service import Service, build_service


def build_app(settings: Settings, service: Service | None = None) -> FastAPI:
    """The gateway `medlora serve` runs. Fast (nothing is loaded): the model's tokenizer, the
    engine and the adapters start in the background once the server listens."""
    service = service or build_service(settings)
    auth = Authenticator(settings.api_keys_file, settings.admin_keys_file)
    jobs = BatchJobs(settings, service)
    return create_app(service, auth, [jobs, ReviewDesk(settings, service, jobs.answered)])


def app_for(service: Service) -> FastAPI:
    """The gateway around an already assembled service (tests, in-memory clients)."""
    return build_app(service.settings, service)
