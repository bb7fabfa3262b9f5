#!/usr/bin/env bash
# The README's first command (`make demo`): the whole two-stage recipe on the tiny model, on CPU.
#   tiny model -> toy task -> round-0 bootstrap SFT -> 2 rounds of (MCTS search -> extraction -> SFT ->
#   PPM -> evaluation) -> GRPO with a length penalty -> evaluation, then the report: every comparison paired
#   per problem on 600 held-out problems, ± one standard error, and which of the recipe's claims hold.
# A live line shows the running step's progress; its full output is in runs/demo/<round>/<step>/step.log.
# `mathforge evolve` skips finished steps (checked by their outputs), so a re-run continues a killed one.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/demo}
SEED=${SEED:-0}   # `make demo SEED=1 RUN=runs/demo-s1`: another run of the recipe from the same base model and data
export TOKENIZERS_PARALLELISM=false
exec .venv/bin/mathforge evolve --config recipes/tiny/evolve.yaml \
  --runs_dir "$(dirname "$RUN")" --name "$(basename "$RUN")" --seed "$SEED"
