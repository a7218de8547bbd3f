#!/usr/bin/env bash
# Usage: [GPUS=8 GPUS_PER_NODE=8 CPUS_PER_TASK=5 GRES=gpu:8 SRUN_ARGS=""] \
#        bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG [train.py options]
set -euo pipefail
if [ "$#" -lt 3 ]; then
  echo "usage: bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG [train.py options]" >&2
  exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
shift 3
exec bash "$(dirname "$0")/_slurm_run.sh" "$PARTITION" "$JOB_NAME" train.py \
    "$CONFIG" --launcher slurm "$@"
