#!/usr/bin/env bash
# Elastic multi-node training with torchrun's agent: run this same command on every node. The group
# starts with as many nodes as have joined (at least MIN of NNODES=MIN:MAX); a node that fails or
# vanishes restarts the group on the nodes that remain (up to MAX_RESTARTS failures), and a node
# that joins later restarts it larger (the workers checkpoint on the agent's SIGTERM first). Each
# start resumes from the newest complete checkpoint in run_dir on however many ranks it now has:
# the ZeRO-3 state is re-partitioned as it loads, the data position is re-partitioned exactly
# once, and optim.global_batch_size keeps the global batch (see the README, "Changing the number of GPUs").
#
#   RDZV_ENDPOINT=node-001:29400 NNODES=2:8 bash launch/train_torchrun_elastic.sh launch/recipes/large.yaml \
#       --model.init=/models/bert-large-uncased --data.train=/data/tokens --optim.global_batch_size=1024 \
#       --data.codebook=/data/codebook/codebook.safetensors --run_dir=/shared/runs/large
#
# Environment:
#   NNODES          nodes, or a range MIN:MAX
#   RDZV_ENDPOINT   host:port of the rendezvous (the c10d store runs in the agent on that host)
#   NPROC           processes per node (default: the node's GPUs, 1 without)
#   RDZV_ID         the job's name at the rendezvous (default videobert)
#   MAX_RESTARTS    group restarts after failures (default 3; joining nodes do not count)
#   RDZV_CONF       torchrun --rdzv_conf, e.g. join_timeout=600,last_call_timeout=30
#   LOCAL_ADDR      the address this node's agent announces (default: its host name)
#   PYTHON          the interpreter (default: the project's .venv)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
recipe=${1:?usage: train_torchrun_elastic.sh RECIPE [--section.field=value ...]}
shift
python=${PYTHON:-"${VIDEOBERT_VENV:-$root/.venv}/bin/python"}
gpus=$("$python" -c "import torch; print(max(1, torch.cuda.device_count()))")
options=()
if [ -n "${RDZV_CONF:-}" ]; then options+=(--rdzv_conf="$RDZV_CONF"); fi
if [ -n "${LOCAL_ADDR:-}" ]; then options+=(--local_addr="$LOCAL_ADDR"); fi
# With the agents' store shared with the workers (torch's default), the rank-0 agent publishes the
# workers' store address only at its first rendezvous, so a node that joins a running job waits for
# it forever: give every round its own workers' store.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
cd "$root"
# A stop on SIGTERM (checkpoint saved) exits 75, as in train_node.sh.
export VIDEOBERT_STOPPED_FILE=${VIDEOBERT_STOPPED_FILE:-$(mktemp -u "${TMPDIR:-/tmp}/videobert-stopped.XXXXXX")}
trap '' TERM INT
code=0
"$python" -m torch.distributed.run \
    --nnodes="${NNODES:?set NNODES (e.g. 4, or 2:4)}" --nproc_per_node="${NPROC:-$gpus}" \
    --rdzv_backend=c10d --rdzv_endpoint="${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port}" \
    --rdzv_id="${RDZV_ID:-videobert}" --max_restarts="${MAX_RESTARTS:-3}" ${options[@]+"${options[@]}"} \
    -m videobert.trainer.train --config "$recipe" "$@" || code=$?
if [ -e "$VIDEOBERT_STOPPED_FILE" ]; then rm -f "$VIDEOBERT_STOPPED_FILE"; [ "$code" -eq 0 ] || exit 75; fi
exit "$code"
