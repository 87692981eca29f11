"""The engine the settings ask for: vLLM in this process, or remote vLLM OpenAI servers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from app.engine.base import Engine
from app.engine.local import VllmEngine
from app.engine.remote.engine import RemoteEngine
from app.settings import Settings


def build_engine(settings: Settings, model_path: str, registry: CollectorRegistry) -> Engine:
    """Construct (not start) the engine; vLLM itself is imported when the engine starts."""
    if settings.engine == "remote":
        return RemoteEngine(settings, registry=registry)
    return VllmEngine(settings, model_path)
