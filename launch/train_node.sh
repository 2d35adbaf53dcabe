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
exec "$python" -m torch.distributed.run --standalone --nproc_per_node="$procs" \
    -m videobert.trainer.train --config "$recipe" "$@"
