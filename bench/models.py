"""The models the benchmarks run: a random-weight tiny Qwen3 with the real Qwen3 tokenizer
(tests/support/qwen3.py) and a random LoRA per shipped task, built once into a folder."""

from __future__ import annotations

import zlib
from pathlib import Path

import yaml

from app.settings import DEMO_BASE_NAME, Settings
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


def demo_settings(demo: Path, **overrides: object) -> Settings:
    """A model in the demo's layout: the base in `demo/tiny-qwen3-demo`, one adapter per shipped
    task in `demo/adapters` (the shipped demo, or real weights laid out alike on a GPU machine),
    served in process unless `overrides` say otherwise."""
    chosen: dict[str, object] = {"model": str(demo / DEMO_BASE_NAME), "adapters_dir": demo / "adapters"}
    return Settings(**{**chosen, "engine": "local", **overrides})  # type: ignore[arg-type]


def model_settings(demo: Path | None, work: Path, **overrides: object) -> Settings:
    """The demo-layout model when given, else the random-weight tiny Qwen3 built under `work`."""
    return demo_settings(demo, **overrides) if demo is not None else random_qwen3_settings(work, **overrides)


def model_env(demo: Path | None, work: Path) -> dict[str, str]:
    """The same choice as `model_settings`, for a `medlora serve` process."""
    if demo is None:
        return random_qwen3_env(work)
    return {"MEDLORA_MODEL": str(demo / DEMO_BASE_NAME), "MEDLORA_ADAPTERS_DIR": str(demo / "adapters")}


def tasks_without_linking(folder: Path) -> Path:
    """The shipped task manifests with their terminologies left out (files and all)."""
    shipped = Settings().tasks_dir
    folder.mkdir(parents=True, exist_ok=True)
    for manifest in shipped.glob("*.yaml"):
        data = yaml.safe_load(manifest.read_text(encoding="utf-8"))
        data.pop("terminologies", None)
        (folder / manifest.name).write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return folder
