#!/usr/bin/env bash
# PPO with verl on a GPU, end to end at toy scale: the tiny model and toy data built here, 3 PPO steps of
# recipes/tiny/rl/config_ppo_verl.yaml (vLLM rollouts in the step format with the executor between steps,
# a critic, FSDP updates), the checkpoint merged into a Hugging Face folder, which must then load.
# Needs `make venv` and `make venv-verl` on a machine with an NVIDIA GPU. OUT (default runs/gpu-check-verl)
# holds everything; GPUS (default: all that nvidia-smi lists) sets n_gpus_per_node.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
VENV_VERL=${VENV_VERL:-.venv-verl}
OUT=${OUT:-runs/gpu-check-verl}
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
RUN=("$VENV/bin/python" -m mathforge.cli)

[ -f "$OUT/tiny-model/config.json" ] || "${RUN[@]}" tiny-model --output "$OUT/tiny-model"
[ -f "$OUT/toy/train.jsonl" ] || "${RUN[@]}" data toy --output_dir "$OUT/toy" --n_train 256 --n_test 32
# 8 problems x 2 solutions per step must split over the GPUs: round the batch up to a multiple of them.
BATCH=$(( (8 + GPUS - 1) / GPUS * GPUS ))
"${RUN[@]}" rl --config recipes/tiny/rl/config_ppo_verl.yaml \
  --model_name_or_path "$OUT/tiny-model" --dataset_name "$OUT/toy" --output_dir "$OUT/rl-ppo" \
  --n_gpus_per_node "$GPUS" --train_batch_size "$BATCH" --ppo_mini_batch_size "$BATCH" \
  --ppo_micro_batch_size_per_gpu 2 --verl_python "$VENV_VERL/bin/python"
"$VENV/bin/python" - "$OUT/rl-ppo" <<'PY'
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
print(f"verl PPO check passed: merged model in {path} loads ({sum(p.numel() for p in model.parameters())} parameters)")
PY
