#!/usr/bin/env bash
# Create the verl environment (.venv-verl) for `mathforge rl --backend verl`: verl 0.9.1 with its own torch,
# vLLM and transformers pins, which cannot share .venv with TRL 1.16. mathforge goes in without its
# heavy dependencies: the reward function and the agent loop import only steps, grader and executor.
#   VERL_EXTRA=vllm (default with a GPU): rollouts with vLLM 0.24.0, FSDP training.
#   VERL_EXTRA=cpu  (default without one): verl's CPU extra, for the CPU tier of the tests.
# Never verl[fsdp]/verl[megatron]: they pin trl 0.27 and flash-attn built for CUDA 13.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV_VERL:-.venv-verl}
if [ -z "${VERL_EXTRA:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then VERL_EXTRA=vllm; else VERL_EXTRA=cpu; fi
fi
"$PYTHON" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else "verl 0.9.1 needs Python 3.10-3.12")'
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
$PIP install "verl[$VERL_EXTRA]==0.9.1"
# mathforge's light parts (steps, grader, executor) and what they import; not torch/trl/vllm from our pins.
$PIP install --no-deps -e .
$PIP install "math-verify>=0.8" "sympy>=1.13" "numpy>=1.26" "pyyaml>=6.0" "pyarrow>=19" "pytest>=8"
# Hydra (verl's config system) pins antlr4-python3-runtime 4.9, with which math-verify's LaTeX parser misreads
# answers such as `50\%`: the grader's workers import the 4.13.2 runtime from here instead (mathforge.grader).
$PIP install --upgrade --target "$VENV/grader-antlr" "antlr4-python3-runtime==4.13.2"
# The ppm reward term loads the PPM with mathforge.ppm, which imports TRL (it keeps transformers 5.9 here).
$PIP install "trl>=1.16,<1.17"
"$VENV/bin/python" -c "from mathforge.grader import grade; assert grade(r'\\boxed{50\\%}', '50'), 'the grader misreads 50\\% here'"
"$VENV/bin/python" -c "import verl, torch, transformers, transfer_queue, mathforge.verl.reward; print('verl environment ready:', 'verl', verl.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
