"""What vLLM learns about the served model's class, seeded so that a fresh container skips it.

On a cache miss vLLM inspects the model class in a new Python process (importing vLLM once more:
about 8 s on 2 cores, a third of a CPU start) and keeps the answer in
VLLM_CACHE_ROOT/modelinfos, keyed by a hash of the model module's source. A pod starts with an
empty cache (an emptyDir), so every start paid it. The package carries vLLM's own answer for the
architecture medlora serves, made by the pinned vLLM (`python -m app.engine.vllm_cache --refresh`);
vLLM compares the hash before using it, so another vLLM build misses and inspects as before. The
in-process engine seeds before it starts; `python -m app.engine.vllm_cache` seeds for a separate
vLLM server started from the medlora image.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("medlora.engine")

SEEDS_DIR = Path(__file__).parent / "vllm_modelinfos"
ARCHITECTURES = ("Qwen3ForCausalLM",)


def vllm_cache_root() -> Path:
    import vllm.envs as envs

    return Path(envs.VLLM_CACHE_ROOT)


def seed_model_info_cache(cache_root: Path | None = None) -> list[str]:
    """Copy the shipped model-class facts into vLLM's cache where it has none; the names copied.
    A cache that cannot be written is left to vLLM (it inspects, as without the seed)."""
    target = (cache_root or vllm_cache_root()) / "modelinfos"
    seeded: list[str] = []
    for seed in sorted(SEEDS_DIR.glob("*.json")):
        destination = target / seed.name
        if destination.exists():
            continue  # vLLM's own (or an earlier seed): it knows better, or rejects it by hash
        try:
            target.mkdir(parents=True, exist_ok=True)
            # Written whole then renamed: another process starting beside this one reads
            # either nothing or the complete file.
            with tempfile.NamedTemporaryFile(dir=target, suffix=".tmp", delete=False) as part:
                part.write(seed.read_bytes())
            os.replace(part.name, destination)
        except OSError as exc:
            log.warning("vLLM cache not seeded", extra={"reason": type(exc).__name__})
            continue
        seeded.append(seed.name)
    return seeded


def refresh_seeds() -> list[Path]:
    """Ask the installed vLLM to inspect each served architecture, as it does on a miss, and keep
    its cache files as the package's seeds. Run after changing the pinned vLLM."""
    from vllm.model_executor.models.registry import ModelRegistry

    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        previous = os.environ.get("VLLM_CACHE_ROOT")
        os.environ["VLLM_CACHE_ROOT"] = tmp
        try:
            for architecture in ARCHITECTURES:
                ModelRegistry.models[architecture].inspect_model_cls()
        finally:
            if previous is None:
                os.environ.pop("VLLM_CACHE_ROOT")
            else:
                os.environ["VLLM_CACHE_ROOT"] = previous
        SEEDS_DIR.mkdir(exist_ok=True)
        for made in sorted((Path(tmp) / "modelinfos").glob("*.json")):
            written.append(Path(shutil.copy(made, SEEDS_DIR / made.name)))
    return written


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refresh", action="store_true", help="remake the package's seeds with the installed vLLM")
    args = parser.parse_args(argv)
    made = [str(path) for path in refresh_seeds()] if args.refresh else seed_model_info_cache()
    for name in made:
        print(name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
