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
# the node variables are read by the same code as `mathforge evolve`'s (mathforge.cluster.nodes_from_env)
exec "${PYTHON:-python}" -m mathforge.cluster "$@"
