# The two commands of the README: `make demo` and `make test`. Both create .venv when needed.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUN    ?= runs/demo

.PHONY: demo test lint bench gpu-check clean

$(STAMP): pyproject.toml scripts/install.sh
	VENV=$(VENV) bash scripts/install.sh
	touch $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh $(RUN)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# pytest exits 5 when it collects no test: that is a broken suite here, not a pass.
test: lint
	$(PY) -m pytest -q; rc=$$?; \
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

clean:
	rm -rf runs .pytest_cache
