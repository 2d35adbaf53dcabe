#!/usr/bin/env bash
# Every GPU check of the project in one go, in order of priority, each figure written as measured:
#
#   1. install what the machine lacks (torch with CUDA is expected; triton, deepspeed, pytest, ...)
#   2. the GPU tests (pytest -m gpu): kernel parity in bf16/fp32, unpadded attention, bf16 training
#   3. MFU of `large` at sequence 512 (reference vs triton), and the bare bf16 matmul rate
#   4. the fused kernels against the reference (time, peak memory)
#   5. MFU of `large` and `base` at 128, then `base` at 512
#   6. mixed-length rows: reference vs triton vs triton + unpadded attention (large, 512)
#   7. the kernels against torch.compile of the reference (compiling takes a while: last)
#
#   bash tests/benchmarks/run_gpu.sh [--dry-run]
#
# Results go to $RESULTS (default: $OUT/gpu_results.md when $OUT is set, else
# tests/benchmarks/results/gpu_results.md), appended row by row, so a run cut short keeps what it
# measured. VIDEOBERT_GPU_BUDGET_S (default 540: one device command may run 600 s) bounds the whole run: each step gets what is left
# (capped by its own limit) and steps that no longer fit are listed as skipped. VIDEOBERT_WHEELS, if
# set, is a folder of wheels to install from without an index (for machines without network).
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
python=${PYTHON:-python3}
budget=${VIDEOBERT_GPU_BUDGET_S:-540}
results=${RESULTS:-${OUT:+$OUT/gpu_results.md}}
results=${results:-$root/tests/benchmarks/results/gpu_results.md}
dry_run=0
[ "${1:-}" = "--dry-run" ] && dry_run=1
started=$(date +%s)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
cd "$root"

log() { echo "[run_gpu $(( $(date +%s) - started ))s] $*" | tee -a "$results"; }

# step NAME LIMIT_S KEEP COMMAND...: run COMMAND under the smaller of LIMIT_S and the budget left;
# its output goes to $results.log, and its last KEEP lines to the results too (the benchmarks write
# their own rows there: KEEP 0; pytest's summary is worth keeping).
step() {
    local name=$1 limit=$2 keep=$3; shift 3
    local left=$(( budget - ($(date +%s) - started) ))
    (( left < limit )) && limit=$left
    if (( limit < 20 )); then log "SKIPPED $name (budget spent)"; return 0; fi
    log "START $name (limit ${limit}s): $*"
    if (( dry_run )); then return 0; fi
    local output
    output=$(mktemp)
    timeout --signal=INT --kill-after=15 "$limit" "$@" > >(tee "$output" >> "$results.log") 2>&1
    local rc=$?
    sleep 1  # let tee drain
    if (( keep > 0 )); then tail -n "$keep" "$output" >> "$results"; fi
    (( rc != 0 && keep == 0 )) && tail -n 20 "$output" >> "$results"
    rm -f "$output"
    log "END $name: exit $rc"
}

install_missing() {
    # module:package pairs; find_spec looks without importing (deepspeed alone takes seconds to import)
    local missing
    missing=($("$python" - <<'PY'
import importlib.util
wanted = {"torch": "torch", "triton": "triton", "deepspeed": "deepspeed", "yaml": "pyyaml", "numpy": "numpy",
          "pytest": "pytest", "tqdm": "tqdm"}
print(" ".join(pkg for mod, pkg in wanted.items() if importlib.util.find_spec(mod) is None))
PY
    ))
    if (( ${#missing[@]} == 0 )); then log "all packages present"; return 0; fi
    local source=()
    [ -n "${VIDEOBERT_WHEELS:-}" ] && source=(--no-index --find-links "$VIDEOBERT_WHEELS")
    log "installing ${missing[*]}"
    (( dry_run )) || DS_BUILD_OPS=0 timeout 120 "$python" -m pip install -q --retries 1 --timeout 10 \
        "${source[@]}" "${missing[@]}" 2>&1 | tail -3
}

mkdir -p "$(dirname "$results")"
log "host $(hostname); $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
install_missing
"$python" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.is_available())" 2>&1 | tee -a "$results"

bench=tests/benchmarks
gpu_tests=(tests/models/test_kernels_triton.py tests/models/test_varlen_attention.py
           tests/models/test_kernels_training.py tests/models/test_transformer.py tests/models/test_kmeans_kernel.py)
step "gpu tests" 180 60 "$python" -m pytest -q -p no:cacheprovider -m gpu -rA "${gpu_tests[@]}"
step "MFU large@512" 120 0 "$python" $bench/bench_throughput.py --presets large --seq-lens 512 \
    --variants reference,triton --out "$results"
step "kernels vs reference" 120 0 "$python" $bench/bench_kernels.py --impls reference,triton --out "$results"
step "MFU large@128, base@128" 150 0 "$python" $bench/bench_throughput.py --presets large,base \
    --seq-lens 128 --variants reference,triton --no-matmul --out "$results"
step "MFU base@512" 100 0 "$python" $bench/bench_throughput.py --presets base --seq-lens 512 \
    --variants reference,triton --no-matmul --out "$results"
step "mixed lengths, unpadded attention" 120 0 "$python" $bench/bench_throughput.py --presets large \
    --seq-lens 512 --lengths mixed --no-matmul --out "$results"
step "kernels vs torch.compile" 240 0 "$python" $bench/bench_kernels.py --impls reference,compile,triton \
    --out "$results"
log "done; results in $results"
