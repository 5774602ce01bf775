#!/usr/bin/env bash
# The paper-scale path end to end on one GPU (issue 40): sd2-256 trained a few steps under `accelerate launch`,
# GenAI-Bench's 527 prompts sampled on the GPU, scored with VQAScore against the fake local server.
# Writes figures/gpu/gpu_check.json and .log. ~5 min on one H100 (first run: CUDA kernels compile).
#
#   scripts/gpu_check.sh                                   # on the GPU machine
#   scripts/gpu_check.sh --cpu --out /tmp/gpu_check.json   # smoke mode on a CPU machine (tiny preset)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1
log=figures/gpu/gpu_check.log
case " $* " in *" --cpu "*) log=$(mktemp /tmp/gpu_check.XXXX.log) ;; esac
mkdir -p figures/gpu
"$PY" -c 'import torch, diffusers, accelerate; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "diffusers", diffusers.__version__, "accelerate", accelerate.__version__)' | tee "$log"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee -a "$log" || true
"$PY" scripts/gpu_check.py "$@" 2>&1 | tee -a "$log"
echo "log: $log"
