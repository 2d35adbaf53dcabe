#!/usr/bin/env bash
# Multi-node training with the DeepSpeed launcher (ssh to the nodes of a hostfile).
#
#   HOSTFILE=launch/hostfile bash launch/train_deepspeed_multinode.sh launch/recipes/large.yaml \
#       --model.init=/models/bert-large-uncased --data.train=/data/tokens \
#       --data.codebook=/data/codebook/codebook.safetensors --run_dir=/shared/runs/large
#
# run_dir must be on storage every node sees: ranks write their parts of each checkpoint there. Run
# it again with another hostfile to continue the run on another number of GPUs.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
recipe=${1:?usage: train_deepspeed_multinode.sh RECIPE [--section.field=value ...]}
shift
venv=${VIDEOBERT_VENV:-$root/.venv}
cd "$root"
exec "$venv/bin/deepspeed" --hostfile "${HOSTFILE:-launch/hostfile}" \
    --master_port "${MASTER_PORT:-29500}" \
    --module videobert.trainer.train --config "$recipe" "$@"
