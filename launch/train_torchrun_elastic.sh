#!/usr/bin/env bash
# Fault-tolerant multi-node training with torchrun's elastic agent: run this same command on every
# node. A failed worker restarts the whole group (up to MAX_RESTARTS times); each restart resumes
# from the newest complete checkpoint in run_dir (checkpoint.resume=auto).
#
#   RDZV_ENDPOINT=node-001:29400 NNODES=4 bash launch/train_torchrun_elastic.sh launch/recipes/large.yaml \
#       model.init=/models/bert-large-uncased data.train=/data/tokens \
#       data.codebook=/data/codebook/codebook.safetensors run_dir=/shared/runs/large
#
# NNODES may be a range (MIN:MAX) for the agent; a resumed checkpoint must have been written by the
# same number of ranks (the trainer refuses otherwise and says so).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
recipe=${1:?usage: train_torchrun_elastic.sh RECIPE [section.field=value ...]}
shift
python=${PYTHON:-"${VIDEOBERT_VENV:-$root/.venv}/bin/python"}
gpus=$("$python" -c "import torch; print(max(1, torch.cuda.device_count()))")
cd "$root"
exec "$python" -m torch.distributed.run \
    --nnodes="${NNODES:?set NNODES (e.g. 4, or 2:4)}" --nproc_per_node="${NPROC:-$gpus}" \
    --rdzv_backend=c10d --rdzv_endpoint="${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port}" \
    --rdzv_id="${RDZV_ID:-videobert}" --max_restarts="${MAX_RESTARTS:-3}" \
    -m trainer.train --config "$recipe" "$@"
