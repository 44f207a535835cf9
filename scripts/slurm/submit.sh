#!/bin/bash
# Submit scripts/slurm/train.sbatch with its GPUs asked for by one variable, GPUS: the GPUs of each node, and
# as many processes per node (one per GPU).
#   GPUS=4 scripts/slurm/submit.sh configs/vae.yaml                        # 1 node x 4 GPUs
#   GPUS=8 NODES=2 scripts/slurm/submit.sh configs/vae.yaml --trainer.max_epochs 50   # 16 GPUs
#   GPUS=0 TASKS=2 scripts/slurm/submit.sh configs/ae.yaml                 # no GPU: 2 CPU processes per node
# Other sbatch options (partition, account, time limit) in SBATCH_ARGS, e.g. SBATCH_ARGS="--partition=gpu".
set -euo pipefail

GPUS=${GPUS:-1}
NODES=${NODES:-1}
if [ "$GPUS" -gt 0 ]; then
  REQUEST=(--ntasks-per-node="$GPUS" --gpus-per-node="$GPUS")
else
  REQUEST=(--ntasks-per-node="${TASKS:-1}")
fi
# shellcheck disable=SC2086  # SBATCH_ARGS holds several options
exec sbatch --nodes="$NODES" "${REQUEST[@]}" ${SBATCH_ARGS:-} "$(dirname "$0")/train.sbatch" "$@"
