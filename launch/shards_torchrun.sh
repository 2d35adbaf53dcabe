#!/usr/bin/env bash
# A shard stage in parts under torchrun: one process per GPU on each node, each process its own part
# (RANK of WORLD_SIZE) on its own GPU (LOCAL_RANK). The processes do not talk to each other; torchrun
# only starts them and numbers them. Run the same command on every node:
#
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=node-001 bash launch/shards_torchrun.sh tokenize \
#       --clips /data/clips --codebook /data/codebook --out /data/tokens --encoder-weights /models/s3d.pt
#   bash launch/shards_torchrun.sh tokenize ...         # one machine, every GPU
#
# A node's processes re-run with the same command resume their parts; `videobert shards status OUT`
# shows which parts are done.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-"${VIDEOBERT_VENV:-$root/.venv}/bin/python"}
stage=${1:?usage: bash launch/shards_torchrun.sh STAGE [stage options]}
gpus=$("$python" -c "import torch; print(max(1, torch.cuda.device_count()))")
cd "$root"
nodes=${NNODES:-1}
if [ "$nodes" -eq 1 ]; then
    rendezvous=(--standalone)
else
    rendezvous=(--nnodes="$nodes" --node_rank="${NODE_RANK:?set NODE_RANK (0 .. NNODES-1)}"
                --master_addr="${MASTER_ADDR:?set MASTER_ADDR to node 0}" --master_port="${MASTER_PORT:-29511}")
fi
exec "$python" -m torch.distributed.run "${rendezvous[@]}" --nproc_per_node="${NPROC:-$gpus}" -m videobert.trainer.cli shards "$@"
