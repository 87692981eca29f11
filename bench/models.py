"""The models the benchmarks run: a random-weight tiny Qwen3 with the real Qwen3 tokenizer
(tests/support/qwen3.py) and a random LoRA per shipped task, built once into a folder."""

from __future__ import annotations

import zlib
from pathlib import Path

from app.settings import Settings
from app.tasks.manifests import load_tasks
from app.training.tiny_model import build_tiny_adapter
from tests.support.qwen3 import build_random_qwen3


def random_qwen3(work: Path) -> tuple[Path, Path]:
    """(base folder, adapters folder), built under `work` unless already there."""
    base = build_random_qwen3(work / "qwen3-random")
    adapters = work / "adapters"
    settings = Settings()
    for task in load_tasks(settings.tasks_dir, settings.schemas_dir).values():
        path = task.manifest.adapter.path
        if not (adapters / path / "adapter_config.json").is_file():
            build_tiny_adapter(base, adapters / path, seed=zlib.crc32(path.encode()) % 10_000)
    return base, adapters


def random_qwen3_settings(work: Path, **overrides: object) -> Settings:
    base, adapters = random_qwen3(work)
    return Settings(model=str(base), adapters_dir=adapters, **overrides)  # type: ignore[arg-type]


def random_qwen3_env(work: Path) -> dict[str, str]:
    base, adapters = random_qwen3(work)
    return {"MEDLORA_MODEL": str(base), "MEDLORA_ADAPTERS_DIR": str(adapters)}
