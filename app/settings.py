"""Service configuration: one settings object, read from MEDLORA_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent  # the checkout (only meaningful when running from one)
EMBEDDED_MODEL = "embedded-tiny"
DEFAULT_REAL_MODEL = "Qwen/Qwen3-1.7B"


def shipped_dir(name: str) -> Path:
    """A folder of shipped files (`adapters`, `schemas`): in a wheel, package data under
    app/data/ (copied there by setup.py); in a checkout, the top-level folder itself."""
    packaged = PACKAGE_DIR / "data" / name
    return packaged if packaged.is_dir() else REPO_ROOT / name


SHIPPED_TASKS_DIR = shipped_dir("adapters")
SHIPPED_SCHEMAS_DIR = shipped_dir("schemas")
# The embedded demo: a tiny Qwen3 and one trained adapter per shipped task (`medlora demo build`).
DEMO_DIR = PACKAGE_DIR / "data" / "demo"
# The demo base's folder in DEMO_DIR; its adapters name it as their base model (the adapter
# registry compares base models by final path component).
DEMO_BASE_NAME = "tiny-qwen3-demo"


class ConfigurationError(ValueError):
    """Settings that are valid one by one but do not work together."""


class Settings(BaseSettings):
    """Everything an operator can set. Field docs double as the README's settings table."""

    model_config = SettingsConfigDict(env_prefix="MEDLORA_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, description="Port to bind.")
    model: str = Field(
        EMBEDDED_MODEL,
        description=(
            "Base model: a Hugging Face id or local path (e.g. Qwen/Qwen3-1.7B), or "
            f"'{EMBEDDED_MODEL}' for the shipped demo (a tiny Qwen3 and one trained adapter per shipped task)."
        ),
    )
    tasks_dir: Path = Field(SHIPPED_TASKS_DIR, description="Folder of task manifests (*.yaml).")
    adapters_dir: Path | None = Field(
        None,
        description=(
            "Root that relative adapter paths in manifests resolve against "
            "(default: the tasks folder; the embedded model uses the shipped demo's adapters)."
        ),
    )
    schemas_dir: Path = Field(SHIPPED_SCHEMAS_DIR, description="Folder of output JSON schemas.")
    max_model_len: int = Field(
        16384, description="Engine context length (prompt + worst-case output; Qwen3-1.7B supports 32768)."
    )
    max_loras: int = Field(4, description="Adapters resident on the accelerator at once.")
    max_cpu_loras: int = Field(16, description="Adapters cached in host memory.")
    max_lora_rank: int = Field(16, description="Largest LoRA rank the engine accepts.")
    gpu_memory_utilization: float = Field(0.85, description="vLLM GPU memory share (GPU only).")
    cpu_kvcache_gib: int = Field(1, description="KV cache size in GiB on CPU (VLLM_CPU_KVCACHE_SPACE).")
    speculative_tokens: int = Field(
        0,
        ge=0,
        description=(
            "Draft tokens per step of n-gram (prompt-lookup) speculative decoding: answers copy the note, and "
            "copies are what the note's own n-grams predict. 0 (the default on every engine kind) turns it off: "
            "with it on, vLLM 0.32 fills grammar masks serially, (1 + tokens) per request per step, which makes "
            "grammar the step's bottleneck above a batch of 2-3 on a GPU (README, Speculative copying). Greedy "
            "answers are the same either way."
        ),
    )
    speculative_lookup_min: int = Field(2, ge=1, description="Shortest n-gram of the answer looked up in the prompt.")
    speculative_lookup_max: int = Field(5, ge=1, description="Longest n-gram of the answer looked up in the prompt.")
    speculative_tokens_by_batch_size: Annotated[list[tuple[int, int, int]], NoDecode] = Field(
        default_factory=list,
        description=(
            "Caps draft tokens by the engine's batch size, as 'first-last:tokens,...' (e.g. '1-128:4,129-1024:1'; "
            "the first range starts at 1): with speculation on, vLLM fills grammar masks serially, (1 + tokens) "
            "per request per step. Unset: the same number at every batch size."
        ),
    )
    structured_outputs_backend: Literal["guidance"] = Field(
        "guidance",
        description="Constrained-decoding backend; llguidance is required for grounded spans.",
    )
    max_documents: int = Field(64, description="Most documents or QA items in one request.")
    max_document_chars: int = Field(200_000, description="Largest document, in characters.")
    request_timeout_s: float = Field(600.0, description="Engine time allowed for one request.")
    max_admitted_generations: int = Field(
        512,
        ge=1,
        description=(
            "Most generations (chunks x asks) of interactive requests admitted at once, queued or running in the "
            "engine. A request beyond it waits up to MEDLORA_ADMISSION_WAIT_S, then gets 429 with Retry-After. "
            "A request larger than the bound runs alone."
        ),
    )
    admission_wait_s: float = Field(
        5.0, ge=0, description="How long an interactive request may wait for admission before its 429."
    )
    max_admitted_generations_per_key: int | None = Field(
        None,
        ge=1,
        description="Most interactive generations admitted at once for one API key (unset: only the total bound).",
    )
    key_admission_limits: Annotated[dict[str, PositiveInt], NoDecode] = Field(
        default_factory=dict,
        description="Per-key overrides of that limit, as 'name=limit,name=limit' (key names as in the key files).",
    )
    background_max_admitted_generations: int = Field(
        128,
        ge=1,
        description=(
            "Most generations of batch jobs, `annotate` and `eval` in the engine at once. They wait (no 429) and "
            "take only the room interactive requests leave: none while those fill their bound or wait."
        ),
    )
    batch_dir: Path = Field(
        Path.home() / ".local" / "share" / "medlora" / "batches",
        description="Batch API store: SQLite database, uploaded files and outputs (keep it on a persistent volume).",
    )
    batch_concurrency: int = Field(
        32, ge=1, description="Batch lines in flight at once, across all jobs (interactive requests are not limited)."
    )
    batch_max_upload_bytes: int = Field(200 * 1024 * 1024, ge=1, description="Largest batch input file, in bytes.")
    batch_max_lines: int = Field(50_000, ge=1, description="Most lines in one batch input file.")
    batch_max_files_per_key: int = Field(
        100,
        ge=1,
        description=(
            "Most batch input files one API key may keep stored (outputs not counted); more is refused with 409 "
            "quota-exceeded until the key deletes one. Without authentication, for all callers together."
        ),
    )
    batch_max_upload_bytes_per_key: int = Field(
        1024 * 1024 * 1024,
        ge=1,
        description="Most bytes of batch input files one API key may keep stored (the same rules as the file count).",
    )
    batch_max_active_batches_per_key: int = Field(
        8,
        ge=1,
        description=(
            "Most unfinished batches one API key may have at once (they share MEDLORA_BATCH_CONCURRENCY); another "
            "is refused with 409 quota-exceeded until one finishes or is cancelled."
        ),
    )
    review_dir: Path = Field(
        Path.home() / ".local" / "share" / "medlora" / "reviews",
        description="Review store (SQLite): notes under review, the model's answers and the reviewers' decisions.",
    )
    review_max_notes_per_key: int = Field(
        100_000,
        ge=1,
        description="Most notes one API key may keep under review; more are refused with 409 quota-exceeded.",
    )
    log_level: str = Field("INFO", description="Log level.")
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM, time allowed for requests in flight to finish before the server exits."
    )
    engine: Literal["local", "remote"] = Field(
        "local",
        description=(
            "'local': vLLM in this process. 'remote': drive vLLM OpenAI servers at MEDLORA_ENGINE_URLS "
            "(the gateway then loads only the tokenizer from MEDLORA_MODEL)."
        ),
    )
    engine_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Remote engine: comma-separated base URLs of vLLM OpenAI servers (e.g. http://vllm:8000).",
    )
    engine_discovery: Literal["static", "dns"] = Field(
        "static",
        description=(
            "Remote engine: 'static' uses each URL as one replica; 'dns' resolves each URL's host to all its "
            "addresses (a headless Service) every health interval, so replicas that join or leave are followed."
        ),
    )
    engine_api_key: str | None = Field(None, description="Remote engine: bearer token the vLLM servers expect.")
    engine_health_interval_s: float = Field(
        5.0, gt=0, description="Remote engine: how often replicas are checked (and adapters re-synced)."
    )
    engine_connect_timeout_s: float = Field(5.0, gt=0, description="Remote engine: connect timeout per attempt.")
    engine_max_attempts: int = Field(
        3, ge=1, description="Remote engine: replicas tried for one generation when a replica fails or is unreachable."
    )
    api_keys_file: Path | None = Field(
        None,
        description=(
            "If set, every /v1 endpoint needs 'Authorization: Bearer <key>'. File of '<name> <sha256 hex of key>' "
            "lines (make one with `medlora hash-key`). Unset: no authentication (local development)."
        ),
    )
    admin_keys_file: Path | None = Field(
        None,
        description=(
            "Same format; keys allowed to register, switch and delete adapters (and to call every other /v1 "
            "endpoint). Any key file set turns authentication on for all of /v1."
        ),
    )

    allow_unauthenticated: bool = Field(
        False,
        description=(
            "Serve without API keys on an address beyond loopback. Off: `serve` refuses to start that way, "
            "since it would open clinical text, batch files and adapter administration to the network."
        ),
    )

    @field_validator("engine_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return [url.strip().rstrip("/") for url in value.split(",") if url.strip()]
        return value

    @field_validator("speculative_tokens_by_batch_size", mode="before")
    @classmethod
    def _split_batch_schedule(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        schedule: list[tuple[str, str, str]] = []
        for part in filter(None, (p.strip() for p in value.split(","))):
            sizes, sep, tokens = part.partition(":")
            first, dash, last = sizes.partition("-")
            if not (sep and dash):
                raise ValueError(f"expected 'first-last:tokens', got {part!r}")
            schedule.append((first.strip(), last.strip(), tokens.strip()))
        return schedule

    @model_validator(mode="after")
    def _speculation_fits(self) -> Settings:
        if self.speculative_lookup_min > self.speculative_lookup_max:
            raise ValueError("speculative_lookup_min must not exceed speculative_lookup_max")
        # vLLM's own rules for the schedule, checked here so that a bad value fails before the engine loads.
        end = 0
        for first, last, tokens in sorted(self.speculative_tokens_by_batch_size):
            starts_right = first == 1 if end == 0 else first > end
            if not starts_right or last < first or tokens < 0:
                raise ValueError(
                    "speculative_tokens_by_batch_size: ranges must start at 1, not overlap, and have tokens >= 0"
                )
            end = last
        return self

    @field_validator("key_admission_limits", mode="before")
    @classmethod
    def _split_key_limits(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        limits: dict[str, str] = {}
        for pair in filter(None, (part.strip() for part in value.split(","))):
            name, sep, limit = pair.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"expected 'name=limit', got {pair!r}")
            limits[name.strip()] = limit.strip()
        return limits

    @property
    def embedded(self) -> bool:
        return self.model == EMBEDDED_MODEL
