#!/usr/bin/env bash
# Usage: bash tools/dist_train.sh CONFIG GPUS [train.py options]
# Multi-node: NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 PORT=29500 bash tools/dist_train.sh ...
# One node without PORT: a free port is picked (torchrun --standalone).
# On a machine without CUDA, GPUS processes run on CPU with the gloo backend.
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: bash tools/dist_train.sh CONFIG GPUS [train.py options]" >&2
  exit 2
fi
CONFIG=$1
GPUS=$2
shift 2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
ROOT="$(CDPATH= cd -- "$(dirname -- "$0")/.." >/dev/null && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${PORT:-}" ] && [ "$NNODES" = 1 ]; then
  # one node and no PORT: torchrun picks a free port, so that two jobs on one machine do
  # not both take 29500 (the second failed with EADDRINUSE)
  RENDEZVOUS=(--standalone)
else
  RENDEZVOUS=(--nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR"
              --master_port="${PORT:-29500}")
fi
exec "${PYTHON:-python3}" -m torch.distributed.run \
    "${RENDEZVOUS[@]}" \
    --nproc_per_node="$GPUS" \
    "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "$@"
