#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install videobert into it.
#
#   bash launch/install.sh [EXTRAS]     EXTRAS: demo (default), dev, or "demo,dev"
#
# Environment:
#   VIDEOBERT_VENV         where the environment lives (default: .venv at the repository root)
#   PYTHON                 the interpreter that creates it (default: python3; 3.10 or newer)
#   VIDEOBERT_TORCH        torch requirement installed first on machines without an NVIDIA GPU
#                          (default: torch==2.13.0)
#   VIDEOBERT_TORCH_INDEX  optional index URL holding CPU builds of torch, for machines whose
#                          default index would otherwise hand out a multi-GB CUDA build
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VIDEOBERT_VENV:-$root/.venv}
extras=${1:-demo}
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip >/dev/null

# Torch first: without a GPU, the CPU build, so that nothing later resolves torch to a CUDA build.
gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then gpu=1; fi
if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
    if [ "$gpu" = 1 ]; then
        "${pip[@]}" install -q "torch>=2.4"
    else
        index=()
        if [ -n "${VIDEOBERT_TORCH_INDEX:-}" ]; then index=(--index-url "$VIDEOBERT_TORCH_INDEX"); fi
        "${pip[@]}" install -q "${VIDEOBERT_TORCH:-torch==2.13.0}" "${index[@]}"
    fi
fi

"${pip[@]}" install -q -e "$root[$extras]"

# Without a GPU, DeepSpeed compiles its CPU communication op the first time a run starts (a minute or
# two on two cores); compile it now, so that the first run does not wait on it.
if [ "$gpu" = 0 ]; then
    if ! DS_ACCELERATOR=cpu "$venv/bin/python" -c \
        "from videobert.trainer.distributed import build_cpu_communication_op as b; b()" >/dev/null 2>&1; then
        echo "warning: DeepSpeed's CPU communication op did not compile now; the first run compiles it (needs a C++ compiler)" >&2
    fi
fi
echo "videobert installed in $venv ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
