"""The shipped seed of vLLM's model-info cache: what the pinned vLLM would find itself, used by it,
and never in the way of vLLM's own cache."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from app.engine.vllm_cache import ARCHITECTURES, SEEDS_DIR, main, seed_model_info_cache

vllm_registry = pytest.importorskip("vllm.model_executor.models.registry")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_seed_is_what_the_pinned_vllm_finds_and_vllm_takes_it(
    architecture: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path))
    model = vllm_registry.ModelRegistry.models[architecture]
    assert seed_model_info_cache() == [model._get_cache_filename()]
    module = Path(vllm_registry.__file__).parent / f"{model.module_name.rsplit('.', 1)[1]}.py"
    # vLLM's own check: a stale seed (another vLLM's model source) would be None here and
    # inspected afresh; this test says to refresh the seed (python -m app.engine.vllm_cache).
    cached = model._load_modelinfo_from_cache(model._get_modelinfo_module_hash(module))
    assert cached is not None, "seed is stale for this vLLM: run python -m app.engine.vllm_cache"
    inspected = vllm_registry._ModelInfo.from_model_cls(model.load_model_cls())
    # Compared as vLLM writes it (JSON: tuples become lists).
    assert asdict(cached) == json.loads(json.dumps(asdict(inspected)))


def test_vllms_own_cache_file_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "modelinfos").mkdir()
    (seed,) = SEEDS_DIR.glob("*.json")
    own = tmp_path / "modelinfos" / seed.name
    own.write_text('{"hash": "vllm-wrote-this"}')
    assert seed_model_info_cache(tmp_path) == []
    assert own.read_text() == '{"hash": "vllm-wrote-this"}'


def test_a_cache_path_blocked_by_a_file_is_left_to_vllm(tmp_path: Path) -> None:
    (tmp_path / "modelinfos").write_text("not a folder")
    assert seed_model_info_cache(tmp_path) == []
    assert not list(tmp_path.glob("*.tmp"))


def test_the_command_seeds_the_cache_a_separate_vllm_server_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path))
    assert main([]) == 0
    (seed,) = SEEDS_DIR.glob("*.json")
    assert (tmp_path / "modelinfos" / seed.name).read_bytes() == seed.read_bytes()
    assert capsys.readouterr().out.split() == [seed.name]
