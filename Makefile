# The two commands of the README: `make demo` and `make test`. Both create .venv when needed.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUN    ?= runs/demo
SEED   ?= 0
VENV_VERL_CONFIG ?= .venv-verl-config

.PHONY: demo test lint bench gpu-check clean venv-verl venv-verl-config test-verl gpu-check-verl

$(STAMP): pyproject.toml scripts/install.sh
	VENV=$(VENV) bash scripts/install.sh
	touch $(STAMP)

demo: $(STAMP)
	SEED=$(SEED) bash scripts/demo.sh $(RUN)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# pytest exits 5 when it collects no test: that is a broken suite here, not a pass.
test: lint $(VENV_VERL_CONFIG)/.installed
	MATHFORGE_VERL_CONFIG_PYTHON=$(VENV_VERL_CONFIG)/bin/python $(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is broken"; exit 1; fi; exit $$rc

# Performance figures, each a ratio against a baseline measured in the same run (never a pass/fail test).
bench: $(STAMP)
	PYTHONPATH=src $(PY) bench/bench_executor.py
	PYTHONPATH=src $(PY) bench/bench_grader.py
	OMP_NUM_THREADS=1 PYTHONPATH=src $(PY) bench/bench_search.py
	PYTHONPATH=src $(PY) bench/bench_eval.py
	OMP_NUM_THREADS=1 PYTHONPATH=src $(PY) bench/bench_ppm.py

# Every stage on one GPU with locally built models (~8 min); says "no GPU" and exits 2 without one.
gpu-check: $(STAMP)
	PYTHONPATH=src $(PY) scripts/gpu_check.py

# verl (`mathforge rl --backend verl`) in its own environment: verl 0.9.1 pins torch 2.11, vLLM 0.24 and
# transformers 5.9, which TRL 1.16 and our pins cannot share. verl[cpu] here (~7.5 min, ~5.8 GB: verl pins
# torch 2.11.0, which PyPI ships as its CUDA build), verl[vllm] where a GPU is found.
VENV_VERL ?= .venv-verl
$(VENV_VERL)/.installed: scripts/install_verl.sh pyproject.toml
	VENV_VERL=$(VENV_VERL) bash scripts/install_verl.sh
	touch $@

venv-verl: $(VENV_VERL)/.installed

# Hydra + verl 0.9.1's config files (no torch, ~50 MB, seconds): the launcher composes and checks the verl
# overrides with this Python. Never in .venv: Hydra pins antlr4 4.9, which breaks math-verify's LaTeX parser.
$(VENV_VERL_CONFIG)/.installed: scripts/install_verl_config.sh
	VENV_VERL_CONFIG=$(VENV_VERL_CONFIG) bash scripts/install_verl_config.sh
	touch $@

venv-verl-config: $(VENV_VERL_CONFIG)/.installed

# The tier of the verl tests that imports verl whole (validate_config, RLHFDataset, reward manager, agent loop).
test-verl: $(VENV_VERL)/.installed
	OMP_NUM_THREADS=1 $(VENV_VERL)/bin/python -m pytest -q tests/test_verl_env.py

# A few PPO steps of the tiny model with verl on a GPU (vLLM rollouts in the step format, FSDP, the merge).
gpu-check-verl: $(VENV_VERL)/.installed $(STAMP)
	bash scripts/gpu_check_verl.sh

clean:
	rm -rf runs .pytest_cache
