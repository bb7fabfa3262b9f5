#!/usr/bin/env bash
# Create the verl config environment (.venv-verl-config): Hydra, omegaconf and verl 0.9.1's config files
# (verl with --no-deps: composing its config imports none of verl's code, so no torch or ray). The launcher runs
# `mathforge.verl.compose_config` with this Python to check `mathforge rl --backend verl` overrides. It is
# separate from .venv because Hydra pins antlr4-python3-runtime 4.9, and math-verify's LaTeX parser there
# needs 4.13.2.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV_VERL_CONFIG:-.venv-verl-config}
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
$PIP install "hydra-core==1.3.*" "omegaconf>=2.3,<2.4" "pyyaml>=6.0"
$PIP install --no-deps "verl==0.9.1"
# verl's default config, composed as the launcher composes it
if ! echo '{"overrides": []}' | "$VENV/bin/python" -I src/mathforge/verl/compose_config.py | grep -q '^{"config"'; then
  echo "$VENV cannot compose verl's config" >&2
  exit 1
fi
echo "verl config environment ready: $VENV"
