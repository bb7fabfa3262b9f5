#!/usr/bin/env bash
# Launch one mathforge stage on this node as part of a job of NUM_MACHINES nodes (run it on every node):
#
#   scripts/launch.sh CONFIG MODULE [stage arguments...]
#   scripts/launch.sh accelerate_configs/zero3.yaml mathforge.sft --config recipes/.../config.yaml
#   scripts/launch.sh accelerate_configs/ddp.yaml mathforge.search.mcts --config recipes/.../search.yaml
#
# The node's place comes from the environment: Slurm's (SLURM_NNODES, SLURM_NODEID, SLURM_JOB_NODELIST) or,
# set by hand or by another scheduler, NUM_MACHINES, MACHINE_RANK, MAIN_ADDR (the node of MACHINE_RANK 0),
# MAIN_PORT (29500) and GPUS_PER_NODE (default: the GPUs nvidia-smi lists). These override the CONFIG's
# num_machines, machine_rank and num_processes (= NUM_MACHINES x GPUS_PER_NODE), so the same accelerate
# config serves 1 node and many.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: scripts/launch.sh ACCELERATE_CONFIG MODULE [ARGS...]" >&2
  exit 2
fi
CONFIG=$1
MODULE=$2
shift 2
[ -f "$CONFIG" ] || { echo "launch.sh: accelerate config not found: $CONFIG" >&2; exit 2; }

NUM_MACHINES=${NUM_MACHINES:-${SLURM_NNODES:-1}}
MACHINE_RANK=${MACHINE_RANK:-${SLURM_NODEID:-0}}
if [ -z "${MAIN_ADDR:-}" ]; then
  if [ -n "${SLURM_JOB_NODELIST:-}" ]; then
    MAIN_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  elif [ "$NUM_MACHINES" -eq 1 ]; then
    MAIN_ADDR=127.0.0.1
  else
    echo "launch.sh: NUM_MACHINES=$NUM_MACHINES needs MAIN_ADDR (the address of the node with MACHINE_RANK 0)" >&2
    exit 2
  fi
fi
MAIN_PORT=${MAIN_PORT:-29500}
if [ -z "${GPUS_PER_NODE:-}" ]; then
  GPUS_PER_NODE=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
  [ "$GPUS_PER_NODE" -gt 0 ] || { echo "launch.sh: no GPU found; set GPUS_PER_NODE" >&2; exit 2; }
fi
PYTHON=${PYTHON:-python}

echo "launch.sh: node $MACHINE_RANK of $NUM_MACHINES, $GPUS_PER_NODE GPUs each, main $MAIN_ADDR:$MAIN_PORT: $MODULE" >&2
exec "$PYTHON" -m accelerate.commands.launch \
  --config_file "$CONFIG" \
  --num_machines "$NUM_MACHINES" \
  --num_processes $((NUM_MACHINES * GPUS_PER_NODE)) \
  --machine_rank "$MACHINE_RANK" \
  --main_process_ip "$MAIN_ADDR" \
  --main_process_port "$MAIN_PORT" \
  -m "$MODULE" "$@"
