"""Which base model the engine serves, and where its adapters are."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.settings import DEMO_BASE_NAME, DEMO_DIR, Settings

DEMO_DISPLAY_NAME = "embedded-tiny-qwen3-demo"


@dataclass(frozen=True)
class ResolvedModel:
    display_name: str  # what responses report as model.base
    path: str  # what the engine and the tokenizer load
    adapters_root: Path  # relative adapter paths in manifests resolve against it


def resolve_model(settings: Settings) -> ResolvedModel:
    """The shipped demo for the embedded default; otherwise the settings as given."""
    if settings.embedded:
        return ResolvedModel(DEMO_DISPLAY_NAME, str(DEMO_DIR / DEMO_BASE_NAME), DEMO_DIR / "adapters")
    return ResolvedModel(settings.model, settings.model, settings.adapters_dir or settings.tasks_dir)


def missing_model_folder(model: str) -> str | None:
    """Why a model given as a local path cannot be served (checked before the server starts)."""
    if model.startswith(("/", ".", "~")) and not Path(model).expanduser().is_dir():
        return f"model folder {model!r} does not exist (is the models volume mounted?)"
    return None
