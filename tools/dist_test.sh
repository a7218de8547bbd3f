#!/usr/bin/env bash
# Usage: bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py options, e.g. --dump out.pkl]
# Multi-node: NNODES NODE_RANK MASTER_ADDR PORT as for dist_train.sh (one node without
# PORT: a free port is picked).
set -euo pipefail
if [ "$#" -lt 3 ]; then
  echo "usage: bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py options]" >&2
  exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3
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
    "$ROOT/tools/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@"
