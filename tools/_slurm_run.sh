#!/usr/bin/env bash
# Shared by tools/slurm_train.sh and tools/slurm_test.sh (not for direct use):
#   bash tools/_slurm_run.sh PARTITION JOB_NAME TOOL [TOOL arguments]
# runs `srun` with GPUS tasks, GPUS_PER_NODE, CPUS_PER_TASK, GRES and SRUN_ARGS (see
# docs/training_testing.md), each task running python tools/TOOL with the arguments.
set -euo pipefail
PARTITION=$1
JOB_NAME=$2
TOOL=$3
shift 3
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
# generic resources per node; GRES= (empty) leaves --gres out (CPU-only partitions)
GRES=${GRES-gpu:$GPUS_PER_NODE}
GRES_ARG=()
if [ -n "$GRES" ]; then GRES_ARG=(--gres="$GRES"); fi
# SRUN_ARGS is split into words at any whitespace (spaces, tabs, newlines, carriage
# returns) but not glob-expanded (node lists such as node[1-4]); read -d '' reads it all
# (and returns 1 at its end)
SRUN_ARGS_TEXT=${SRUN_ARGS:-}
IFS=$' \t\n' read -r -d '' -a SRUN_EXTRA <<< "${SRUN_ARGS_TEXT//$'\r'/ }" || true
ROOT="$(CDPATH= cd -- "$(dirname -- "$0")/.." >/dev/null && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    ${GRES_ARG[@]+"${GRES_ARG[@]}"} \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    ${SRUN_EXTRA[@]+"${SRUN_EXTRA[@]}"} \
    "${PYTHON:-python3}" -u "$ROOT/tools/$TOOL" "$@"
