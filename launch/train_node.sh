#!/usr/bin/env bash
# Train on every GPU of this machine (or on the CPU when there is none), resuming automatically.
#
#   bash launch/train_node.sh launch/recipes/base.yaml --model.init=/models/bert-base-uncased \
#       --data.train=/data/tokens --data.codebook=/data/codebook/codebook.safetensors --run_dir=runs/base
#
# Re-running the same command continues from the newest complete checkpoint of run_dir.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
recipe=${1:?usage: train_node.sh RECIPE [--section.field=value ...]}
shift
python=${PYTHON:-"${VIDEOBERT_VENV:-$root/.venv}/bin/python"}
gpus=$("$python" -c "import torch; print(torch.cuda.device_count())")
procs=${NPROC:-$(( gpus > 0 ? gpus : 1 ))}
cd "$root"
# torchrun reports the workers' exit status 75 (stopped by a signal, checkpoint saved) as a failure
# (status 1): the workers mark a stop in this file, and the script exits 75 as a plain run would.
# The script ignores SIGTERM/SIGINT itself (torchrun and the workers handle them) to read the result.
export VIDEOBERT_STOPPED_FILE=${VIDEOBERT_STOPPED_FILE:-$(mktemp -u "${TMPDIR:-/tmp}/videobert-stopped.XXXXXX")}
trap '' TERM INT
code=0
"$python" -m torch.distributed.run --standalone --nproc_per_node="$procs" \
    -m videobert.trainer.train --config "$recipe" "$@" || code=$?
if [ -e "$VIDEOBERT_STOPPED_FILE" ]; then rm -f "$VIDEOBERT_STOPPED_FILE"; [ "$code" -eq 0 ] || exit 75; fi
exit "$code"
