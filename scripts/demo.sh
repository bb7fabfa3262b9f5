#!/usr/bin/env bash
# The README's first command (`make demo`): the longest pipeline that exists so far, on CPU.
#   tiny model -> toy task with executed teacher solutions -> round-0 SFT -> evaluation with the
#   executor in the loop (greedy accuracy, and coverage of 4 samples per problem).
# Steps whose outputs exist are skipped, so a re-run continues where a killed one stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/demo}
MF=".venv/bin/mathforge"
export TOKENIZERS_PARALLELISM=false

[ -f "$RUN/tiny-model/config.json" ] || $MF tiny-model --output "$RUN/tiny-model" --overwrite true
[ -f "$RUN/toy/meta.json" ] || $MF data toy --output_dir "$RUN/toy" --n_train 3000 --n_test 200
[ -f "$RUN/sft/model.safetensors" ] || $MF sft --config recipes/tiny/sft/config_toy.yaml \
  --model_name_or_path "$RUN/tiny-model" --dataset_name "$RUN/toy" --output_dir "$RUN/sft"
echo "== greedy, 200 held-out toy problems =="
$MF eval --model_name_or_path "$RUN/sft" --dataset_name "$RUN/toy" --dataset_split test \
  --output_dir "$RUN/eval/greedy"
echo "== 4 samples per problem (temperature 0.8) =="
$MF eval --model_name_or_path "$RUN/sft" --dataset_name "$RUN/toy" --dataset_split test \
  --n 4 --temperature 0.8 --output_dir "$RUN/eval/sampled"
